"""The settings of gradient-norm rank allocation: one frozen dataclass, checked when it is made.

Every field with a fixed set of values declares them once, as `metadata["choices"]` (the way trl's configs do), and
`__post_init__` checks every field, so a wrong value fails with one line naming the field before any model loads.
`choices(name)` gives a field's choices to code that needs them (the GLUE harness's flags and their help).
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field

CAP_FACTOR = re.compile(r"^(\d+(?:\.\d+)?)x$")  # max_rank as a multiple of the average rank: "4x"


@dataclass(frozen=True, kw_only=True)
class GradNormRankConfig:
    """When and how a LoRA adapter's ranks are re-apportioned by the EMA of each matrix's gradient norm.

    The warm-up is `warmup_steps` or `warmup_fraction` (exactly one). The budgets default to what the adapter holds when training starts (its total rank;
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
                          "end of this step (or warmup_fraction; exactly one of the two). Once the run's length is known, a warm-up "
                          "past it is an error, one that ends with its last step a warning."},
    )
    warmup_fraction: float | None = field(
        default=None,
        metadata={"help": "The warm-up as a fraction of the run's optimizer steps, in (0, 1), rounded to steps once the "
                          "run's length is known (the Trainer's max_steps; LoopHost's total_steps)."},
    )
    beta: float = field(default=0.9, metadata={"help": "EMA coefficient of the gradient norms, in [0, 1)."})
    signal: str = field(
        default="lora_b",
        metadata={"help": "Gradient signal: lora_b = ||grad B||; lora_ab = sqrt(||grad A||^2 + ||grad B||^2); delta = "
                          "||dL/dW|| of the full matrix (forward/backward hooks during the warm-up).",
                  "choices": ("lora_b", "lora_ab", "delta")},
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
                          "unit's cost d_in + d_out.", "choices": ("raw", "per_entry", "per_rank_unit")},
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
        for name in ("rank_budget", "param_budget", "warmup_steps", "min_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"GradNormRankConfig.{name} must be an integer >= 1"
                                 f"{'' if name == 'min_rank' else ' or None'}; got {value!r}.")
        if (self.warmup_steps is None) == (self.warmup_fraction is None):
            raise ValueError("GradNormRankConfig needs exactly one of warmup_steps and warmup_fraction; got "
                             f"warmup_steps={self.warmup_steps!r}, warmup_fraction={self.warmup_fraction!r}.")
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
