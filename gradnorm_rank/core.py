"""Gradient-norm aware rank allocation for LoRA (the GLUE harness's "GLoRA") — the whole method in one object.

A run starts as a LoRA adapter (usually uniform). During a warm-up of `warmup_steps` optimizer steps `GradNormRank`
keeps, for every adapted matrix k, an EMA of the norm of its gradient, g_k <- beta * g_k + (1 - beta) * n_k. At the
end of the warm-up `reallocate(step)` re-apportions the rank budget in proportion to g_k and continues training
with the new ranks.

Where each phase goes in the training loop (`trainer.GradNormRankMixin` makes the Trainer's calls; a plain loop makes
them itself, in the order `LoopHost`'s docstring gives):

    every micro-batch        training_step(...)   forward/backward through the current DDP wrapper; after the
                                                  step's last micro-batch:
                             └ observe_gradients  phase 1: n_k of this optimizer step into the EMA
    after step == warm-up    reallocate(step)     (on_step_end / maybe_reallocate, when the gradients are zeroed)
                             ├ allocate           phase 2: EMA -> integer ranks (rank_allocation, pure maths)
                             ├ resize             phase 3: LoRA layers resized in place (lora_resize)
                             └ rebuild            phase 4: new optimizer with AdamW state carried over, LR schedule
                                                  continued, DDP wrapper rebuilt over the new parameters
    every optimizer step     after_optimizer_step  after the resize: Adam's bias correction of the added slices,
                                                  counted from the resize (config.adam_rule)
    checkpoint / resume      save(dir) / load(dir)   the EMA, and after the reallocation the ranks to resize to

The seconds each phase adds to training are measured where it runs, in `GradNormRank.overhead` (`MethodOverhead`):
signal (phase 1), resize (phases 2-4) and grown-slice correction (after_optimizer_step).

n_k is the norm of the true gradient of the step: read after the last micro-batch's backward (gradients summed
over accumulation and all-reduced by DDP), before clipping, divided by the fp16 loss scale. A step with a
non-finite norm leaves the EMA unchanged. The EMA starts at zero and is not bias-corrected: the bias is the same
factor for every module, so the shares s_k = g_k / sum(g) are unaffected.

Signals (`config.signal`): the family in `signals.py` (its docstring defines each), behind one interface. Their
cost (measured figures: docs/benchmarks.md, docs/allocation.md):
- `lora_b`: ||grad B||_F. One fused norm over the B gradients per step; no extra memory.
- `lora_ab`: sqrt(||grad A||^2 + ||grad B||^2). Twice the norms of `lora_b`, still negligible.
- `delta` (= `weight_grad`), `sensitivity`: from G = dL/dW, the gradient of the full d_out x d_in matrix that
  LoRA's update adds to: sum over tokens of (output gradient) (layer input)^T. Forward/backward hooks on every
  adapted layer compute it while the signal is collected only. It costs one extra d_out x d_in x tokens matmul per
  adapted matrix per micro-batch (about the weight-gradient cost of full fine-tuning of those matrices) and a fp32
  buffer as large as the adapted matrices, all-reduced once per step under DDP.
- `whitened`, `kfac`, `activation_variance`: also d_in x d_in (and for kfac d_out x d_out) covariance buffers and a
  Cholesky factorisation (an eigvalsh for activation_variance) per matrix per observation.
- `update_concentration`, `update_norm`, `random`, `shuffled`: one SVD (update_norm: an r x r product) per matrix
  at the allocation; nothing (or the base's cost).

Timing: the in-training warm-up above (`warmup_steps`), or calibration (`calibration_steps`): `calibrate(batches,
loss)` before training runs forward and backward over N batches with no optimizer step, takes the mean of the N
observations (instead of the EMA), allocates and resizes, so training runs at the allocated ranks from step 1. The
random-number state is restored afterwards, so training draws the same batches and dropout masks as without it.
Its whole wall-clock time is the signal part of the overhead (the forward/backward passes are extra work there).
"""

import dataclasses
import json
import logging
import os
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from .lora_resize import (
    GrownSlices,
    carry_optimizer_state,
    correct_grown_slices,
    grown_slices,
    lora_layers,
    resize_to_ranks,
)
from .overhead import MethodOverhead
from .rank_allocation import apportion_parameters, apportion_ranks
from .signals import make_signal

logger = logging.getLogger("gradnorm_rank")  # the package's logger: logging.getLogger("gradnorm_rank").setLevel(...)

STATE_FILE = "glora_state.json"
RECORD_FILE = "gradnorm_rank.json"  # the allocation record written beside adapter_config.json
LOG_PREFIX = "gradnorm_rank/"  # the keys the method adds to the Trainer's log (state.log_history, report_to)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _random_state():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_random_state(state):
    python, numpy_state, cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


# ---- where a training loop keeps what the reallocation replaces: its optimizer, scheduler, DDP wrapper ----


class TrainerHost:
    """A transformers Trainer as the host: its optimizer (wrapped by accelerate), scheduler and DDP wrapper."""

    def __init__(self, trainer):
        self.trainer = trainer

    @property
    def optimizer(self):
        return self.trainer.optimizer

    @property
    def lr_scheduler(self):
        return self.trainer.lr_scheduler

    @property
    def wrapped_model(self):
        return self.trainer.model_wrapped

    def new_optimizer(self):
        """The Trainer's optimizer over the model's current parameters, not yet prepared by accelerate."""
        trainer = self.trainer
        # Drop the stale optimizer from accelerate, or it keeps stepping/zeroing dead parameters.
        trainer.accelerator._optimizers = [o for o in trainer.accelerator._optimizers if o is not trainer.optimizer]
        trainer.optimizer = None
        return trainer.create_optimizer()

    def prepare_optimizer(self, optimizer):
        return self.trainer.accelerator.prepare_optimizer(optimizer)

    def new_scheduler(self, optimizer):
        self.trainer.lr_scheduler = None
        return self.trainer.create_scheduler(num_training_steps=self.trainer.state.max_steps, optimizer=optimizer)

    def install(self, optimizer, lr_scheduler, wrapped_model):
        trainer = self.trainer
        trainer.optimizer, trainer.lr_scheduler, trainer.model_wrapped = optimizer, lr_scheduler, wrapped_model
        trainer.callback_handler.optimizer = optimizer
        trainer.callback_handler.lr_scheduler = lr_scheduler

    def log(self, values: dict):
        """Into the Trainer's log: `state.log_history`, the console and every report_to integration. Called from
        within a Trainer event, it leaves the step's own `should_log` as it was (the Trainer's on_log clears it)."""
        should_log = self.trainer.control.should_log
        self.trainer.log(values)
        self.trainer.control.should_log = should_log

    def record_settings(self, settings: dict):
        """The method's settings into the config of the trackers the Trainer reports to (W&B, MLflow, TensorBoard),
        once they are set up (from on_train_begin, after theirs)."""
        for callback in self.trainer.callback_handler.callbacks:
            TRACKER_CONFIG.get(type(callback).__name__, lambda callback, settings: None)(callback, settings)


def _wandb_config(callback, settings):
    if callback._wandb is not None and callback._wandb.run is not None:
        callback._wandb.config.update({"gradnorm_rank": settings}, allow_val_change=True)


def _mlflow_config(callback, settings):
    if callback._initialized:
        callback._ml_flow.log_params({f"gradnorm_rank.{key}": value for key, value in settings.items()})


def _tensorboard_config(callback, settings):
    if callback.tb_writer is not None:
        callback.tb_writer.add_text("gradnorm_rank", json.dumps(settings, indent=1))


# transformers' integration callbacks by class name: how each takes the method's settings into its run's config.
TRACKER_CONFIG = {"WandbCallback": _wandb_config, "MLflowCallback": _mlflow_config,
                  "TensorBoardCallback": _tensorboard_config}


class LoopHost:
    """A plain PyTorch loop as the host: its optimizer and scheduler, and factories for new ones over the resized model.

    `make_optimizer()` builds the loop's optimizer (torch's Adam or AdamW: their state is what is carried over) over the
    model's parameters as they are when it is called; `make_scheduler(optimizer)` builds the same kind of scheduler
    (the old one's state is loaded into it). The reallocation replaces both, so the loop reads `host.optimizer` and
    `host.lr_scheduler` afresh every step. `total_steps`: the loop's optimizer steps, if known (needed by
    `warmup_fraction`; a warm-up that does not end before it is refused at `attach`). `log`: a callable that takes
    the method's figures as a dict (e.g. `wandb.log`); None: the `gradnorm_rank` logger alone. The calls, per
    optimizer step, in the Trainer's order:

        grn = GradNormRank(peft_model, GradNormRankConfig(warmup_steps=W))
        grn.attach(host := LoopHost(optimizer, scheduler, make_optimizer, make_scheduler, total_steps=len(batches)))
        for step, batch in enumerate(batches, start=1):     # step: optimizer steps taken, counted from 1
            peft_model(**batch).loss.backward()             # every micro-batch of the step
            grn.observe_gradients()                         # after the last backward, before clipping (fp16: the
                                                            #   loss scale as argument)
            torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)   # optional
            host.optimizer.step()
            grn.after_optimizer_step()                      # right after the optimizer step, before zero_grad
            host.lr_scheduler.step()
            host.optimizer.zero_grad()
            grn.maybe_reallocate(step)                      # gradients zeroed: at step W the ranks move
        grn.finish(step)                                    # says (and records) a run that never reallocated
    """

    def __init__(self, optimizer, lr_scheduler, make_optimizer, make_scheduler, total_steps=None, log=None):
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.make_optimizer, self.make_scheduler = make_optimizer, make_scheduler
        self.total_steps, self._log = total_steps, log
        self.wrapped_model = None

    def new_optimizer(self):
        return self.make_optimizer()

    def prepare_optimizer(self, optimizer):
        return optimizer

    def new_scheduler(self, optimizer):
        return self.make_scheduler(optimizer)

    def install(self, optimizer, lr_scheduler, wrapped_model):
        self.optimizer, self.lr_scheduler, self.wrapped_model = optimizer, lr_scheduler, wrapped_model

    def log(self, values: dict):
        if self._log is not None:
            self._log(values)


def rewrap_ddp(old, module):
    """A DDP wrapper over the resized model with the old wrapper's settings (its constructor syncs weights)."""
    # torch >= 2.13 names the buffer sync forward_sync_buffers (broadcast_buffers warns as deprecated); older, broadcast_buffers
    buffer_sync = ({"forward_sync_buffers": old.forward_sync_buffers} if hasattr(old, "forward_sync_buffers")
                   else {"broadcast_buffers": old.broadcast_buffers})
    new = torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=old.device_ids,
        output_device=old.output_device,
        process_group=old.process_group,
        bucket_cap_mb=old.bucket_bytes_cap / 2**20,
        **buffer_sync,
        find_unused_parameters=old.find_unused_parameters,
        gradient_as_bucket_view=old.gradient_as_bucket_view,
        static_graph=old.static_graph,
    )
    for hook, state in getattr(old, "_comm_hooks", []):  # e.g. accelerate's fp16/bf16 gradient compression
        new.register_comm_hook(state, hook)
    return new


class GradNormRank(TrainerCallback):
    """Signal, EMA, allocation, resize, optimizer rebuild and checkpoint state of one run.

    `peft_model`: a peft model with a LoRA adapter; `config`: a `GradNormRankConfig` (its budgets, if None, become
    what the adapter holds now). Public entries: `attach(host)` once the optimizer exists; `set_run_length(steps)`
    once the run's length is known (the Trainer's on_train_begin; LoopHost's total_steps); `training_step` (or
    `observe_gradients` from a plain loop) every step; `maybe_reallocate(step)` after every step (the Trainer reaches
    it through `on_step_end`), which calls `reallocate(step)` at the end of the warm-up; `finish(step)` at the end
    (on_train_end); `save`/`load` around checkpoints. Fails at construction on a model without a LoRA adapter (an
    AdaLoRA model included) and if the budget cannot give every matrix `min_rank` or exceeds the caps. The model's
    `save_pretrained` also writes the allocation record, RECORD_FILE, beside adapter_config.json.
    """

    def __init__(self, peft_model, config, adapter_name="default"):
        self.peft_model = peft_model
        self.adapter_name = adapter_name
        _check_lora_adapter(peft_model, adapter_name)
        self.layers = lora_layers(peft_model)
        self.names = list(self.layers)
        if not self.layers:
            raise ValueError(f"GradNormRank needs a peft model with LoRA layers; {type(peft_model).__name__} has none.")
        self.unit_costs = [layer.in_features + layer.out_features for layer in self.layers.values()]
        self.warmup_ranks = [int(layer.r[adapter_name]) for layer in self.layers.values()]  # the signal's shapes
        # A budget left to None is what the adapter holds now: its total rank, or its parameters sum_k r_k (d_in + d_out).
        self.config = config = dataclasses.replace(
            config, rank_budget=config.rank_budget or sum(self.warmup_ranks),
            param_budget=config.param_budget or (sum(r * c for r, c in zip(self.warmup_ranks, self.unit_costs))
                                                 if config.budget_unit == "params" else None))
        self.rank_cap = config.rank_cap(config.rank_budget, len(self.names))  # max_rank resolved; None: uncapped
        self.max_ranks = [
            min(layer.in_features, layer.out_features, self.rank_cap or config.rank_budget) for layer in self.layers.values()
        ]
        if config.budget_unit == "params":
            self.max_ranks = [min(cap, config.param_budget // c) for cap, c in zip(self.max_ranks, self.unit_costs)]
        # Fails here, before training, if the budget cannot hold the floor or exceeds the caps: naming the config field.
        try:
            self._apportion([1.0] * len(self.names))
        except ValueError as error:
            budget = "param_budget" if config.budget_unit == "params" else "rank_budget"
            raise ValueError(f"GradNormRankConfig.{budget} {getattr(config, budget)} (min_rank {config.min_rank}, "
                             f"max_rank {config.max_rank}) does not fit this model's {len(self.names)} LoRA matrices: "
                             f"{error}") from None

        device = next(iter(self.layers.values())).lora_A[adapter_name].weight.device
        self.ema = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.observed_steps = torch.zeros((), dtype=torch.int64, device=device)  # finite steps only
        self.done = False
        self.finished = False  # finish() ran: the end of training was seen
        self.warmup_steps = config.warmup_steps  # warmup_fraction: resolved by set_run_length
        self.total_steps = None  # the run's optimizer steps, once known
        self.final_ranks = None
        self.reallocation_step = None
        self.overhead = MethodOverhead()  # seconds of signal, resize and grown-slice correction
        self.host = None  # set by `attach`
        self.grown = None  # lora_resize.GrownSlices, while their bias correction differs from their tensors'
        self.ddp_wrapper = None  # rebuilt after the resize; the Trainer's loop still holds the old one
        # The signal's hooks (if any) stay until the resize.
        self.signal = make_signal(config.signal, peft_model, self.layers, adapter_name, self.warmup_ranks, config,
                                  self.overhead)
        self.signal.install()
        _write_record_on_save(peft_model, self)

    def attach(self, host):
        """`host`: a `TrainerHost` or `LoopHost`, where `rebuild` finds and replaces the optimizer (and the LoopHost's
        `total_steps`, if given, is the run's length: `set_run_length`)."""
        self.host = host
        if getattr(host, "total_steps", None) is not None:
            self.set_run_length(host.total_steps)
        elif self.config.warmup_fraction is not None and isinstance(host, LoopHost):  # a Trainer's length comes at on_train_begin
            raise ValueError("GradNormRankConfig.warmup_fraction needs the run's length: give the LoopHost "
                             "total_steps=<the loop's optimizer steps>, or use warmup_steps.")

    def set_run_length(self, total_steps: int):
        """Once the run's optimizer steps are known: resolve warmup_fraction, refuse a warm-up the run never reaches
        (the adapter would train as plain LoRA), and warn when it ends with the run's last step (the new ranks are
        never trained)."""
        self.total_steps = total_steps
        if self.config.warmup_fraction is not None:
            self.warmup_steps = round(self.config.warmup_fraction * total_steps)
        if self.done or self.config.calibration_steps is not None:
            return
        asked = (f"warmup_steps {self.warmup_steps}" if self.config.warmup_fraction is None
                 else f"warmup_fraction {self.config.warmup_fraction} ({self.warmup_steps} steps)")
        if not 1 <= self.warmup_steps <= total_steps:
            raise ValueError(f"GradNormRankConfig.{asked} is never reached in a run of {total_steps} optimizer steps: "
                             f"the ranks would never move. Give a warm-up of 1 to {max(total_steps - 1, 1)} steps, or "
                             "a warmup_fraction.")
        if self.warmup_steps == total_steps:
            logger.warning(f"GradNormRankConfig.{asked} ends with the run's last optimizer step: the ranks move after "
                           "it, and the new ranks are never trained.")

    def on_train_begin(self, args, state, control, **kwargs):
        self.set_run_length(state.max_steps)
        self.host.record_settings(self.settings())
        self.host.log({LOG_PREFIX + key: value for key, value in self.settings().items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)})

    # ---- phase 1: signal ----

    def training_step(self, step, model, inputs, num_items_in_batch, accelerator):
        """One micro-batch through the Trainer's `step` (its training_step): through the DDP wrapper rebuilt at the
        resize, if any; after the optimizer step's last micro-batch, observe the gradient."""
        final_micro_batch = accelerator.sync_gradients
        if self.ddp_wrapper is not None:
            model = self.ddp_wrapper
        # The loop skips DDP's all-reduce on non-final micro-batches of its own wrapper; do the same for ours.
        skip_sync = self.ddp_wrapper is not None and not final_micro_batch
        with model.no_sync() if skip_sync else nullcontext():
            loss = step(model, inputs, num_items_in_batch)
        if final_micro_batch:
            scaler = accelerator.scaler
            self.observe_gradients(scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0)
        return loss

    def observe_gradients(self, loss_scale=1.0):
        """Fold this optimizer step's gradient norms into the EMA (once per optimizer step, before clipping)."""
        if self.done:
            return
        start = time.perf_counter()
        norms = self._gradient_norms()
        if norms is None:  # a signal read at the allocation (update_concentration, update_norm, random)
            return
        norms = norms.to(torch.float64) / loss_scale
        finite = torch.isfinite(norms).all()
        # Calibration: the running mean of its observations; the warm-up: the EMA.
        beta = 1.0 - 1.0 / (self.observed_steps + 1) if self.config.calibration_steps else self.config.beta
        # torch.where instead of an `if` keeps the GPU asynchronous: no host sync per step.
        updated = beta * self.ema + (1.0 - beta) * torch.nan_to_num(norms, nan=0.0, posinf=0.0, neginf=0.0)
        self.ema = torch.where(finite, updated, self.ema)
        self.observed_steps += finite.to(torch.int64)
        self.overhead.signal_seconds += time.perf_counter() - start

    def _gradient_norms(self):
        """This observation's value per matrix from the signal (None if it observes nothing)."""
        return self.signal.step_values()

    def _remove_hooks(self):
        self.signal.remove()

    def calibrate(self, batches, loss):
        """Calibration (config.calibration_steps = N): before training, the signal over the first N of `batches`
        (forward with `loss(batch)`, backward, no optimizer step), then allocate and resize. Call it before the
        optimizer exists (the Trainer's: `GradNormRankMixin.train` does) or with a host attached (its optimizer is then
        rebuilt over the resized model). The model is in training mode meanwhile (as in the warm-up); gradients are
        left cleared and the random-number state (torch, CUDA, numpy, python) as it was, so the training run that
        follows draws the same batches and dropout as one without calibration."""
        n = self.config.calibration_steps
        if n is None or self.done:
            raise RuntimeError("GradNormRank.calibrate needs calibration_steps in its config and runs once, before training.")
        rng = _random_state()
        try:
            self._calibrate(batches, loss, n)
        finally:  # the resize's new slices drew from the stream too: restored after it
            _set_random_state(rng)
        logger.warning(f"gradnorm_rank calibrated over {n} batches and allocated ranks before training: "
                       f"{min(self.final_ranks.values())}..{max(self.final_ranks.values())}, total {sum(self.final_ranks.values())}.")

    def _calibrate(self, batches, loss, n):
        """calibrate's work: the signal over n batches, then allocate, resize (and rebuild, with an optimizer)."""
        start, signal_before = time.perf_counter(), self.overhead.signal_seconds
        training = self.peft_model.training
        self.peft_model.train()
        try:
            seen = 0
            for batch in batches:
                if seen == n:
                    break
                self.peft_model.zero_grad(set_to_none=True)
                loss(batch).backward()
                self.observe_gradients()
                seen += 1
        finally:
            self.peft_model.zero_grad(set_to_none=True)
            self.peft_model.train(training)
        if seen < n:
            raise ValueError(f"calibration_steps {n}: the batches gave only {seen}.")
        if _distributed():  # each process saw its own shard: the mean of their means, the same on every process
            dist.all_reduce(self.ema)
            self.ema /= dist.get_world_size()
        # Everything calibration ran is the signal's cost (the hooks' seconds inside it are not counted twice).
        self.overhead.signal_seconds = signal_before + time.perf_counter() - start
        start = time.perf_counter()
        self.final_ranks = self.allocate()
        resized = self.resize(self.final_ranks)
        if self.host is not None and self.host.optimizer is not None:
            self.rebuild(resized)
        self.reallocation_step = 0
        self.overhead.resize_seconds += time.perf_counter() - start

    # ---- phases 2-4: reallocation ----

    def on_step_end(self, args, state, control, **kwargs):
        # Gradients were zeroed just before this event: a clean moment to change the parameters.
        self.maybe_reallocate(state.global_step)
        if state.global_step >= state.max_steps:
            self.finish(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.finish(state.global_step)  # a run stopped early (e.g. by EarlyStoppingCallback)

    def maybe_reallocate(self, step: int):
        """After optimizer step number `step` (counted from 1) and `zero_grad`: reallocate, once, when the warm-up is
        over."""
        if self.done:
            return
        if self.config.calibration_steps is not None:
            raise RuntimeError("GLoRA has calibration_steps but trained a step uncalibrated: call calibrate() before "
                               "training (GradNormRankMixin.train does).")
        if step >= self.warmup_steps:
            self.reallocate(step)

    def finish(self, step: int):
        """At the end of training, after the last step (`step`): log the outcome; a run that ended before its warm-up
        did is said (a warning), logged and recorded (`summary()["reallocated"]` False): its adapter trained as plain
        LoRA with its starting ranks."""
        if self.finished:
            return
        self.finished = True
        if not self.done:
            logger.warning(f"gradnorm_rank did not reallocate: the run ended at step {step}, before the warm-up of "
                           f"{self.warmup_steps} steps was over; the adapter trained as plain LoRA with its starting "
                           "ranks.")
        if self.host is not None:
            self.host.log({LOG_PREFIX + "reallocated": int(self.done),
                           **{LOG_PREFIX + key: value for key, value in self.overhead.record().items()}})

    def reallocate(self, step: int):
        """Allocate -> resize -> rebuild, once. Call between optimizer steps, with gradients zeroed."""
        if self.host is None:
            raise RuntimeError("GLoRA.reallocate needs a host with the optimizer: call attach() first.")
        start = time.perf_counter()
        self.final_ranks = self.allocate()
        resized = self.resize(self.final_ranks)
        self.rebuild(resized)
        self.reallocation_step = step
        self.overhead.resize_seconds += time.perf_counter() - start
        self._report_reallocation(step, resized)

    def _report_reallocation(self, step, resized):
        """The reallocation in the `gradnorm_rank` log (one line: the ranks' spread, the top matrices, the seconds)
        and in the host's log (the Trainer's: LOG_PREFIX keys); a warning if one matrix took more than warn_share."""
        ranks = sorted(self.final_ranks.values())
        top = sorted(self.final_ranks.items(), key=lambda item: -item[1])[:3]
        logger.warning(
            f"gradnorm_rank reallocated ranks at step {step}: {len(resized)} of {len(ranks)} matrices resized "
            f"({sum(r.new_rank > r.old_rank for r in resized)} grown); ranks min {ranks[0]}, median "
            f"{statistics.median(ranks):g}, max {ranks[-1]}, total {sum(ranks)}; top: "
            f"{', '.join(f'{name} {rank}' for name, rank in top)}; {self.overhead.resize_seconds:.2f} s.")
        shares = self.budget_shares()
        name, share = max(shares.items(), key=lambda item: item[1])
        if self.config.warn_share is not None and share > self.config.warn_share:
            logger.warning(f"gradnorm_rank gave {name} {share:.0%} of the {self.config.budget_unit} budget (rank "
                           f"{self.final_ranks[name]}), more than warn_share {self.config.warn_share:g}; a lower "
                           f"max_rank (now {self.config.max_rank!r}: {self.rank_cap}) caps it.")
        self.host.log({
            LOG_PREFIX + "reallocation_step": step, LOG_PREFIX + "rank_min": ranks[0],
            LOG_PREFIX + "rank_median": statistics.median(ranks), LOG_PREFIX + "rank_max": ranks[-1],
            LOG_PREFIX + "rank_total": sum(ranks), LOG_PREFIX + "matrices_resized": len(resized),
            LOG_PREFIX + "max_budget_share": share,
            **{LOG_PREFIX + key: value for key, value in self.overhead.record().items()},
        })

    def budget_shares(self) -> dict:
        """Each matrix's share of the budget after the reallocation: r_k / rank_budget, or under budget_unit params
        r_k (d_in + d_out) / the parameters the ranks spend."""
        costs = [1] * len(self.names) if self.config.budget_unit == "rank" else self.unit_costs
        spent = [self.final_ranks[name] * cost for name, cost in zip(self.names, costs)]
        return {name: value / sum(spent) for name, value in zip(self.names, spent)}

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.after_optimizer_step()

    def after_optimizer_step(self):
        """Right after optimizer.step(): give the slices the resize added Adam's bias correction counted from the
        resize (`lora_resize.correct_grown_slices`), until it no longer differs from their tensor's."""
        if self.grown is not None:
            start = time.perf_counter()
            params = {name: (layer.lora_A[self.adapter_name].weight, layer.lora_B[self.adapter_name].weight)
                      for name, layer in self.layers.items() if name in self.grown.kept}
            if not correct_grown_slices(self.grown, params, self.host.optimizer):
                self.grown = None
            self.overhead.grown_slice_seconds += time.perf_counter() - start

    def allocate(self) -> dict:
        """Integer ranks from the EMA scores: the same on every process (checked under DDP)."""
        ranks = self._apportion(list(self.scores().values()))
        if _distributed():
            mine = torch.tensor(ranks, dtype=torch.int64, device=self.ema.device)
            reference = mine.clone()
            dist.broadcast(reference, src=0)
            if not torch.equal(mine, reference):
                raise RuntimeError(
                    f"GLoRA ranks differ between processes (rank {dist.get_rank()}): the gradient signal was not "
                    "all-reduced. Refusing to continue with replicas of different shapes."
                )
        return dict(zip(self.names, ranks))

    def _apportion(self, scores) -> list:
        """Scores -> integer ranks under the config's budget: a sum of ranks, or of parameters r_k (d_in + d_out)."""
        config = self.config
        if config.budget_unit == "params":
            return apportion_parameters(scores, self.unit_costs, config.param_budget, min_rank=config.min_rank,
                                        max_ranks=self.max_ranks)
        return apportion_ranks(scores, config.rank_budget, min_rank=config.min_rank, max_ranks=self.max_ranks)

    def resize(self, ranks: dict) -> list:
        """Resize the LoRA layers in place to `ranks`; the warm-up's signal hooks go. Returns the resized layers."""
        self._remove_hooks()
        self.done = True
        return resize_to_ranks(self.peft_model, ranks, self.adapter_name)

    def rebuild(self, resized):
        """A new optimizer over the resized model with the AdamW state carried over (`lora_resize`), the LR schedule
        continued where it was, and a new DDP wrapper that knows the new parameters."""
        host = self.host
        old_optimizer, old_scheduler = host.optimizer, host.lr_scheduler
        optimizer = host.new_optimizer()
        carry_optimizer_state(old_optimizer.state, optimizer, resized)
        if self.config.adam_rule == "slice_bias_correction":
            self.grown = grown_slices(resized, old_optimizer.state)
        optimizer = host.prepare_optimizer(optimizer)
        scheduler = host.new_scheduler(optimizer)
        scheduler.load_state_dict(old_scheduler.state_dict())
        for group, lr in zip(optimizer.param_groups, old_scheduler.get_last_lr()):
            group["lr"] = lr
        wrapped = host.wrapped_model
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            wrapped = self.ddp_wrapper = rewrap_ddp(wrapped, self.peft_model)
        host.install(optimizer, scheduler, wrapped)

    # ---- record ----

    def scores(self) -> dict:
        """s_k = n_k / sum(n) per module name, n_k the EMA g_k divided as config.score_norm says."""
        values = self.signal.final_values(self.ema).cpu()
        normalised = self.signal.permute([float(g) / self._norm_divisor(k) for k, g in enumerate(values)])
        total = sum(normalised)
        return {name: (n / total if total > 0 else 0.0) for name, n in zip(self.names, normalised)}

    def _norm_divisor(self, k: int) -> float:
        if self.config.score_norm == "per_rank_unit":
            return float(self.unit_costs[k])
        if self.config.score_norm == "per_entry":  # RMS of the entries the signal's norm is taken over
            return float(self.signal.entries(k)) ** 0.5
        if self.config.score_norm == "per_sqrt_d_in":
            return float(self.layers[self.names[k]].in_features) ** 0.5
        return 1.0

    def settings(self) -> dict:
        """The config as this run resolved it, JSON-ready: its fields, warmup_steps resolved from warmup_fraction, the
        budgets from the adapter, and `rank_cap`, max_rank in ranks (None: uncapped)."""
        return {**dataclasses.asdict(self.config), "warmup_steps": self.warmup_steps, "rank_cap": self.rank_cap}

    def summary(self) -> dict:
        """What the method did, JSON-ready: the signal settings, the warm-up, the rank cap, whether and at which step
        it reallocated (`reallocated` False: it never did, the adapter trained as plain LoRA) and the seconds it
        spent (`MethodOverhead.record`). Per-module scores are `scores()`."""
        return {
            "signal": self.config.signal, "score_norm": self.config.score_norm, "beta": self.config.beta,
            "warmup_steps": self.warmup_steps, "warmup_fraction": self.config.warmup_fraction, **self.signal_settings(),
            "max_rank": self.config.max_rank, "rank_cap": self.rank_cap, "warn_share": self.config.warn_share,
            "reallocated": self.done, "reallocation_step": self.reallocation_step, **self.overhead.record(),
        }

    def allocation_record(self) -> dict:
        """RECORD_FILE's content: the settings, the step, and per module its score, starting and current rank."""
        return {
            "settings": self.settings(), "reallocated": self.done, "reallocation_step": self.reallocation_step,
            **self.overhead.record(),
            "modules": {name: {"score": score, "initial_rank": initial, "rank": int(self.layers[name].r[self.adapter_name])}
                        for (name, score), initial in zip(self.scores().items(), self.warmup_ranks)},
        }

    # ---- checkpointing ----

    def on_save(self, args, state, control, **kwargs):
        # Called right after the Trainer wrote checkpoint-<step>: add the state GLoRA needs to resume from it.
        if args.should_save:
            self.save(Path(args.output_dir, f"checkpoint-{state.global_step}"))

    def save(self, folder):
        path, tmp = Path(folder, STATE_FILE), Path(folder, STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self.state_dict(), indent=1))
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated state that looks whole

    def load(self, folder):
        """Before the Trainer loads a checkpoint's weights and optimizer state: they have the checkpoint's ranks."""
        state_file = Path(folder, STATE_FILE)
        if not state_file.is_file():
            raise FileNotFoundError(f"{state_file} is missing: this checkpoint was not written by a GLoRA run.")
        self.load_state_dict(json.loads(state_file.read_text()))

    def signal_settings(self) -> dict:
        """The signal's timing and settings beyond the signal's name, as recorded."""
        return {name: getattr(self.config, name) for name in
                ("calibration_steps", "signal_seed", "shuffle_base", "signal_damping", "top_r")}

    def state_dict(self) -> dict:
        return {
            "signal": self.config.signal, **self.signal_settings(),
            "beta": self.config.beta,
            "warmup_steps": self.warmup_steps,
            "rank_budget": self.config.rank_budget,
            "budget_unit": self.config.budget_unit,
            "param_budget": self.config.param_budget,
            "names": self.names,
            "ema": self.ema.cpu().tolist(),
            "observed_steps": int(self.observed_steps),
            "done": self.done,
            "final_ranks": self.final_ranks,
            "reallocation_step": self.reallocation_step,
            **self.overhead.record(),
            "grown": dataclasses.asdict(self.grown) if self.grown is not None else None,
        }

    def load_state_dict(self, state):
        """Restore the warm-up state; after a reallocation, resize the (fresh) model to the saved ranks so the
        checkpoint's weights and optimizer state fit it."""
        saved_budget = (state["rank_budget"], state.get("budget_unit", "rank"), state.get("param_budget"))
        if state["names"] != self.names or saved_budget != (self.config.rank_budget, self.config.budget_unit, self.config.param_budget):
            raise ValueError("The checkpoint's GLoRA state is for other modules or another budget.")
        self.ema = torch.tensor(state["ema"], dtype=torch.float64, device=self.ema.device)
        self.observed_steps = torch.tensor(state["observed_steps"], dtype=torch.int64, device=self.ema.device)
        if "method_overhead_signal_seconds" in state:
            self.overhead = MethodOverhead.from_record(state)
        else:  # written before the overhead was split: the old hook_seconds (signal and grown-slice correction
            # together) counts as signal, the old resize_seconds as resize
            self.overhead = MethodOverhead(signal_seconds=state["hook_seconds"], resize_seconds=state["resize_seconds"])
        self.grown = GrownSlices(**state["grown"]) if state.get("grown") else None
        if state["done"]:
            self.final_ranks = state["final_ranks"]
            self.reallocation_step = state["reallocation_step"]
            self.resize(self.final_ranks)



def _check_lora_adapter(peft_model, adapter_name):
    """One line for a model the method cannot resize: no peft adapter of that name, or a peft tuner other than LoRA
    (AdaLoRA's layers hold their A and B as bare Parameters, and it masks ranks itself)."""
    configs = getattr(peft_model, "peft_config", None)
    if not isinstance(configs, dict) or adapter_name not in configs:
        raise ValueError(f"GradNormRank needs a peft model with a LoRA adapter {adapter_name!r} (get_peft_model with a "
                         f"LoraConfig); {type(peft_model).__name__} has none.")
    peft_type = getattr(configs[adapter_name].peft_type, "value", configs[adapter_name].peft_type)
    if peft_type != "LORA":
        raise ValueError(f"GradNormRank resizes LoRA adapters only; adapter {adapter_name!r} is {peft_type} "
                         f"({type(configs[adapter_name]).__name__}): build it with a peft LoraConfig.")


def _write_record_on_save(peft_model, method):
    """Make `peft_model.save_pretrained` (the Trainer's save_model and checkpoints included) also write `method`'s
    allocation record, RECORD_FILE, beside the adapter's adapter_config.json; the folder still loads with plain peft.
    The latest GradNormRank built on the model is the one recorded."""
    save_pretrained = type(peft_model).save_pretrained.__get__(peft_model)

    def save_with_record(save_directory, *args, **kwargs):
        save_pretrained(save_directory, *args, **kwargs)
        selected = kwargs.get("selected_adapters")
        if kwargs.get("is_main_process", True) and (selected is None or method.adapter_name in selected):
            folder = Path(save_directory)
            if method.adapter_name != "default":
                folder = folder / method.adapter_name  # peft's folder for a named adapter
            (folder / RECORD_FILE).write_text(json.dumps(method.allocation_record(), indent=1))

    peft_model.save_pretrained = save_with_record
