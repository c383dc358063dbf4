"""Gradient-norm rank allocation in any transformers `Trainer` (TRL's trainers included): a mixin.

    class MyTrainer(GradNormRankMixin, Trainer):   # or (GradNormRankMixin, SFTTrainer), ...
        pass

    trainer = MyTrainer(model=peft_model, args=..., train_dataset=..., gradnorm_rank=GradNormRankConfig(warmup_steps=100))

Use the mixin where you write the Trainer class; for a trainer instance built by code you do not control, use
`GradNormRankCallback(trainer, config)` (callback.py), which sees only what callbacks see: clipped gradients, one
process. The mixin makes the three calls the method needs from the Trainer: every micro-batch goes through
`GradNormRank.training_step` (the gradient norms, read before clipping), the reallocation runs from the callback's
`on_step_end` through a `TrainerHost` (the Trainer's own optimizer and scheduler are rebuilt), and a resume loads the
checkpoint's `glora_state.json` before the Trainer loads the checkpoint's weights, which have the reallocated ranks.
"""

from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .config import GradNormRankConfig
from .core import GradNormRank, TrainerHost


class GradNormRankMixin:
    """Put it before the Trainer class in the bases. `gradnorm_rank`: a `GradNormRankConfig` (the method is built on the
    trainer's model, a peft model with LoRA layers, once the Trainer is constructed) or a `GradNormRank` already built;
    None trains the adapter unchanged. The method object is `self.gradnorm_rank` (its `final_ranks`, `scores()`)."""

    def __init__(self, *args, gradnorm_rank: GradNormRankConfig | GradNormRank | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(gradnorm_rank, GradNormRankConfig):
            gradnorm_rank = GradNormRank(self.model, gradnorm_rank)
        elif gradnorm_rank is not None and not isinstance(gradnorm_rank, GradNormRank):
            raise TypeError(f"gradnorm_rank must be a GradNormRankConfig or a GradNormRank, got "
                            f"{type(gradnorm_rank).__name__}.")
        self.gradnorm_rank = gradnorm_rank
        if gradnorm_rank is not None and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError("gradnorm_rank resizes LoRA layers mid-training, which works on one device and under DDP "
                             "only; this Trainer runs DeepSpeed or FSDP.")
        if gradnorm_rank is not None:
            gradnorm_rank.attach(TrainerHost(self))
            self.add_callback(gradnorm_rank)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.gradnorm_rank is None:
            return super().training_step(model, inputs, num_items_in_batch)
        return self.gradnorm_rank.training_step(super().training_step, model, inputs, num_items_in_batch,
                                                self.accelerator)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """`resume_from_checkpoint`: as the Trainer's (a folder, or True for the newest in output_dir)."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True: no checkpoint found in {self.args.output_dir}.")
        if resume_from_checkpoint and self.gradnorm_rank is not None:
            self.gradnorm_rank.load(resume_from_checkpoint)  # the checkpoint's ranks, before its weights load
        elif self.gradnorm_rank is not None and self.gradnorm_rank.config.calibration_steps is not None:
            self.calibrate()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def calibrate(self):
        """calibration_steps: the signal over the first N batches of the train dataloader, before the optimizer
        exists; the ranks are allocated and resized before step 1. The batches are the ones training then starts
        with, in the same order (the random state is restored: the training order is that of a run without
        calibration), each seen with the Trainer's own loss (compute_loss, its autocast), one batch per observation."""
        def loss(batch):
            with self.compute_loss_context_manager():
                return self.compute_loss(self.model, self._prepare_inputs(batch))

        self.gradnorm_rank.calibrate(self.get_train_dataloader(), loss)


class GradNormRankTrainer(GradNormRankMixin, Trainer):
    """`transformers.Trainer` with gradient-norm rank allocation: `GradNormRankTrainer(..., gradnorm_rank=config)`."""
