"""GLoRA: gradient-norm aware rank allocation for LoRA.

During a warm-up of `warmup_steps` optimizer steps the callback keeps, for every adapted matrix k, an
EMA of the norm of its gradient, g_k <- beta * g_k + (1 - beta) * n_k. At the end of the warm-up the
total rank is re-apportioned in proportion to s_k = g_k / sum(g) (`rank_allocation.apportion_ranks`),
every LoRA layer whose rank changes is resized in place (`lora_resize`), and the Trainer rebuilds its
optimizer (`on_resize`, set by `GlueTrainer`). Training then continues with the new ranks.

n_k is the norm of the true gradient of the step: the Trainer calls `observe_gradients` after the last
micro-batch's backward (gradients summed over accumulation and all-reduced by DDP) and before clipping,
and passes the fp16 loss scale to divide by. A step with a non-finite norm leaves the EMA unchanged.
The EMA starts at zero and is not bias-corrected: the bias is the same factor for every module, so the
shares s_k are unaffected.

Signals (`--glora_signal`), with their cost:
- `lora_b`: ||grad B||_F. One fused norm over the B gradients per step; no extra memory.
- `lora_ab`: sqrt(||grad A||^2 + ||grad B||^2). Twice the norms of `lora_b`, still negligible.
- `delta`: ||dL/dW||_F, the gradient of the full d_out x d_in matrix that LoRA's update adds to:
  sum over tokens of (output gradient) (layer input)^T. Forward/backward hooks on every adapted layer
  compute it during the warm-up only (removed afterwards). It costs one extra d_out x d_in x tokens matmul
  per adapted matrix per micro-batch (about the weight-gradient cost of full fine-tuning of those matrices)
  and a fp32 buffer as large as the adapted matrices, all-reduced once per step under DDP. Measured
  (docs/benchmarks.md, CPU, MiniLM): +34 % per warm-up step; buffers 40 MiB (MiniLM), 324 MiB (DeBERTa-v3-base).
"""

import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.utils import logging

from adapters import lora_layers
from lora_resize import resize_to_ranks
from rank_allocation import apportion_ranks

logger = logging.get_logger(__name__)

SIGNALS = ("lora_b", "lora_ab", "delta")


def _norms(params):
    """Frobenius norms of the parameters' gradients in one fused call (0 where a gradient is missing)."""
    grads = [p.grad if p.grad is not None else torch.zeros(1, device=p.device) for p in params]
    return torch.stack(torch._foreach_norm(grads)).float()


class GLoRACallback(TrainerCallback):
    def __init__(self, peft_model, rank_budget, warmup_steps, beta=0.9, signal="lora_b", min_rank=1, max_rank=None,
                 adapter_name="default"):
        if signal not in SIGNALS:
            raise ValueError(f"--glora_signal must be one of {SIGNALS}, got {signal!r}.")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"--glora_beta must be in [0, 1), got {beta}.")
        self.peft_model = peft_model
        self.adapter_name = adapter_name
        self.layers = lora_layers(peft_model)
        self.names = list(self.layers)
        self.rank_budget = rank_budget
        self.warmup_steps = warmup_steps
        self.beta = beta
        self.signal = signal
        self.min_rank = min_rank
        self.max_ranks = [
            min(layer.in_features, layer.out_features, max_rank or rank_budget) for layer in self.layers.values()
        ]
        # Fails here, before training, if the budget cannot hold the floor or exceeds the caps.
        apportion_ranks([1.0] * len(self.names), rank_budget, min_rank, self.max_ranks)

        device = next(iter(self.layers.values())).lora_A[adapter_name].weight.device
        self.ema = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.observed_steps = torch.zeros((), dtype=torch.int64, device=device)  # finite steps only
        self.done = False
        self.final_ranks = None
        self.reallocation_step = None
        self.hook_seconds = 0.0  # signal hooks during the warm-up
        self.resize_seconds = 0.0  # allocation + resize + optimizer rebuild
        self.on_resize = None  # set by the Trainer: rebuilds optimizer (and DDP wrapper) after the resize
        self._delta_buffers = None
        self._hooks = []
        if signal == "delta":
            self._install_delta_hooks()

    # ---- signal ----

    def observe_gradients(self, loss_scale=1.0):
        """Fold this optimizer step's gradient norms into the EMA (called once per optimizer step)."""
        if self.done:
            return
        start = time.perf_counter()
        norms = self._gradient_norms().to(torch.float64) / loss_scale
        finite = torch.isfinite(norms).all()
        # torch.where instead of an `if` keeps the GPU asynchronous: no host sync per step.
        updated = self.beta * self.ema + (1.0 - self.beta) * torch.nan_to_num(norms, nan=0.0, posinf=0.0, neginf=0.0)
        self.ema = torch.where(finite, updated, self.ema)
        self.observed_steps += finite.to(torch.int64)
        self.hook_seconds += time.perf_counter() - start

    def _gradient_norms(self):
        a = self.adapter_name
        if self.signal == "delta":
            buffers = self._delta_buffers
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                for buffer in buffers:  # DDP averages gradients; do the same for these
                    dist.all_reduce(buffer)
                    buffer /= dist.get_world_size()
            norms = torch.stack(torch._foreach_norm(buffers))
            for buffer in buffers:
                buffer.zero_()
            return norms
        b_norms = _norms([layer.lora_B[a].weight for layer in self.layers.values()])
        if self.signal == "lora_b":
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
                self.hook_seconds += time.perf_counter() - start

            output.register_hook(grad_hook)

        return forward_hook

    def _remove_hooks(self):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._delta_buffers = None

    # ---- allocation ----

    def allocate(self):
        """Integer ranks from the EMA scores: the same on every process (checked under DDP)."""
        ranks = apportion_ranks(self.ema.cpu().tolist(), self.rank_budget, self.min_rank, self.max_ranks)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            mine = torch.tensor(ranks, dtype=torch.int64, device=self.ema.device)
            reference = mine.clone()
            dist.broadcast(reference, src=0)
            if not torch.equal(mine, reference):
                raise RuntimeError(
                    f"GLoRA ranks differ between processes (rank {dist.get_rank()}): the gradient signal was not "
                    "all-reduced. Refusing to continue with replicas of different shapes."
                )
        return dict(zip(self.names, ranks))

    def on_step_end(self, args, state, control, **kwargs):
        if self.done or state.global_step < self.warmup_steps:
            return
        # Gradients were zeroed just before this event: a clean moment to change the parameters.
        start = time.perf_counter()
        self.final_ranks = self.allocate()
        self._remove_hooks()
        resized = resize_to_ranks(self.peft_model, self.final_ranks, self.adapter_name)
        self.done = True
        self.reallocation_step = state.global_step
        if self.on_resize is not None:
            self.on_resize(resized)
        self.resize_seconds += time.perf_counter() - start
        grown = sum(r.new_rank > r.old_rank for r in resized)
        logger.warning(
            f"GLoRA reallocated ranks at step {state.global_step}: {len(resized)} layers resized ({grown} grown), "
            f"ranks {min(self.final_ranks.values())}..{max(self.final_ranks.values())}, total {sum(self.final_ranks.values())}."
        )

    def scores(self):
        """s_k = g_k / sum(g) per module name."""
        ema = self.ema.cpu()
        total = float(ema.sum())
        return {name: (float(g) / total if total > 0 else 0.0) for name, g in zip(self.names, ema)}

    # ---- checkpointing ----

    def state_dict(self):
        return {
            "signal": self.signal,
            "beta": self.beta,
            "warmup_steps": self.warmup_steps,
            "rank_budget": self.rank_budget,
            "names": self.names,
            "ema": self.ema.cpu().tolist(),
            "observed_steps": int(self.observed_steps),
            "done": self.done,
            "final_ranks": self.final_ranks,
            "reallocation_step": self.reallocation_step,
            "hook_seconds": self.hook_seconds,
            "resize_seconds": self.resize_seconds,
        }

    def load_state_dict(self, state):
        """Restore the warm-up state; after a reallocation, resize the (fresh) model to the saved ranks
        so the checkpoint's weights and optimizer state fit it."""
        if state["names"] != self.names or state["rank_budget"] != self.rank_budget:
            raise ValueError("The checkpoint's GLoRA state is for other modules or another rank budget.")
        self.ema = torch.tensor(state["ema"], dtype=torch.float64, device=self.ema.device)
        self.observed_steps = torch.tensor(state["observed_steps"], dtype=torch.int64, device=self.ema.device)
        self.hook_seconds = state["hook_seconds"]
        self.resize_seconds = state["resize_seconds"]
        if state["done"]:
            self.final_ranks = state["final_ranks"]
            self.reallocation_step = state["reallocation_step"]
            self._remove_hooks()
            resize_to_ranks(self.peft_model, self.final_ranks, self.adapter_name)
            self.done = True
