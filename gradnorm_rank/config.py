"""The settings of gradient-norm rank allocation: one frozen dataclass, checked when it is made.

Every field with a fixed set of values declares them once, as `metadata["choices"]` (the way trl's configs do), and
`__post_init__` checks every field, so a wrong value fails with one line naming the field before any model loads.
`choices(name)` gives a field's choices to code that needs them (the GLUE harness's flags and their help).
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field

# The signals (gradnorm_rank/signals.py says what each measures), named here so that the config and the tools that
# read its choices need not import torch.
SIGNALS = ("lora_b", "lora_ab", "delta", "weight_grad", "sensitivity", "whitened", "kfac", "activation_variance",
           "update_concentration", "update_norm", "random", "shuffled")
NULLS = ("random", "shuffled")
# Their values are shares in [0, 1], draws, or (update_norm) already relative to the weight's norm, not norms over
# entries: a score normalisation would have nothing to divide.
SHARE_SIGNALS = ("activation_variance", "update_concentration", "update_norm", "random")
# Observe nothing during the warm-up; they read the trained update, which calibration does not have.
NEEDS_TRAINING = ("update_concentration", "update_norm")

CAP_FACTOR = re.compile(r"^(\d+(?:\.\d+)?)x$")  # max_rank as a multiple of the average rank: "4x"


@dataclass(frozen=True, kw_only=True)
class GradNormRankConfig:
    """When and how a LoRA adapter's ranks are re-apportioned by the EMA of each matrix's gradient norm.

    Exactly one timing is required: `warmup_steps` or `warmup_fraction` (the signal over the first training steps), or
    `calibration_steps` (the signal over batches before training, no optimizer step). The budgets default to what
    the adapter holds when training starts (its total rank;
    under `budget_unit="params"` its adapter parameters sum_k r_k (d_in + d_out)), so a uniform LoRA adapter keeps its
    size and only moves rank between matrices."""

    budget_unit: str = field(
        default="rank",
        metadata={"help": "What the budget counts: rank = the sum of the ranks (rank_budget); params = adapter "
                          "parameters sum_k r_k (d_in + d_out) (param_budget).", "choices": ("rank", "params")},
    )
    rank_budget: int | None = field(
        default=None,
        metadata={"help": "Total rank over all adapted matrices (None: the adapter's at the start). Under "
                          "budget_unit params it still caps each matrix's rank unless max_rank is given."},
    )
    param_budget: int | None = field(
        default=None,
        metadata={"help": "Under budget_unit params: adapter parameters over all adapted matrices (None: the "
                          "adapter's at the start)."},
    )
    warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Optimizer steps of gradient-norm observation; the ranks are re-apportioned once, at the "
                          "end of this step (or warmup_fraction, or calibration_steps; exactly one of the three). "
                          "Once the run's length is known, a warm-up past it is an error, one that ends with its last step a warning."},
    )
    warmup_fraction: float | None = field(
        default=None,
        metadata={"help": "The warm-up as a fraction of the run's optimizer steps, in (0, 1), rounded to steps once the "
                          "run's length is known (the Trainer's max_steps; LoopHost's total_steps)."},
    )
    calibration_steps: int | None = field(
        default=None,
        metadata={"help": "Batches the signal is collected over BEFORE training (forward and backward, no optimizer "
                          "step; their mean, not the EMA); the ranks are apportioned and resized before step 1 "
                          "(GradNormRank.calibrate). Or warmup_steps / warmup_fraction, not both."},
    )
    beta: float = field(default=0.9, metadata={"help": "EMA coefficient of the gradient norms, in [0, 1)."})
    signal: str = field(
        default="lora_b",
        metadata={"help": "Signal (gradnorm_rank.signals): lora_b = ||grad B||; lora_ab = sqrt(||grad A||^2 + "
                          "||grad B||^2); delta = weight_grad = ||G|| of the full matrix's gradient (hooks while the "
                          "signal is collected); sensitivity = sum |W * G| (GoRA); whitened = ||G C_x^-1/2||; kfac = "
                          "||C_g^-1/2 G C_x^-1/2||; activation_variance = EVA's explained variance of the top r input "
                          "components; update_concentration = share of ||s B A||^2 in its top r singular values; "
                          "update_norm = ||s B A|| / ||W|| (both read the warm-up's update); random, shuffled = seeded nulls.", "choices": SIGNALS},
    )
    signal_seed: int = field(default=0, metadata={"help": "Seed of the nulls random and shuffled."})
    shuffle_base: str = field(
        default="lora_b",
        metadata={"help": "The signal whose shares `shuffled` permutes.",
                  "choices": tuple(s for s in SIGNALS if s not in NULLS)},
    )
    signal_damping: float = field(
        default=1e-3,
        metadata={"help": "whitened, kfac: each covariance C is damped as C + signal_damping * tr(C)/d * I (> 0)."},
    )
    top_r: int | None = field(
        default=None,
        metadata={"help": "r of activation_variance (None: each matrix's starting LoRA rank, EVA's r) and of "
                          "update_concentration (None: 1)."},
    )
    min_rank: int = field(default=1, metadata={"help": "Rank floor per matrix (peft cannot hold 0)."})
    max_rank: int | str | None = field(
        default="4x",
        metadata={"help": "Rank cap per matrix: an integer; 'Kx' = K times the average rank per matrix of rank_budget "
                          "(a uniform adapter's starting rank; the default 4x is GoRA's clamp), rounded up; None = "
                          "no cap but the budget."},
    )
    warn_share: float | None = field(
        default=0.25,
        metadata={"help": "Warn when the reallocation gives one matrix more than this share of the budget (of the "
                          "total rank; under budget_unit params, of the parameters), in (0, 1]; None: never."},
    )
    score_norm: str = field(
        default="raw",
        metadata={"help": "What a matrix's EMA is divided by before the shares are taken: raw = nothing; per_entry "
                          "= the square root of the entries its norm is taken over (RMS); per_rank_unit = a rank "
                          "unit's cost d_in + d_out; per_sqrt_d_in = sqrt(d_in), the d_in correction of lora_b "
                          "(Adam grows A's rows as sqrt(d_in), and ||grad B|| = s ||G A^T|| with them; "
                          "docs/allocation.md).", "choices": ("raw", "per_entry", "per_rank_unit", "per_sqrt_d_in")},
    )
    adam_rule: str = field(
        default="slice_bias_correction",
        metadata={"help": "AdamW state of the slices a resize adds: slice_bias_correction = zero moments with Adam's "
                          "bias correction counted from the resize; inherit_step = zero moments under the tensor's "
                          "old step count (its bias correction then never applies to them).",
                  "choices": ("slice_bias_correction", "inherit_step")},
    )

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                raise ValueError(f"GradNormRankConfig.{f.name} must be one of {', '.join(f.metadata['choices'])}; "
                                 f"got {value!r}.")
        for name in ("rank_budget", "param_budget", "warmup_steps", "calibration_steps", "min_rank", "top_r"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"GradNormRankConfig.{name} must be an integer >= 1"
                                 f"{'' if name == 'min_rank' else ' or None'}; got {value!r}.")
        self._check_signal()
        for name, high_closed in (("warmup_fraction", False), ("warn_share", True)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not (0 < value < 1 or (high_closed and value == 1))):
                raise ValueError(f"GradNormRankConfig.{name} must be in (0, 1{']' if high_closed else ')'} or None; "
                                 f"got {value!r}.")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"GradNormRankConfig.beta must be in [0, 1); got {self.beta!r}.")
        self._check_max_rank()
        if self.budget_unit == "rank" and self.param_budget is not None:
            raise ValueError("GradNormRankConfig.param_budget counts parameters: it needs budget_unit='params'.")

    def _check_signal(self):
        """The timing (exactly one of warm-up and calibration) and the signal's settings."""
        given = [name for name in ("warmup_steps", "warmup_fraction", "calibration_steps") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("GradNormRankConfig needs exactly one of warmup_steps, warmup_fraction (in training) and "
                             f"calibration_steps (before training); got warmup_steps={self.warmup_steps!r}, "
                             f"warmup_fraction={self.warmup_fraction!r}, calibration_steps={self.calibration_steps!r}.")
        measured = self.shuffle_base if self.signal == "shuffled" else self.signal
        if measured in NEEDS_TRAINING and self.calibration_steps is not None:
            raise ValueError(f"GradNormRankConfig.signal {measured} reads the trained update, which calibration "
                             "(no optimizer step) does not have: give warmup_steps instead of calibration_steps.")
        if measured in SHARE_SIGNALS and self.score_norm != "raw":
            raise ValueError(f"GradNormRankConfig.signal {measured} gives shares or ratios, not norms: score_norm "
                             f"must be raw; got {self.score_norm!r}.")
        if not self.signal_damping > 0:
            raise ValueError(f"GradNormRankConfig.signal_damping must be > 0; got {self.signal_damping!r}.")

    def _check_max_rank(self):
        value = self.max_rank
        if isinstance(value, str):
            match = CAP_FACTOR.match(value)
            if match is None or float(match.group(1)) < 1:
                raise ValueError(f"GradNormRankConfig.max_rank as a multiple must be 'Kx' with K >= 1 (e.g. '4x'); "
                                 f"got {value!r}.")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"GradNormRankConfig.max_rank must be an integer >= 1, 'Kx' or None; got {value!r}.")
        elif value is not None and value < self.min_rank:
            raise ValueError(f"GradNormRankConfig.max_rank {value} is below min_rank {self.min_rank}.")

    def rank_cap(self, rank_budget: int, matrices: int) -> int | None:
        """max_rank as a number of ranks for `matrices` matrices sharing `rank_budget`: 'Kx' is K times the average
        rank, rounded up; None: no cap."""
        if isinstance(self.max_rank, str):
            return math.ceil(float(CAP_FACTOR.match(self.max_rank).group(1)) * rank_budget / matrices)
        return self.max_rank


def choices(name: str) -> tuple:
    """The values a field of GradNormRankConfig accepts, as declared in its metadata."""
    return next(f.metadata["choices"] for f in dataclasses.fields(GradNormRankConfig) if f.name == name)
