"""gradnorm_rank: gradient-norm aware rank allocation for peft LoRA adapters (not peft's "GLoRA", Generalized LoRA).

A LoRA adapter trains for a warm-up while an EMA of each adapted matrix's gradient norm is kept; then its rank
budget is re-apportioned in proportion to those norms, every LoRA layer is resized in place keeping what it
learned, the optimizer is rebuilt with its AdamW state carried over, and training goes on. The resized adapter saves
and reloads with peft as usual (the ranks are written into its `rank_pattern` / `alpha_pattern`).

- `GradNormRankConfig`: the settings, checked when made.
- `GradNormRankMixin` / `GradNormRankTrainer`: any transformers `Trainer` (TRL's included) whose class you write.
- `GradNormRankCallback(trainer, config)`: a trainer instance you cannot subclass (one process; clipped norms).
- `GradNormRank` + `LoopHost`: a plain PyTorch loop (the call order is in `LoopHost`'s docstring).
- `apportion_ranks`, `apportion_parameters`: the allocation maths alone; `resize_to_ranks`: the surgery alone.
- `MethodOverhead`: the seconds the method adds (`GradNormRank.overhead`), by part: signal, resize, grown slices.
"""

import importlib

# Where each public name lives. Imported on first use (PEP 562), so that `GradNormRankConfig`, `choices`,
# `apportion_*` and `MethodOverhead` come without torch and transformers: tools that only read configs or records start
# in a fraction of a second.
_HOMES = {
    "callback": ("GradNormRankCallback",),
    "config": ("GradNormRankConfig", "choices"),
    "core": ("RECORD_FILE", "STATE_FILE", "GradNormRank", "LoopHost", "TrainerHost"),
    "lora_resize": ("lora_layers", "pattern_key", "resize_to_ranks"),
    "overhead": ("MethodOverhead",),
    "rank_allocation": ("apportion_parameters", "apportion_ranks"),
    "trainer": ("GradNormRankMixin", "GradNormRankTrainer"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__version__ = "0.1.0"

__all__ = [
    "GradNormRankConfig", "GradNormRank", "GradNormRankCallback", "GradNormRankMixin", "GradNormRankTrainer", "LoopHost",
    "MethodOverhead", "TrainerHost",
    "RECORD_FILE", "STATE_FILE", "apportion_parameters", "apportion_ranks", "choices", "lora_layers", "pattern_key",
    "resize_to_ranks", "__version__",
]


def __getattr__(name):
    if name not in _HOME_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_HOME_OF])
