"""Which matrices get adapters, the shared rank budget, and the peft configs of LoRA and AdaLoRA.

Every method adapts the same matrices with the same total rank R_total = sum of ranks over adapted
matrices, so differences in accuracy come from how the rank is spent, not how much there is.
"""

import dataclasses
import re
import time

from peft import AdaLoraConfig, LoraConfig, TaskType
from transformers import TrainerCallback

METHODS = ("lora", "adalora", "glora")  # the three arms of the comparison, in the order tables show them

# The six matrices of a transformer layer that the AdaLoRA paper adapts, as regexes on the module
# path after `.layer.<i>.`. Covers BERT-style (query/key/value) and DeBERTa-v2/v3 (query_proj, ...)
# names. Anchoring on the layer index keeps `attention.output.dense` out of `ffn_out` and the pooler
# and classifier out of everything.
MATRIX_PATTERNS = {
    "query": r"attention\.self\.(query|query_proj)",
    "key": r"attention\.self\.(key|key_proj)",
    "value": r"attention\.self\.(value|value_proj)",
    "attention_output": r"attention\.output\.dense",
    "ffn_in": r"intermediate\.dense",
    "ffn_out": r"output\.dense",
}
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
    """The peft config of the plan's method. GLoRA starts as uniform LoRA; `glora_callback.GLoRA` re-apportions."""
    common = dict(
        task_type=TaskType.SEQ_CLS,
        target_modules=list(plan.targets),
        modules_to_save=list(plan.head),
        lora_dropout=plan.lora_dropout,
    )
    if plan.adalora is None:
        return LoraConfig(r=plan.lora_r, lora_alpha=plan.lora_alpha, **common)
    # AdaLoraPlan's fields are AdaLoraConfig's schedule arguments, by name.
    return AdaLoraConfig(lora_alpha=plan.lora_alpha, **dataclasses.asdict(plan.adalora), **common)


def lora_layers(peft_model):
    """{module path without the peft prefix: LoRA layer} for every adapted matrix."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {
        name[len(prefix) :] if name.startswith(prefix) else name: module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


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


def rank_record(peft_model, plan, initial_ranks) -> dict:
    """The `ranks.json` record: per module its place, shape and initial/final rank (see docs/outputs.md)."""
    modules = {}
    final = current_ranks(peft_model, count_masked=True)
    for name, layer in lora_layers(peft_model).items():
        layer_index, matrix = module_matrix(name)
        base = layer.get_base_layer()
        modules[name] = {
            "layer": layer_index,
            "matrix": matrix,
            "d_in": base.in_features,
            "d_out": base.out_features,
            "initial_rank": initial_ranks[name],
            "final_rank": final[name],
        }
    return {"method": plan.method, "rank_budget": plan.rank_budget, "num_adapted_matrices": len(modules), "modules": modules}


class AdaLoraCallback(TrainerCallback):
    """Calls AdaLoRA's `update_and_allocate` after every optimizer step (transformers never does).

    `on_optimizer_step` runs after `optimizer.step()` and before `zero_grad()`, where AdaLoRA needs the
    gradients for its sensitivity scores. `global_step` there is the index of the step just taken.
    """

    def __init__(self, peft_model, schedule):
        self.peft_model = peft_model
        self.schedule = schedule  # plan.AdaLoraPlan
        self.hook_seconds = 0.0

    def on_optimizer_step(self, args, state, control, **kwargs):
        start = time.perf_counter()
        self.peft_model.base_model.update_and_allocate(state.global_step)
        self.hook_seconds += time.perf_counter() - start

    @property
    def method_seconds(self) -> float:
        return self.hook_seconds

    def add_to_record(self, record: dict):
        """ranks.json's `adalora` block: the schedule peft ran and the seconds spent in its hook."""
        record["adalora"] = {**dataclasses.asdict(self.schedule), "hook_seconds": self.hook_seconds}
