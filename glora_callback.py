"""GLoRA as the design card names it: the callback that resizes the LoRA layers, and the Trainer subclass whose
optimizer is recreated after it does. Both live in the `gradnorm_rank` package (installable alone); this file is where
the card points.

- `GradNormRankTrainer` / `GradNormRankMixin`: the form to use where you write the Trainer class (unclipped gradient
  norms, DDP, resume by itself). The GLUE harness uses it (run_glue_peft.GlueTrainer).
- `GradNormRankCallback(trainer, config)`: the TrainerCallback form, for a trainer instance you cannot subclass (any
  Trainer or TRL trainer built by other code): one process, norms of the clipped gradients (gradnorm_rank/callback.py
  says why).
"""

from gradnorm_rank import GradNormRankCallback, GradNormRankConfig, GradNormRankMixin, GradNormRankTrainer

__all__ = ["GradNormRankCallback", "GradNormRankConfig", "GradNormRankMixin", "GradNormRankTrainer"]
