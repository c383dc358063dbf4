"""Model surgery: resize peft LoRA layers in place, keeping what they learned.

A LoRA layer computes y = W x + s * B A x with A (r x d_in), B (d_out x r), s = alpha / r. A resize keeps
the scaling s fixed (alpha := s * r_new), so the kept components contribute exactly what they did:
- growing: all old components are kept, new rows of A are initialised like LoRA's A, new columns of B
  are zero, so the layer's output is unchanged;
- shrinking: the components i with the largest ||B[:, i]|| * ||A[i, :]|| (an upper bound of the norm of
  the rank-one term B[:, i] A[i, :]) are kept, in their original order; the rest are dropped.
"""

import re
from dataclasses import dataclass

import torch


def lora_layers(peft_model):
    """{module path without the peft prefix: LoRA layer} for every adapted matrix."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {
        name[len(prefix) :] if name.startswith(prefix) else name: module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def pattern_key(module_path: str) -> str:
    """The key of one module in peft's rank_pattern / alpha_pattern: peft matches keys as regexes against module
    paths, so the path is escaped."""
    return re.escape(module_path)


@dataclass
class ResizedLayer:
    """What the optimizer rebuild needs to carry AdamW state over: old and new parameters and kept indices."""

    name: str
    old_rank: int
    new_rank: int
    kept: torch.Tensor  # indices into the old rank dimension, in the order they now occupy
    old_A: torch.nn.Parameter
    old_B: torch.nn.Parameter
    new_A: torch.nn.Parameter
    new_B: torch.nn.Parameter


def components_to_keep(lora_A: torch.Tensor, lora_B: torch.Tensor, new_rank: int) -> torch.Tensor:
    """Indices of the old components that survive a resize to `new_rank`, in ascending order."""
    old_rank = lora_A.shape[0]
    if new_rank >= old_rank:
        return torch.arange(old_rank)
    importance = lora_B.detach().float().norm(dim=0) * lora_A.detach().float().norm(dim=1)
    # Stable sort: equal importance keeps the earlier component.
    order = torch.sort(importance, descending=True, stable=True).indices
    return order[:new_rank].sort().values


def resize_lora_layer(layer, name: str, new_rank: int, config, adapter_name: str = "default") -> ResizedLayer:
    """Give `layer` rank `new_rank` through peft's `update_layer`, copying the kept components."""
    old_A = layer.lora_A[adapter_name].weight
    old_B = layer.lora_B[adapter_name].weight
    old_rank = old_A.shape[0]
    scaling = layer.scaling[adapter_name]
    kept = components_to_keep(old_A, old_B, new_rank)
    # peft derives scaling from alpha: alpha / r, or alpha / sqrt(r) with rslora.
    new_alpha = scaling * (new_rank**0.5 if layer.use_rslora[adapter_name] else new_rank)
    layer.update_layer(adapter_name, new_rank, lora_alpha=new_alpha, config=config)
    new_A = layer.lora_A[adapter_name].weight
    new_B = layer.lora_B[adapter_name].weight
    with torch.no_grad():
        new_A[: len(kept)] = old_A[kept].to(new_A.dtype)
        new_B.zero_()
        new_B[:, : len(kept)] = old_B[:, kept].to(new_B.dtype)
    _record_rank(config, name, new_rank, new_alpha)
    return ResizedLayer(name, old_rank, new_rank, kept, old_A, old_B, new_A, new_B)


def _record_rank(config, name, rank, alpha):
    """Write the layer's rank into the peft config so `save_pretrained` -> `from_pretrained` rebuilds it.

    peft matches these keys as regexes against module paths, hence the escaping."""
    key = pattern_key(name)
    config.rank_pattern = {**(config.rank_pattern or {}), key: int(rank)}
    config.alpha_pattern = {**(config.alpha_pattern or {}), key: float(alpha)}


def resize_to_ranks(peft_model, ranks: dict, adapter_name: str = "default") -> list:
    """Resize every LoRA layer whose rank differs from `ranks[name]`; return what changed."""
    config = peft_model.peft_config[adapter_name]
    layers = lora_layers(peft_model)
    unknown = set(ranks) - set(layers)
    if unknown:
        raise ValueError(f"No LoRA layer named {sorted(unknown)[:3]}")
    resized = []
    for name, layer in layers.items():
        if name in ranks and int(layer.r[adapter_name]) != ranks[name]:
            resized.append(resize_lora_layer(layer, name, ranks[name], config, adapter_name))
    return resized


def carry_optimizer_state(old_state, new_optimizer, resized):
    """Fill `new_optimizer.state` from `old_state` (keyed by parameter): unchanged parameters keep their state;
    resized A and B get the kept slices' AdamW moments and step count, zeros for the new slices."""
    resized_by_param = {}
    for layer in resized:
        resized_by_param[layer.new_A] = (layer.old_A, layer.kept, 0)  # A: the rank is dim 0
        resized_by_param[layer.new_B] = (layer.old_B, layer.kept, 1)  # B: the rank is dim 1
    for group in new_optimizer.param_groups:
        for param in group["params"]:
            if param in old_state:  # unchanged parameter: same object, same state
                new_optimizer.state[param] = old_state[param]
            elif param in resized_by_param and resized_by_param[param][0] in old_state:
                old_param, kept, dim = resized_by_param[param]
                new_optimizer.state[param] = carry_adam_state(old_state[old_param], param, kept, dim)


def carry_adam_state(old, new_param, kept, dim):
    """AdamW state for a resized parameter: the kept slices' moments and step count, zeros for new slices."""
    state = {}
    for key, value in old.items():
        if torch.is_tensor(value) and value.shape == old["exp_avg"].shape and key != "step":
            fresh = torch.zeros_like(new_param, dtype=value.dtype)
            fresh.narrow(dim, 0, len(kept)).copy_(value.index_select(dim, kept.to(value.device)))
            state[key] = fresh
        else:
            state[key] = value.clone() if torch.is_tensor(value) else value
    return state


# ---- Adam's bias correction for the slices a resize adds (adam_rule slice_bias_correction) ----
#
# torch's AdamW keeps one step count t per tensor and divides the moments by 1 - beta^t. Slices added by a resize
# start with zero moments but the tensor's t, so their bias correction is ~1 instead of 1 - beta^k (k = steps since
# the resize): their first updates are off by about sqrt(1 - beta2^t) * (1 - beta1) / sqrt(1 - beta2), 3x after a
# 12,000-step warm-up. The rule: after each optimizer step, move the added slices from the update AdamW applied to
# the update a fresh Adam would have made, u = lr * (m / (1 - beta1^k)) / (sqrt(v / (1 - beta2^k)) + eps), with the
# same moments m, v. Exact for AdamW (decoupled weight decay does not involve the moments); kept slices untouched.
# It stops once the two step sizes agree within 1 % (beta2 = 0.999: about 3,900 steps after the resize); until then
# it costs one host sync and about ten fused (foreach) operations per optimizer step.


@dataclass
class GrownSlices:
    """The components one reallocation added: indices >= kept[name] of each layer's A rows and B columns, added when
    the adapter tensors' step count was `resize_step`; `last_step` is the last step count corrected (a step the fp16
    scaler skipped does not advance it)."""

    kept: dict
    resize_step: float
    last_step: float


def grown_slices(resized, old_state) -> GrownSlices | None:
    """The added components of a reallocation, or None if no layer with optimizer state gained any."""
    kept = {layer.name: len(layer.kept) for layer in resized if layer.new_rank > len(layer.kept) and layer.old_B in old_state}
    if not kept:
        return None
    step = float(old_state[next(layer.old_B for layer in resized if layer.name in kept)]["step"])
    return GrownSlices(kept=kept, resize_step=step, last_step=step)


def correct_grown_slices(grown: GrownSlices, params: dict, optimizer, tolerance=1e-2) -> bool:
    """After `optimizer.step()`: replace AdamW's update of the added slices by a fresh Adam's (see above), in a few
    fused (foreach) operations over all of them. `params`: {layer name: (A, B)}. Returns False once the two step
    sizes agree within `tolerance` (with beta2 0.999 about 3,900 steps after the resize): the correction can stop."""
    first_b = params[next(iter(grown.kept))][1]
    state = optimizer.state.get(first_b)
    if not state:
        return True
    step = float(state["step"])  # one host sync per optimizer step: every adapter tensor steps together
    if step <= grown.last_step:
        return True  # no optimizer step since the last correction (e.g. one skipped by the fp16 scaler)
    group = next(g for g in optimizer.param_groups if any(p is first_b for p in g["params"]))
    (beta1, beta2), lr, eps = group["betas"], float(group["lr"]), group["eps"]
    k = step - grown.resize_step
    slices = [(param, dim, kept) for name, kept in grown.kept.items() for param, dim in zip(params[name], (0, 1))
              if param in optimizer.state]  # the rank is A's dim 0 and B's dim 1
    views = [p.narrow(dim, kept, p.shape[dim] - kept) for p, dim, kept in slices]
    m = [optimizer.state[p]["exp_avg"].narrow(dim, kept, p.shape[dim] - kept) for p, dim, kept in slices]
    v_sqrt = torch._foreach_sqrt([optimizer.state[p]["exp_avg_sq"].narrow(dim, kept, p.shape[dim] - kept)
                                  for p, dim, kept in slices])

    def update(bias1, bias2):  # AdamW's step for moments m, v: lr * (m / bias1) / (sqrt(v / bias2) + eps)
        denominator = torch._foreach_mul(v_sqrt, 1 / bias2**0.5)
        torch._foreach_add_(denominator, eps)
        result = torch._foreach_div(m, denominator)
        torch._foreach_mul_(result, lr / bias1)
        return result

    correction = update(1 - beta1**step, 1 - beta2**step)  # what AdamW applied, at the tensors' step count
    torch._foreach_sub_(correction, update(1 - beta1**k, 1 - beta2**k))  # minus a fresh Adam's, at step k
    with torch.no_grad():
        torch._foreach_add_(views, correction)
    grown.last_step = step
    ratio = ((1 - beta1**step) / (1 - beta1**k)) * ((1 - beta2**k) / (1 - beta2**step)) ** 0.5
    return abs(ratio - 1) >= tolerance
