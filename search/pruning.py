"""When a trial may be stopped early, and by which of Optuna's pruners.

A trial reports each evaluation of the tuning split at k = floor(E x step / max_steps) (E = --evaluations_per_trial),
"k E-ths of training done", the pruners' resource. Two rules keep the judging fair to methods that change shape:

- **One warm-up for every method:** no decision before k >= ceil(E x warmup_fraction), the same point of the run
  whatever the method or batch size.
- **Structure settled:** no decision on an evaluation taken at or before the trial's last structural change (the
  run logs it as `structure_final_step`: GLoRA's reallocation step, AdaLoRA's total_step - tfinal, 0 for LoRA):
  until then a trial that changes shape is judged on a model it is about to replace.

A trial whose structure settles after the common warm-up is judged later than the others; hpo.py counts such trials.
"""

import math
from dataclasses import asdict, dataclass

import optuna

PRUNERS = ("median", "successive_halving", "hyperband", "none")
PRUNING_RATE_MARGIN = 0.25  # per-method pruning rates further apart than this are flagged


@dataclass(frozen=True)
class PruningSettings:
    pruner: str  # one of PRUNERS
    evaluations_per_trial: int  # E: evaluations of the tuning split in a trial, evenly spaced, the last at the end
    warmup_fraction: float  # no decision before this fraction of the run, for every method
    startup_trials: int  # median: completed trials before it acts
    reduction_factor: int  # successive halving, hyperband: 1 / the share of trials kept at each rung

    def __post_init__(self):
        if self.pruner not in PRUNERS:
            raise ValueError(f"--pruner is one of {', '.join(PRUNERS)}, got {self.pruner!r}.")
        if self.evaluations_per_trial < 1:
            raise ValueError(f"--evaluations_per_trial must be >= 1, got {self.evaluations_per_trial}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"--pruner_warmup_fraction must be in [0, 1) (a fraction of the run), got "
                             f"{self.warmup_fraction}.")
        if self.startup_trials < 0:
            raise ValueError(f"--pruner_startup_trials must be >= 0, got {self.startup_trials}.")
        if self.reduction_factor < 2:
            raise ValueError(f"--pruner_reduction_factor must be >= 2, got {self.reduction_factor}.")

    @property
    def first_evaluation(self) -> int:
        """The first k at which a decision may be taken (k = E never is: the trial has finished)."""
        return max(1, math.ceil(self.evaluations_per_trial * self.warmup_fraction - 1e-9))

    @property
    def can_act(self) -> bool:
        return self.pruner != "none" and self.first_evaluation < self.evaluations_per_trial

    def record(self) -> dict:
        """As stored in the study (what a worker reopening it must match)."""
        return asdict(self)


def make_pruner(settings: PruningSettings) -> optuna.pruners.BasePruner:
    """Optuna's pruner, its resource counted in evaluations (k), starting at the first k a decision may be taken."""
    k0, top = settings.first_evaluation, settings.evaluations_per_trial
    if settings.pruner == "median":
        # Stop a trial below the median of the completed trials at the same k, once startup_trials have completed.
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=k0)
    if settings.pruner == "successive_halving":
        # Rungs at k0, k0 x rf, ...: a trial goes on only if it is in the top 1/rf of the trials that reached the rung.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=k0, reduction_factor=settings.reduction_factor)
    if settings.pruner == "hyperband":
        # Several successive-halving brackets with different first rungs between k0 and E (trials spread over them).
        return optuna.pruners.HyperbandPruner(min_resource=k0, max_resource=top,
                                              reduction_factor=settings.reduction_factor)
    return optuna.pruners.NopPruner()


def report_step(record: dict, evaluations_per_trial: int) -> int:
    """k: how many E-ths of training were done at this evaluation, the same point whatever the batch size."""
    return math.floor(evaluations_per_trial * record["step"] / record["max_steps"])


def may_prune(record: dict, settings: PruningSettings) -> bool:
    """Whether the pruner may be asked about this evaluation: the trial has not finished, the common warm-up is over,
    and the trial's structure had settled when the evaluation was taken."""
    return (record["step"] < record["max_steps"]
            and report_step(record, settings.evaluations_per_trial) >= settings.first_evaluation
            and record["step"] > record.get("structure_final_step", 0))


def pruning_rate_gap(rates: dict, margin: float = PRUNING_RATE_MARGIN) -> str:
    """'' when the methods' pruning rates ({method: (pruned, trials)}) are within `margin` of each other, else a
    warning naming them: methods pruned at different rates were not judged alike, and the pruner may be deciding
    the comparison."""
    shares = {m: pruned / trials for m, (pruned, trials) in rates.items() if trials > 0}
    if len(shares) < 2 or max(shares.values()) - min(shares.values()) <= margin + 1e-12:
        return ""
    listed = ", ".join(f"{m} {rates[m][0]}/{rates[m][1]} ({share:.0%})" for m, share in shares.items())
    return (f"pruning rates differ by more than {margin:.0%} ({listed}): the pruner treated the methods differently "
            "and may be deciding the comparison")


def judged_late(trials, settings: PruningSettings) -> int:
    """Trials whose structure settled at or after the common warm-up point: the pruner judged them later than the
    others (from their user attributes structure_final_step and max_steps)."""
    point = settings.first_evaluation / settings.evaluations_per_trial
    return sum(1 for t in trials if t.user_attrs.get("max_steps") and settings.can_act
               and t.user_attrs.get("structure_final_step", 0) / t.user_attrs["max_steps"] >= point)
