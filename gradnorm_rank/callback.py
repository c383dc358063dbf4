"""Gradient-norm rank allocation as a `TrainerCallback`, for a trainer instance you cannot subclass.

    trainer = SFTTrainer(model=..., args=..., train_dataset=..., peft_config=LoraConfig(...))   # any Trainer
    GradNormRankCallback(trainer, GradNormRankConfig(warmup_steps=100))   # adds itself to the trainer
    trainer.train()

Which form to use:
- `GradNormRankMixin` (trainer.py) where you write the Trainer class: it reads each step's gradient norms before
  clipping, runs under DDP (it routes training_step through the DDP wrapper it rebuilds after the resize) and resumes
  from a checkpoint taken after the reallocation by itself.
- `GradNormRankCallback` where the trainer object comes from code you do not control (a library's factory, a TRL
  trainer built for you): a callback is not handed the trainer, so it is given the trainer when made, and replaces the
  trainer's optimizer and scheduler through it. It is limited to what callbacks see:
  - the norms are of the **clipped** gradients: `on_pre_optimizer_step` comes after the Trainer's clipping. When a
    step's global norm exceeds `max_grad_norm`, every gradient of that step is scaled by the same factor, so the step's
    shares between matrices are unchanged but it weighs less in the EMA than in the mixin's (with `max_grad_norm=0`
    the two forms measure the same norms; the `delta` signal, from activations, is never clipped);
  - one process only: after a resize under DDP the loop's DDP wrapper would not know the new parameters, and a
    callback cannot hand the loop a new one (it refuses a multi-process run; use the mixin);
  - to resume from a checkpoint saved after the reallocation, call `callback.load(checkpoint)` before
    `trainer.train(resume_from_checkpoint=checkpoint)` (the Trainer loads the checkpoint's weights, of the new ranks,
    before any callback runs).
"""

from .config import GradNormRankConfig
from .core import GradNormRank, TrainerHost


class GradNormRankCallback(GradNormRank):
    """`GradNormRankCallback(trainer, config)`: the method on `trainer.model` (a peft model with a LoRA adapter, as the
    trainer holds it once constructed), attached to `trainer` and added to its callbacks. The gradient norms are read
    in `on_pre_optimizer_step`, after the Trainer clipped them (see the module docstring); everything else is
    `GradNormRank`'s: the reallocation from `on_step_end`, the log entries, the checkpoint state."""

    def __init__(self, trainer, config: GradNormRankConfig, adapter_name="default"):
        if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or trainer.args.world_size > 1:
            raise ValueError("GradNormRankCallback runs in one process without DeepSpeed or FSDP; this trainer runs "
                             f"{trainer.args.world_size} processes{' under DeepSpeed' if trainer.is_deepspeed_enabled else ''}"
                             f"{' under FSDP' if trainer.is_fsdp_enabled else ''}: use GradNormRankMixin under DDP.")
        super().__init__(trainer.model, config, adapter_name)
        self.trainer = trainer
        self.attach(TrainerHost(trainer))
        trainer.add_callback(self)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # The gradients are summed over the step's micro-batches and clipped. Under fp16 they were unscaled by the
        # clipping (accelerate unscales before it clips); without clipping they still carry the loss scale.
        scaler = self.trainer.accelerator.scaler
        scaled = scaler is not None and scaler.is_enabled() and args.max_grad_norm <= 0
        self.observe_gradients(scaler.get_scale() if scaled else 1.0)
