"""Which matrices get adapters, the peft configs of LoRA and AdaLoRA, and what a run's adapter holds.

Every method adapts the same matrices under one budget (plan.RunPlan): by default the total rank R_total = sum of
ranks over adapted matrices, or under --budget_unit params the adapter parameters sum_k r_k (d_in + d_out); a
--rank_pattern run holds fixed ranks within it. So differences in accuracy come from how the budget is spent, not
how much there is.
"""

import contextlib
import dataclasses
import re
import time
from pathlib import Path

import torch
from peft import AdaLoraConfig, EvaConfig, LoraConfig, TaskType
from transformers import TrainerCallback

from gradnorm_rank import MethodOverhead, lora_layers, pattern_key
from harness.arguments import MATRIX_PATTERNS
from harness.glue_tasks import GLUE_TASKS
from harness.records import ModuleRanks, RankRecord

_LAYER_RE = re.compile(r"\.layer\.(\d+)\.(.+)$")


def module_matrix(name: str):
    """(layer index, matrix type) of a module path, or None if it is not an adaptable matrix."""
    match = _LAYER_RE.search(name)
    if match is None:
        return None
    for matrix, pattern in MATRIX_PATTERNS.items():
        if re.fullmatch(pattern, match.group(2)):
            return int(match.group(1)), matrix
    return None


def resolve_targets(model, matrix_types) -> list:
    """Full module paths of every Linear of the requested matrix types, in model order."""
    unknown = set(matrix_types) - set(MATRIX_PATTERNS)
    if unknown:
        raise ValueError(f"Unknown --target_modules {sorted(unknown)}; choose from {list(MATRIX_PATTERNS)}.")
    targets = []
    for name, module in model.named_modules():
        found = module_matrix(name)
        if found is not None and found[1] in matrix_types and hasattr(module, "weight") and module.weight.ndim == 2:
            targets.append(name)
    if not targets:
        raise ValueError(
            f"No module of {type(model).__name__} matches --target_modules {list(matrix_types)}: this architecture's "
            "layer names are not known (BERT- and DeBERTa-style encoders are)."
        )
    found_types = {module_matrix(name)[1] for name in targets}
    missing = set(matrix_types) - found_types
    if missing:
        raise ValueError(f"{type(model).__name__} has no {sorted(missing)} matrices under known names.")
    return targets


def head_modules(model) -> list:
    """The task head, trained in full by every method: the classifier, and the pooler where the model has one
    (DeBERTa's pooler is not in the pretrained checkpoint and starts random)."""
    top = {name.split(".")[0] for name, _ in model.named_children()}
    return [name for name in ("pooler", "classifier") if name in top] + [
        name for name, _ in model.named_modules() if name.endswith(".pooler") and name.count(".") == 1
    ]


def build_peft_config(plan):
    """The peft config of the plan's method. GLoRA starts as uniform LoRA; `gradnorm_rank.GradNormRank` re-apportions.
    EVA starts as uniform LoRA with B = 0; `eva_init.EvaInit` sets its ranks and A before training."""
    common = dict(
        # The planted control's model has no classifier: peft's plain PeftModel, whose forward passes every input on.
        # (A plan of no GLUE task, e.g. the benchmarks' "benchmark", is a sequence classifier.)
        task_type=None if plan.task in GLUE_TASKS and GLUE_TASKS[plan.task].is_vector else TaskType.SEQ_CLS,
        target_modules=list(plan.targets),
        modules_to_save=list(plan.head),
        lora_dropout=plan.lora_dropout,
    )
    if plan.adalora is None:
        extra = {}
        if plan.rank_pattern is not None:  # fixed ranks, each at the uniform start's scaling (GLoRA's rule)
            scaling = plan.lora_alpha / plan.lora_r
            extra = dict(rank_pattern={pattern_key(name): r for name, r in plan.rank_pattern.ranks},
                         alpha_pattern={pattern_key(name): scaling * r for name, r in plan.rank_pattern.ranks})
        if plan.eva is not None:  # sequence labels are per example, not per token: no label mask
            extra = dict(init_lora_weights="eva",
                         eva_config=EvaConfig(rho=plan.eva.rho, tau=plan.eva.tau, use_label_mask=False))
        return LoraConfig(r=plan.lora_r, lora_alpha=plan.lora_alpha, **extra, **common)
    # AdaLoraPlan's fields are AdaLoraConfig's schedule arguments, by name.
    return AdaLoraConfig(**dataclasses.asdict(plan.adalora), **common)


def unit_costs(model, targets) -> list:
    """d_in + d_out of each target matrix: the adapter parameters one rank of it costs (A's row plus B's column)."""
    modules = dict(model.named_modules())
    return [modules[name].in_features + modules[name].out_features for name in targets]


def current_ranks(peft_model, adapter_name="default", count_masked=False) -> dict:
    """Rank of every adapted matrix. For AdaLoRA with `count_masked`: the singular values its masking left
    non-zero (its final ranks once training ends); otherwise the width of the tensors (init_r)."""
    from peft.tuners.adalora import AdaLoraLayer

    ranks = {}
    for name, layer in lora_layers(peft_model).items():
        if count_masked and isinstance(layer, AdaLoraLayer):
            ranks[name] = int((layer.lora_E[adapter_name] != 0).sum())
        else:
            ranks[name] = int(layer.r[adapter_name])
    return ranks


def trainable_parameters(peft_model, head) -> dict:
    """Trainable parameters, adapter and head counted separately."""
    adapter = head_count = 0
    for name, param in peft_model.named_parameters():
        if not param.requires_grad:
            continue
        if any(f".{h}." in f".{name}" for h in head) and "lora_" not in name:
            head_count += param.numel()
        else:
            adapter += param.numel()
    return {"trainable_params_adapter": adapter, "trainable_params_head": head_count, "trainable_params": adapter + head_count}


def effective_ranks(peft_model, adapter_name="default") -> dict:
    """Components that contribute at the end: i with B[:, i] and A[i, :] both non-zero (and, for AdaLoRA, its
    singular value E_i non-zero)."""
    from peft.tuners.adalora import AdaLoraLayer

    ranks = {}
    for name, layer in lora_layers(peft_model).items():
        a, b = layer.lora_A[adapter_name], layer.lora_B[adapter_name]
        a, b = (a.weight if isinstance(a, torch.nn.Module) else a), (b.weight if isinstance(b, torch.nn.Module) else b)
        alive = (a.detach().abs().sum(dim=1) > 0) & (b.detach().abs().sum(dim=0) > 0)
        if isinstance(layer, AdaLoraLayer):
            alive &= layer.lora_E[adapter_name].detach().reshape(-1) != 0
        ranks[name] = int(alive.sum())
    return ranks


def rank_record(peft_model, plan, initial_ranks) -> RankRecord:
    """The `ranks.json` record (records.RankRecord): per module its place, shape and initial/final/effective rank,
    and the LoRA scaling every matrix starts with (see docs/outputs.md)."""
    modules = {}
    final = current_ranks(peft_model, count_masked=True)
    effective = effective_ranks(peft_model)
    layers = lora_layers(peft_model)
    for name in plan.targets:
        layer_index, matrix = module_matrix(name)
        # EVA removes the adapter of a matrix it gives rank 0: the plain Linear is left, at rank 0.
        base = layers[name].get_base_layer() if name in layers else peft_model.base_model.model.get_submodule(name)
        modules[name] = ModuleRanks(layer=layer_index, matrix=matrix, d_in=base.in_features, d_out=base.out_features,
                                    initial_rank=initial_ranks[name], final_rank=final.get(name, 0),
                                    effective_rank=effective.get(name, 0))
    # The scaling every method starts with: peft's LoRA alpha / r (GLoRA's resize keeps it), AdaLoRA alpha / init_r.
    scaling = plan.adalora.lora_alpha / plan.adalora.init_r if plan.adalora else plan.lora_alpha / plan.lora_r
    return RankRecord(modules=modules, initial_scaling=scaling)


class AdaLoraCallback(TrainerCallback):
    """Calls AdaLoRA's `update_and_allocate` after every optimizer step (transformers never does).

    `on_optimizer_step` runs after `optimizer.step()` and before `zero_grad()`, where AdaLoRA needs the
    gradients for its sensitivity scores. `global_step` there is the index of the step just taken.

    A resume is exact only with what peft keeps in memory: the allocator's sensitivity and uncertainty EMAs (updated
    every step from the first) and the rank pattern. `on_save` writes them to checkpoint-N/adalora_state.pt and
    `load` restores them; `full_width_checkpoint` keeps peft from saving a checkpoint's adapter pruned to the rank
    pattern, since a resume loads it into the init_r-wide tensors AdaLoRA trains (and masks).
    """

    STATE_FILE = "adalora_state.pt"
    ALLOCATOR_STATE = ("ipt", "exp_avg_ipt", "exp_avg_unc")

    def __init__(self, peft_model, schedule):
        self.peft_model = peft_model
        self.schedule = schedule  # plan.AdaLoraPlan
        self.overhead_seconds = 0.0  # inside update_and_allocate
        self.resumed = None  # a checkpoint's adalora_state.pt, until training begins

    def on_optimizer_step(self, args, state, control, **kwargs):
        start = time.perf_counter()
        self.peft_model.base_model.update_and_allocate(state.global_step)
        self.overhead_seconds += time.perf_counter() - start

    def overhead_record(self) -> dict:
        """The method overhead under the names GLoRA's records use (gradnorm_rank.MethodOverhead): the total alone,
        since peft's update_and_allocate scores and masks in one call (its signal/resize/grown-slice parts: null)."""
        return MethodOverhead.unsplit_record(self.overhead_seconds)

    @property
    def config(self):
        return self.peft_model.peft_config[self.peft_model.active_adapter]

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:  # right after the Trainer wrote checkpoint-<step>
            allocator = self.peft_model.base_model.rankallocator
            saved = {name: getattr(allocator, name) for name in self.ALLOCATOR_STATE}
            torch.save({**saved, "rank_pattern": self.config.rank_pattern, "method_overhead_seconds": self.overhead_seconds},
                       Path(args.output_dir, f"checkpoint-{state.global_step}", self.STATE_FILE))

    def load(self, folder):
        """Before training resumes from checkpoint `folder`: its allocator EMAs, rank pattern and hook time, applied
        when training begins (the rank pattern only after the Trainer loaded the full-width weights: peft resizes
        the layers to a rank pattern it finds while loading)."""
        self.resumed = torch.load(Path(folder, self.STATE_FILE), weights_only=True, map_location="cpu")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed is None:
            return
        allocator = self.peft_model.base_model.rankallocator
        device = next(self.peft_model.parameters()).device
        for name in self.ALLOCATOR_STATE:
            setattr(allocator, name, {key: value.to(device) for key, value in self.resumed[name].items()})
        self.config.rank_pattern = self.resumed["rank_pattern"]
        # The overhead covers the whole run, as GLoRA's does; a state written before the rename has it as hook_seconds.
        saved = self.resumed
        self.overhead_seconds = saved["method_overhead_seconds"] if "method_overhead_seconds" in saved else saved["hook_seconds"]
        self.resumed = None

    @contextlib.contextmanager
    def full_width_checkpoint(self):
        """peft saves an AdaLoRA adapter cut to its rank pattern (the final adapter: its final ranks); a checkpoint
        must keep the init_r-wide tensors that training goes on with."""
        rank_pattern, self.config.rank_pattern = self.config.rank_pattern, None
        try:
            yield
        finally:
            self.config.rank_pattern = rank_pattern

    def add_to_record(self, record):
        """ranks.json's `adalora` block (records.RankRecord): the schedule peft ran and the seconds spent in
        update_and_allocate."""
        record.adalora = {**dataclasses.asdict(self.schedule), "method_overhead_seconds": self.overhead_seconds}
