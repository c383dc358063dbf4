"""The settings of gradient-norm rank allocation: one frozen dataclass, checked when it is made.

Every field with a fixed set of values declares them once, as `metadata["choices"]` (the way trl's configs do), and
`__post_init__` checks every field, so a wrong value fails with one line naming the field before any model loads.
`choices(name)` gives a field's choices to code that needs them (the GLUE harness's flags and their help).
"""

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class GradNormRankConfig:
    """When and how a LoRA adapter's ranks are re-apportioned by the EMA of each matrix's gradient norm.

    `warmup_steps` is required. The budgets default to what the adapter holds when training starts (its total rank;
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
    warmup_steps: int = field(
        metadata={"help": "Optimizer steps of gradient-norm observation; the ranks are re-apportioned once, at the "
                          "end of this step."},
    )
    beta: float = field(default=0.9, metadata={"help": "EMA coefficient of the gradient norms, in [0, 1)."})
    signal: str = field(
        default="lora_b",
        metadata={"help": "Gradient signal: lora_b = ||grad B||; lora_ab = sqrt(||grad A||^2 + ||grad B||^2); delta = "
                          "||dL/dW|| of the full matrix (forward/backward hooks during the warm-up).",
                  "choices": ("lora_b", "lora_ab", "delta")},
    )
    min_rank: int = field(default=1, metadata={"help": "Rank floor per matrix (peft cannot hold 0)."})
    max_rank: int | None = field(default=None, metadata={"help": "Rank cap per matrix (None: no cap but the budget)."})
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
        for name in ("rank_budget", "param_budget", "warmup_steps", "min_rank", "max_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"GradNormRankConfig.{name} must be an integer >= 1"
                                 f"{'' if name in ('warmup_steps', 'min_rank') else ' or None'}; got {value!r}.")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"GradNormRankConfig.beta must be in [0, 1); got {self.beta!r}.")
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise ValueError(f"GradNormRankConfig.max_rank {self.max_rank} is below min_rank {self.min_rank}.")
        if self.budget_unit == "rank" and self.param_budget is not None:
            raise ValueError("GradNormRankConfig.param_budget counts parameters: it needs budget_unit='params'.")


def choices(name: str) -> tuple:
    """The values a field of GradNormRankConfig accepts, as declared in its metadata."""
    return next(f.metadata["choices"] for f in dataclasses.fields(GradNormRankConfig) if f.name == name)
