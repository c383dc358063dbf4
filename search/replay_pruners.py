"""Replay Optuna's pruners on the learning curves of an unpruned study: what each would have stopped, what it would
have cost, and what it would have found.

    python3 -m search.replay_pruners outputs/pruner_check/sst2_lora outputs/pruner_check/sst2_glora ...

Input: studies run with `--pruner none` and many evaluations per trial (launch/pruner_check.sh: 8), each trial's
eval_log.jsonl (every evaluation's step, value, `seconds` since training began and its own `runtime`) and
trials.csv (parameters, duration). For each pruning setting the trials are replayed in trial-number order, as one
worker runs them, through a real in-memory Optuna study with the same name (Hyperband's brackets hash it) and
search/pruning.py's own make_pruner and may_prune: each evaluation the setting's schedule has is reported, and the
trial stops where the pruner says so.

The replay is exact where two things hold, and the tool checks neither: (1) the study's trials are the ones the
pruned study would have drawn: true when all of them are TPE's random start-up trials (n_trials <= 10) under one
sampler seed; (2) a trial's values up to an evaluation do not depend on whether it is stopped later (runs are
deterministic; evaluating more often changes nothing in training).

Cost of a trial: its start-up (process start to training start, and the writing at its end: the unpruned trial's
duration minus the seconds its training loop took), its training seconds up to the step where it stopped, and the
runtime of the evaluations the setting makes. The baseline is `none` with one evaluation, at the end.
"""

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from harness.records import read_eval_log
from search.pruning import PRUNING_RATE_MARGIN, PruningSettings, make_pruner, may_prune, report_step

BASELINE = PruningSettings(pruner="none", evaluations_per_trial=1, warmup_fraction=0.0, startup_trials=0,
                           reduction_factor=3)


@dataclass
class Curve:
    """One unpruned trial: its evaluations (eval_log records), parameters and the seconds before/after training."""
    number: int
    params: dict
    records: list
    overhead_seconds: float  # process start to training start, plus the end of the run after its last evaluation

    def schedule(self, evaluations: int) -> list:
        """The records a run with `evaluations` evaluations per trial would have made (hpo.py's --eval_steps 1/E:
        every ceil(max_steps / E) steps, and at the last step)."""
        max_steps = self.records[-1]["max_steps"]
        interval = math.ceil(max_steps / evaluations)
        steps = sorted({s for s in range(interval, max_steps + 1, interval)} | {max_steps})
        by_step = {r["step"]: r for r in self.records}
        missing = [s for s in steps if s not in by_step]
        if missing:
            raise ValueError(f"trial {self.number}: {evaluations} evaluations per trial need steps {missing}, which its "
                             f"eval_log.jsonl does not have (it has {sorted(by_step)})")
        return [by_step[s] for s in steps]

    def seconds_until(self, record: dict, made: list) -> float:
        """Cost of the trial stopped after `record`, having made the evaluations `made` (the record included)."""
        evals_recorded = sum(r["metrics"]["runtime"] for r in self.records if r["step"] <= record["step"])
        training = record["seconds"] - evals_recorded
        return self.overhead_seconds + training + sum(r["metrics"]["runtime"] for r in made)


def load_curves(study_dir: Path) -> list:
    """The complete trials of an unpruned study, in trial-number order."""
    table = pd.read_csv(study_dir / "trials.csv")
    curves = []
    for row in table.itertuples(index=False):
        if row.state != "COMPLETE":
            raise ValueError(f"{study_dir}: trial {row.number} is {row.state}; replay needs an unpruned study whose "
                             "trials all completed")
        records = read_eval_log(Path(row.trial_dir) if Path(row.trial_dir).is_absolute()
                                else study_dir / "trials" / Path(row.trial_dir).name)
        params = {k[len("param_"):]: getattr(row, k) for k in table.columns if k.startswith("param_")}
        curves.append(Curve(int(row.number), params, records, float(row.duration_s) - records[-1]["seconds"]))
    return sorted(curves, key=lambda c: c.number)


def replay(study_name: str, curves: list, settings: PruningSettings, metric: str = "combined_score",
           respect_structure: bool = True) -> pd.DataFrame:
    """One row per trial: state, value (last reported), steps trained, seconds, evaluations made."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=study_name, direction="maximize", pruner=make_pruner(settings))
    rows = []
    for curve in curves:
        trial = study.ask()
        made, state = [], "COMPLETE"
        for record in curve.schedule(settings.evaluations_per_trial):
            made.append(record)
            value = float(record["metrics"][metric])
            trial.report(value, report_step(record, settings.evaluations_per_trial))
            allowed = may_prune(record if respect_structure else {**record, "structure_final_step": 0}, settings)
            if allowed and trial.should_prune():
                state = "PRUNED"
                break
        last = made[-1]
        if state == "PRUNED":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
        rows.append({"number": curve.number, "state": state, "value": float(last["metrics"][metric]),
                     "steps": last["step"], "max_steps": last["max_steps"], "evaluations": len(made),
                     "seconds": curve.seconds_until(last, made),
                     **{f"param_{k}": v for k, v in curve.params.items()}})
    return pd.DataFrame(rows)


def outcome(trials: pd.DataFrame, baseline: pd.DataFrame) -> dict:
    """Compute against the baseline's, and the best complete trial against the baseline's best."""
    complete = trials[trials.state == "COMPLETE"]
    best = complete.loc[complete.value.idxmax()] if len(complete) else None
    base_best = baseline.loc[baseline.value.idxmax()]
    return {
        "pruned": int((trials.state == "PRUNED").sum()), "trials": len(trials),
        "base_steps": int(baseline.steps.sum()), "base_seconds": float(baseline.seconds.sum()),
        "steps": int(trials.steps.sum()), "steps_ratio": trials.steps.sum() / baseline.steps.sum(),
        "seconds": float(trials.seconds.sum()), "seconds_ratio": trials.seconds.sum() / baseline.seconds.sum(),
        "best_trial": None if best is None else int(best.number),
        "best_value": math.nan if best is None else float(best.value),
        "regret": math.nan if best is None else float(base_best.value - best.value),
        "best_params": {} if best is None else {k[len("param_"):]: getattr(best[k], "item", lambda: best[k])()
                                                for k in trials.columns if k.startswith("param_")},
    }


def settings_grid(pruners, evaluations, fractions, startup_trials, reduction_factor) -> list:
    return [PruningSettings(pruner=p, evaluations_per_trial=e, warmup_fraction=f, startup_trials=startup_trials,
                            reduction_factor=reduction_factor)
            for p in pruners for e in evaluations for f in fractions]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_dirs", nargs="+", type=Path, help="Unpruned study folders (trials.csv, trials/*/eval_log.jsonl).")
    p.add_argument("--pruners", nargs="+", default=["median", "successive_halving", "hyperband"])
    p.add_argument("--evaluations", nargs="+", type=int, default=[4, 8], help="Evaluations per trial to replay.")
    p.add_argument("--warmup_fractions", nargs="+", type=float, default=[0.0, 0.5, 0.8])
    p.add_argument("--startup_trials", type=int, default=3, help="median's --pruner_startup_trials.")
    p.add_argument("--reduction_factor", type=int, default=3, help="successive_halving/hyperband's reduction factor.")
    p.add_argument("--metric", default="combined_score")
    p.add_argument("--also_without_structure_rule", action="store_true",
                   help="Add rows that ignore the structural-change rule (the old protocol), for comparison.")
    p.add_argument("--per_study", action="store_true", help="Also print one row per setting and study.")
    p.add_argument("--out", type=Path, help="Write every row as JSON lines here.")
    args = p.parse_args(argv)

    studies = {d.name: load_curves(d) for d in args.study_dirs}
    rows = []
    for name, curves in studies.items():
        baseline = replay(name, curves, BASELINE, args.metric)
        base = outcome(baseline, baseline)
        print(f"{name}: baseline (no pruner, 1 evaluation): {base['steps']} steps, {base['seconds']:.0f} s; best "
              f"trial {base['best_trial']} {args.metric} {base['best_value']:.4f} {base['best_params']}")
        for settings in settings_grid(args.pruners, args.evaluations, args.warmup_fractions, args.startup_trials,
                                      args.reduction_factor):
            for structure in (True, False) if args.also_without_structure_rule else (True,):
                trials = replay(name, curves, settings, args.metric, respect_structure=structure)
                rows.append({"study": name, "pruner": settings.pruner, "E": settings.evaluations_per_trial,
                             "warmup": settings.warmup_fraction, "structure_rule": structure,
                             **outcome(trials, baseline), "states": "".join(s[0] for s in trials.state)})
    table = pd.DataFrame(rows)
    if args.out:
        args.out.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    if args.per_study:
        print(render(table))
        print()
    print(render_summary(table, list(studies)))


def render_summary(table: pd.DataFrame, studies: list) -> str:
    """A markdown table, one row per setting over all studies: trials pruned per study, compute of all studies
    together against the baseline's, each study's regret, and whether the pruning rates differ by more than the
    margin hpo.py and compare_runs.py warn at."""
    names = " / ".join(studies)
    head = (f"| pruner | E | warm-up | structure rule | pruned ({names}) | steps / unpruned | seconds / unpruned | "
            f"regret ({names}) | rates apart > {PRUNING_RATE_MARGIN:.0%} |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (pruner, e, warmup, rule), rows in table.groupby(["pruner", "E", "warmup", "structure_rule"], sort=False):
        rows = rows.set_index("study").loc[studies]
        shares = rows.pruned / rows.trials
        lines.append(f"| {pruner} | {e} | {warmup:g} | {'yes' if rule else 'no'} | "
                     f"{' / '.join(f'{p}/{n}' for p, n in zip(rows.pruned, rows.trials))} | "
                     f"{rows.steps.sum() / rows.base_steps.sum():.2f} | {rows.seconds.sum() / rows.base_seconds.sum():.2f} | "
                     f"{' / '.join(f'{r:+.3f}' for r in rows.regret)} | "
                     f"{'yes' if shares.max() - shares.min() > PRUNING_RATE_MARGIN + 1e-12 else 'no'} |")
    return "\n".join(lines)


def render(table: pd.DataFrame) -> str:
    """A markdown table: one row per setting and study."""
    head = ("| study | pruner | E | warm-up | structure rule | pruned | steps / unpruned | seconds / unpruned | "
            "best trial | best | regret | trial states |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.study} | {r.pruner} | {r.E} | {r.warmup:g} | {'yes' if r.structure_rule else 'no'} | "
                     f"{r.pruned}/{r.trials} | {r.steps_ratio:.2f} | {r.seconds_ratio:.2f} | {r.best_trial} | "
                     f"{r.best_value:.4f} | {r.regret:+.4f} | {r.states} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
