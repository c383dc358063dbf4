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

from .callback import GradNormRankCallback
from .config import GradNormRankConfig, choices
from .core import RECORD_FILE, STATE_FILE, GradNormRank, LoopHost, MethodOverhead, TrainerHost
from .lora_resize import lora_layers, pattern_key, resize_to_ranks
from .rank_allocation import apportion_parameters, apportion_ranks
from .trainer import GradNormRankMixin, GradNormRankTrainer

__version__ = "0.1.0"

__all__ = [
    "GradNormRankConfig", "GradNormRank", "GradNormRankCallback", "GradNormRankMixin", "GradNormRankTrainer", "LoopHost",
    "MethodOverhead", "TrainerHost",
    "RECORD_FILE", "STATE_FILE", "apportion_parameters", "apportion_ranks", "choices", "lora_layers", "pattern_key",
    "resize_to_ranks", "__version__",
]
