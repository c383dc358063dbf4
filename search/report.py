"""What a search writes and prints: a line per trial, trials.csv, best_params.json, the figures (Optuna's
optimisation history, parameter importances and parallel coordinates; each trial's learning curve with where it was
pruned), and the summary at the end."""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.study import counted_trials, retried_numbers, surplus


def progress_line(study, trial) -> str:
    """One line per finished trial, e.g. `trial 3 PRUNED  0.8120  steps 32/125  41 s  learning_rate=2.1e-04 ...`."""
    a = trial.user_attrs
    value = trial.value if trial.value is not None else (list(trial.intermediate_values.values()) or [None])[-1]
    shown = f"{value:.4f}" if value is not None else "   -  "
    steps = f"steps {a.get('steps_trained', 0)}/{a.get('max_steps', '?')}"
    seconds = trial.duration.total_seconds() if trial.duration else float("nan")
    params = " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    best = ""
    if trial.state == TrialState.COMPLETE and study.best_trial.number == trial.number:
        best = "  (best so far)"
    reason = f"  [{a['fail_reason']}]" if trial.state == TrialState.FAIL and "fail_reason" in a else ""
    return (f"trial {trial.number:3d} {trial.state.name:8s} {shown}  {steps:>13s}  {seconds:5.0f} s  {params}"
            f"{best}{reason}")


def format_value(v):
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trials_table(study) -> pd.DataFrame:
    """Every trial, interrupted and surplus ones included (marked): parameters, value, state, duration, steps
    trained."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = []
    for t in trials:
        a = t.user_attrs
        rows.append({
            "number": t.number,
            "state": state_shown(t, retried),
            "value": t.value,
            "last_intermediate": list(t.intermediate_values.values())[-1] if t.intermediate_values else None,
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
            "steps_trained": a.get("steps_trained"),
            "max_steps": a.get("max_steps"),
            "examples_per_step": a.get("examples_per_step"),
            **{f"param_{k}": v for k, v in t.params.items()},
            "fail_reason": a.get("fail_reason", ""),
            "trial_dir": a.get("trial_dir", ""),
        })
    return pd.DataFrame(rows)


def state_shown(trial, retried: set) -> str:
    """A trial's state in trials.csv: Optuna's, or why a FAILED trial is not counted."""
    if trial.number in retried:
        return "INTERRUPTED (rerun)"
    return "SURPLUS (not run)" if surplus(trial) else trial.state.name


def compute_spent(table: pd.DataFrame) -> dict:
    """Trial seconds spent, and what the same trials would have cost unpruned: each pruned trial's time scaled by
    max_steps / steps_trained (its cost per step so far, to the end of its run)."""
    done = table[table["state"].isin(["COMPLETE", "PRUNED"]) & table["steps_trained"].notna()]
    spent = float(done["duration_s"].sum())
    scale = (done["max_steps"] / done["steps_trained"]).where(done["state"] == "PRUNED", 1.0)
    return {"trials": len(done), "seconds": spent, "unpruned_seconds": float((done["duration_s"] * scale).sum()),
            "steps": int(done["steps_trained"].sum()), "unpruned_steps": int(done["max_steps"].sum())}


OPTUNA_FIGURES = ("optimization_history", "param_importances", "parallel_coordinate")  # from the complete trials
FIGURES = OPTUNA_FIGURES + ("intermediate_values",)
COMPLETE_COLOUR, PRUNED_COLOUR = "tab:blue", "tab:red"


def write_figures(study, out_dir: Path, metric: str = "objective value") -> list:
    """Optuna's matplotlib plots (optimization_history.png, param_importances.png, parallel_coordinate.png) and
    intermediate_values.png (plot_intermediate_values); a note for each one that can't be drawn, never an error: the
    figures are not worth the search's other outputs. Each is removed before it is drawn, so none is left from an
    earlier call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="The number of trials is too small")  # said in trials.csv already
    warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")  # one complete trial
    draw = {"optimization_history": lambda: optuna_figure(vis.plot_optimization_history(study)),
            "param_importances": lambda: optuna_figure(vis.plot_param_importances(study)),
            "parallel_coordinate": lambda: optuna_figure(vis.plot_parallel_coordinate(study)),
            "intermediate_values": lambda: plot_intermediate_values(study, metric)}
    notes = []
    has_complete = bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not has_complete:
        notes.append(f"{', '.join(f'{name}.png' for name in OPTUNA_FIGURES)} not drawn: no complete trial")
    for name in FIGURES:
        path = out_dir / f"{name}.png"
        path.unlink(missing_ok=True)
        if name in OPTUNA_FIGURES and not has_complete:
            continue
        open_before = set(plt.get_fignums())
        try:
            draw[name]().savefig(path, dpi=100)
        except Exception as error:  # whatever a plot raises becomes a note, as the docstring says
            notes.append(f"{name}.png not drawn: {type(error).__name__}: {error}")
        finally:  # the figure drawn, or left half-drawn by a plot that failed
            for number in set(plt.get_fignums()) - open_before:
                plt.close(number)
    return notes


def optuna_figure(axes):
    """The figure of what an optuna.visualization.matplotlib plot returned (its Axes, or an array of them), sized."""
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class Curve:
    """One trial's intermediate values, at the fractions of its run where they were taken."""
    number: int
    fractions: tuple
    values: tuple
    state: TrialState


def recorded_pruning(study) -> dict:
    """The pruner settings stored in the study (search/identity.py pin_search); {} when none are."""
    return (study.user_attrs.get("search_settings") or {}).get("pruning") or {}


def intermediate_curves(study) -> list:
    """A Curve per complete or pruned trial that reported a value; failed, running and interrupted trials are left
    out. trial.report is called at k = floor(E x step / max_steps) (search/pruning.py report_step), so k / E is the
    fraction of the run, the same whatever the trial's batch size; E is the study's recorded evaluations per trial
    (ValueError without it)."""
    evaluations = recorded_pruning(study).get("evaluations_per_trial")
    if not evaluations:
        raise ValueError("the study's evaluations per trial are not recorded (search settings missing)")
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        steps = sorted(trial.intermediate_values)
        if steps:
            curves.append(Curve(trial.number, tuple(k / evaluations for k in steps),
                                tuple(trial.intermediate_values[k] for k in steps), trial.state))
    return curves


def plot_intermediate_values(study, metric: str):
    """Each trial's score against the fraction of its run: complete trials solid, pruned ones dashed with an x where
    they were stopped, failed ones not drawn (counted in the title); a dotted line at the pruner's warm-up fraction,
    before which no trial is stopped, when the study records a pruner."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    curves = intermediate_curves(study)
    if not curves:
        raise ValueError("no complete or pruned trial reported a value")
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for curve in curves:
        pruned = curve.state == TrialState.PRUNED
        colour = PRUNED_COLOUR if pruned else COMPLETE_COLOUR
        ax.plot(curve.fractions, curve.values, color=colour, linestyle="--" if pruned else "-", marker=".",
                markersize=4, linewidth=1, alpha=0.8)
        if pruned:
            ax.plot(curve.fractions[-1], curve.values[-1], color=colour, marker="x", markersize=9, linestyle="none")
    n_complete = sum(c.state == TrialState.COMPLETE for c in curves)
    handles = [Line2D([], [], color=COMPLETE_COLOUR, label=f"complete ({n_complete})"),
               Line2D([], [], color=PRUNED_COLOUR, linestyle="--", marker="x",
                      label=f"pruned ({len(curves) - n_complete}), x where stopped")]
    pruning = recorded_pruning(study)
    if pruning.get("pruner", "none") != "none":
        warmup = pruning["warmup_fraction"]
        handles.append(ax.axvline(warmup, color="grey", linestyle=":",
                                  label=f"{pruning['pruner']} pruner warm-up ({warmup:g}): no stop before"))
    failed = sum(t.state == TrialState.FAIL for t in counted_trials(study))
    ax.set_title(f"{study.study_name}: {n_complete} complete, {len(curves) - n_complete} pruned"
                 + (f", {failed} failed (not drawn)" if failed else "") + " trials", fontsize=10)
    ax.set_xlabel(f"fraction of the run (evaluation k / {recorded_pruning(study)['evaluations_per_trial']})")
    ax.set_ylabel(f"{metric} (trial score)")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def write_outputs(study, out_dir: Path, best: dict, metric: str = "objective value") -> tuple:
    """trials.csv, best_params.json and the figures in out_dir; (table, figure notes)."""
    table = trials_table(study)
    table.to_csv(out_dir / "trials.csv", index=False)
    (out_dir / "best_params.json").write_text(json.dumps(best, indent=2) + "\n")
    return table, write_figures(study, out_dir, metric)


def summary(study, record: dict, table: pd.DataFrame, notes: list, final_results: list, metric: str,
            out_dir: Path) -> str:
    """The one-screen summary printed at the end."""
    counted = counted_trials(study)
    failed = sum(t.state == TrialState.FAIL for t in counted)
    lines = [f"== study {record['study_name']} ({record['storage']}) ==",
             f"trials: {record['n_trials']} ({record['n_complete']} complete, {record['n_pruned']} pruned, {failed} failed)"
             f"; tuned on: {record['tuned_on']}"]
    if record["tuned_on"] == "dev":
        lines.append("WARNING: trials were scored on the dev set; the final dev numbers below are optimistic "
                     "(selected on themselves).")
    if record["n_complete"]:
        lines.append(f"best: trial {study.best_trial.number}, {metric} {study.best_value:.4f}, "
                     + ", ".join(f"{k}={format_value(v)}" for k, v in record["best_params"].items()))
    else:
        lines.append("best: none (no complete trial)" + ("; final runs use the config's values" if final_results else ""))
    if len(table):
        c = compute_spent(table)
        if c["trials"]:
            lines.append(f"compute: {c['seconds']:.0f} s over {c['trials']} trials ({c['steps']} steps); unpruned the same "
                         f"trials would have taken ~{c['unpruned_seconds']:.0f} s ({c['unpruned_steps']} steps)")
    lines += notes
    drawn = [f"{name}.png" for name in FIGURES if (out_dir / f"{name}.png").exists()]
    lines.append(f"outputs: {out_dir}/" + ", ".join(["trials.csv", "best_params.json", "hpo_record.json", *drawn]))
    if final_results:
        lines.append("final runs (dev):")
        lines += [f"  seed {seed}: {line}" for seed, line in final_results]
    return "\n".join(lines)
