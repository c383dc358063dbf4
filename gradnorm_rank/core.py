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

Signals (`config.signal`), with their cost (measured figures: docs/benchmarks.md):
- `lora_b`: ||grad B||_F. One fused norm over the B gradients per step; no extra memory.
- `lora_ab`: sqrt(||grad A||^2 + ||grad B||^2). Twice the norms of `lora_b`, still negligible.
- `delta`: ||dL/dW||_F, the gradient of the full d_out x d_in matrix that LoRA's update adds to: sum over tokens
  of (output gradient) (layer input)^T. Forward/backward hooks on every adapted layer compute it during the
  warm-up only. It costs one extra d_out x d_in x tokens matmul per adapted matrix per micro-batch (about the
  weight-gradient cost of full fine-tuning of those matrices) and a fp32 buffer as large as the adapted matrices,
  all-reduced once per step under DDP.
"""

import dataclasses
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.utils import logging

from .lora_resize import (
    GrownSlices,
    carry_optimizer_state,
    correct_grown_slices,
    grown_slices,
    lora_layers,
    resize_to_ranks,
)
from .rank_allocation import apportion_parameters, apportion_ranks

logger = logging.get_logger(__name__)

STATE_FILE = "glora_state.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _norms(params):
    """Frobenius norms of the parameters' gradients in one fused call (0 where a gradient is missing)."""
    grads = [p.grad if p.grad is not None else torch.zeros(1, device=p.device) for p in params]
    return torch.stack(torch._foreach_norm(grads)).float()


@dataclass
class MethodOverhead:
    """Wall-clock seconds the method's own work adds to training, by part, each measured where it runs: `signal`
    (observe_gradients and the `delta` signal's backward hooks, during the warm-up), `resize` (reallocate: allocation,
    resize and optimizer rebuild) and `grown_slice` (after_optimizer_step: Adam's bias correction of the slices the
    resize added). `record()` names them as every record and reader does: method_overhead_seconds (the total) and
    method_overhead_<part>_seconds."""

    signal_seconds: float = 0.0
    resize_seconds: float = 0.0
    grown_slice_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.signal_seconds + self.resize_seconds + self.grown_slice_seconds

    def record(self) -> dict:
        parts = {f"method_overhead_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"method_overhead_seconds": self.seconds, **parts}

    @classmethod
    def unsplit_record(cls, seconds: float) -> dict:
        """The record of a method whose overhead is one measured total (its parts null: not measured apart)."""
        return {"method_overhead_seconds": seconds, **{f"method_overhead_{f.name}": None for f in dataclasses.fields(cls)}}

    @classmethod
    def from_record(cls, record: dict) -> "MethodOverhead":
        return cls(**{f.name: record[f"method_overhead_{f.name}"] for f in dataclasses.fields(cls)})


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


class LoopHost:
    """A plain PyTorch loop as the host: its optimizer and scheduler, and factories for new ones over the resized model.

    `make_optimizer()` builds the loop's optimizer (torch's Adam or AdamW: their state is what is carried over) over the
    model's parameters as they are when it is called; `make_scheduler(optimizer)` builds the same kind of scheduler
    (the old one's state is loaded into it). The reallocation replaces both, so the loop reads `host.optimizer` and
    `host.lr_scheduler` afresh every step. The calls, per optimizer step, in the Trainer's order:

        grn = GradNormRank(peft_model, GradNormRankConfig(warmup_steps=W))
        grn.attach(host := LoopHost(optimizer, scheduler, make_optimizer, make_scheduler))
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
    """

    def __init__(self, optimizer, lr_scheduler, make_optimizer, make_scheduler):
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.make_optimizer, self.make_scheduler = make_optimizer, make_scheduler
        self.wrapped_model = None

    def new_optimizer(self):
        return self.make_optimizer()

    def prepare_optimizer(self, optimizer):
        return optimizer

    def new_scheduler(self, optimizer):
        return self.make_scheduler(optimizer)

    def install(self, optimizer, lr_scheduler, wrapped_model):
        self.optimizer, self.lr_scheduler, self.wrapped_model = optimizer, lr_scheduler, wrapped_model


def rewrap_ddp(old, module):
    """A DDP wrapper over the resized model with the old wrapper's settings (its constructor syncs weights)."""
    new = torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=old.device_ids,
        output_device=old.output_device,
        process_group=old.process_group,
        bucket_cap_mb=old.bucket_bytes_cap / 2**20,
        broadcast_buffers=old.broadcast_buffers,
        find_unused_parameters=old.find_unused_parameters,
        gradient_as_bucket_view=old.gradient_as_bucket_view,
        static_graph=old.static_graph,
    )
    for hook, state in getattr(old, "_comm_hooks", []):  # e.g. accelerate's fp16/bf16 gradient compression
        new.register_comm_hook(state, hook)
    return new


class GradNormRank(TrainerCallback):
    """Signal, EMA, allocation, resize, optimizer rebuild and checkpoint state of one run.

    `peft_model`: a peft model with LoRA layers; `config`: a `GradNormRankConfig` (its budgets, if None, become what
    the adapter holds now). Public entries: `attach(host)` once the optimizer exists; `training_step` (or
    `observe_gradients` from a plain loop) every step; `maybe_reallocate(step)` after every step (the Trainer reaches
    it through `on_step_end`), which calls `reallocate(step)` at the end of the warm-up; `save`/`load` around
    checkpoints. Fails at construction if the budget cannot give every matrix `min_rank` or exceeds the caps.
    """

    def __init__(self, peft_model, config, adapter_name="default"):
        self.peft_model = peft_model
        self.adapter_name = adapter_name
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
        self.max_ranks = [
            min(layer.in_features, layer.out_features, config.max_rank or config.rank_budget) for layer in self.layers.values()
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
        self.final_ranks = None
        self.reallocation_step = None
        self.overhead = MethodOverhead()  # seconds of signal, resize and grown-slice correction
        self.host = None  # set by `attach`
        self.grown = None  # lora_resize.GrownSlices, while their bias correction differs from their tensors'
        self.ddp_wrapper = None  # rebuilt after the resize; the Trainer's loop still holds the old one
        self._delta_buffers = None
        self._hooks = []
        if config.signal == "delta":
            self._install_delta_hooks()

    def attach(self, host):
        """`host`: a `TrainerHost` or `LoopHost`, where `rebuild` finds and replaces the optimizer."""
        self.host = host

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
        norms = self._gradient_norms().to(torch.float64) / loss_scale
        finite = torch.isfinite(norms).all()
        # torch.where instead of an `if` keeps the GPU asynchronous: no host sync per step.
        updated = self.config.beta * self.ema + (1.0 - self.config.beta) * torch.nan_to_num(norms, nan=0.0, posinf=0.0, neginf=0.0)
        self.ema = torch.where(finite, updated, self.ema)
        self.observed_steps += finite.to(torch.int64)
        self.overhead.signal_seconds += time.perf_counter() - start

    def _gradient_norms(self):
        a = self.adapter_name
        if self.config.signal == "delta":
            buffers = self._delta_buffers
            if _distributed():
                for buffer in buffers:  # DDP averages gradients; do the same for these
                    dist.all_reduce(buffer)
                    buffer /= dist.get_world_size()
            norms = torch.stack(torch._foreach_norm(buffers))
            for buffer in buffers:
                buffer.zero_()
            return norms
        b_norms = _norms([layer.lora_B[a].weight for layer in self.layers.values()])
        if self.config.signal == "lora_b":
            return b_norms
        a_norms = _norms([layer.lora_A[a].weight for layer in self.layers.values()])
        return torch.sqrt(a_norms**2 + b_norms**2)

    def _install_delta_hooks(self):
        self._delta_buffers = []
        for layer in self.layers.values():
            base = layer.get_base_layer()
            buffer = torch.zeros(base.out_features, base.in_features, dtype=torch.float32, device=base.weight.device)
            self._delta_buffers.append(buffer)
            self._hooks.append(layer.register_forward_hook(self._make_delta_hook(buffer)))

    def _make_delta_hook(self, buffer):
        def forward_hook(module, args, output):
            if not torch.is_grad_enabled() or not output.requires_grad:
                return
            x = args[0].detach()

            def grad_hook(grad_output):
                start = time.perf_counter()
                # dL/dW = sum over tokens of grad_output (d_out) outer input (d_in). Under bf16 autocast the matmul
                # stays in bf16 (tensor cores, fp32 accumulation); fp16 would overflow with a loss scale, so fp32.
                dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
                g = grad_output.reshape(-1, grad_output.shape[-1]).to(dtype)
                buffer.add_((g.T @ x.reshape(-1, x.shape[-1]).to(dtype)).float())
                self.overhead.signal_seconds += time.perf_counter() - start

            output.register_hook(grad_hook)

        return forward_hook

    def _remove_hooks(self):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._delta_buffers = None

    # ---- phases 2-4: reallocation ----

    def on_step_end(self, args, state, control, **kwargs):
        # Gradients were zeroed just before this event: a clean moment to change the parameters.
        self.maybe_reallocate(state.global_step)

    def maybe_reallocate(self, step: int):
        """After optimizer step number `step` (counted from 1) and `zero_grad`: reallocate, once, when the warm-up is
        over."""
        if not self.done and step >= self.config.warmup_steps:
            self.reallocate(step)

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
        grown = sum(r.new_rank > r.old_rank for r in resized)
        logger.warning(
            f"GLoRA reallocated ranks at step {step}: {len(resized)} layers resized ({grown} grown), "
            f"ranks {min(self.final_ranks.values())}..{max(self.final_ranks.values())}, total {sum(self.final_ranks.values())}."
        )

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
        normalised = [float(g) / self._norm_divisor(k) for k, g in enumerate(self.ema.cpu())]
        total = sum(normalised)
        return {name: (n / total if total > 0 else 0.0) for name, n in zip(self.names, normalised)}

    def _norm_divisor(self, k: int) -> float:
        if self.config.score_norm == "per_rank_unit":
            return float(self.unit_costs[k])
        if self.config.score_norm == "per_entry":  # RMS of the entries the signal's norm is taken over
            layer, rank = self.layers[self.names[k]], self.warmup_ranks[k]
            entries = {"lora_b": layer.out_features * rank, "lora_ab": (layer.out_features + layer.in_features) * rank,
                       "delta": layer.out_features * layer.in_features}[self.config.signal]
            return float(entries) ** 0.5
        return 1.0

    def summary(self) -> dict:
        """What the method did, JSON-ready: the signal settings, the warm-up, the step it reallocated at (None before)
        and the seconds it spent (`MethodOverhead.record`). Per-module scores are `scores()`."""
        return {
            "signal": self.config.signal, "score_norm": self.config.score_norm, "beta": self.config.beta,
            "warmup_steps": self.config.warmup_steps,
            "reallocation_step": self.reallocation_step, **self.overhead.record(),
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

    def state_dict(self) -> dict:
        return {
            "signal": self.config.signal,
            "beta": self.config.beta,
            "warmup_steps": self.config.warmup_steps,
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

