"""What a search writes and prints: a line per trial, trials.csv, best_params.json, the Optuna figures, and the
summary at the end."""

import json
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.study import counted_trials, retried_numbers


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
    """Every trial, interrupted ones included (marked): parameters, value, state, duration, steps trained."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    rows = []
    for t in trials:
        a = t.user_attrs
        rows.append({
            "number": t.number,
            "state": "INTERRUPTED (rerun)" if t.number in retried else t.state.name,
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


def compute_spent(table: pd.DataFrame) -> dict:
    """Trial seconds spent, and what the same trials would have cost unpruned: each pruned trial's time scaled by
    max_steps / steps_trained (its cost per step so far, to the end of its run)."""
    done = table[table["state"].isin(["COMPLETE", "PRUNED"]) & table["steps_trained"].notna()]
    spent = float(done["duration_s"].sum())
    scale = (done["max_steps"] / done["steps_trained"]).where(done["state"] == "PRUNED", 1.0)
    return {"trials": len(done), "seconds": spent, "unpruned_seconds": float((done["duration_s"] * scale).sum()),
            "steps": int(done["steps_trained"].sum()), "unpruned_steps": int(done["max_steps"].sum())}


def write_figures(study, out_dir: Path) -> list:
    """optimization_history.png and param_importances.png (Optuna's matplotlib plots); a reason when one can't be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return ["figures not drawn: no complete trial"]
    notes = []
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="The number of trials is too small")  # said in trials.csv already
    for name, plot in (("optimization_history", vis.plot_optimization_history),
                       ("param_importances", vis.plot_param_importances)):
        try:
            axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(7, 4.5)
            figure.tight_layout()
            figure.savefig(out_dir / f"{name}.png", dpi=100)
            plt.close(figure)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            notes.append(f"{name}.png not drawn: {error}")
    return notes


def write_outputs(study, out_dir: Path, best: dict) -> tuple:
    """trials.csv, best_params.json and the figures in out_dir; (table, figure notes)."""
    table = trials_table(study)
    table.to_csv(out_dir / "trials.csv", index=False)
    (out_dir / "best_params.json").write_text(json.dumps(best, indent=2) + "\n")
    return table, write_figures(study, out_dir)


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
    lines.append(f"outputs: {out_dir}/trials.csv, best_params.json, optimization_history.png, param_importances.png")
    if final_results:
        lines.append("final runs (dev):")
        lines += [f"  seed {seed}: {line}" for seed, line in final_results]
    return "\n".join(lines)
