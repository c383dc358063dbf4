"""Identifiability of a planting (issue 26): can training itself find the planted matrices?

Measured on a `Planting` (a model, its adapted matrices, the planted updates, a prediction and the training rows), before
any method is compared on it:
- additivity: the target change of each single planted update against the joint change (`additivity`);
- the base model's mean gradient inside each planted matrix: its cosine with the planted update and its share inside
  the planted column and row spaces (`gradient_alignment`);
- a ceiling localisation: full fine-tuning of the adapted matrices, and a generously ranked LoRA, trained on the target
  (MSE through the frozen read-out), and where they moved the weights, by planting-blind scores of each matrix's change
  (`change_scores`): the relative change ||dW|| / ||W|| and the share of ||dW||^2 in its top-k singular values.
The verdict rule (`IDENTIFIABLE_RULE`): full fine-tuning puts at least ceil(0.75 n) of the n planted matrices among its
top n (3 of 4). data/identifiability.py builds a Planting from a make_planted folder and writes the block.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from analysis.allocation import recall_at_k
from data.make_planted import set_weights

IDENTIFIABLE_SHARE = 0.75
IDENTIFIABLE_RULE = ("identifiable when full fine-tuning puts at least ceil(0.75 n) of the n planted matrices among "
                     "its top n by a planting-blind score of its change (n = 4: 3 of 4)")


@dataclass
class Planting:
    """What the diagnostics need. `predict(inputs)` is the target's prediction (a flat tensor over the real entries)
    under the model's current weights; `rows(indices)` gives (inputs, flat labels) of those training rows."""
    model: torch.nn.Module
    names: list
    planted: dict  # {module path: (U, sigma, V)}, float64
    predict: Callable
    rows: Callable
    n_rows: int

    def modules(self):
        return {name: module for name, module in self.model.named_modules() if name in self.names}

    def update(self, name):
        u, sigma, v = self.planted[name]
        return (u * sigma) @ v.T


def required_hits(n):
    return math.ceil(IDENTIFIABLE_SHARE * n)


def batches(n_rows, batch_size):
    return [list(range(start, min(start + batch_size, n_rows))) for start in range(0, n_rows, batch_size)]


@torch.no_grad()
def additivity(planting, n_rows, batch_size):
    """Per planted matrix on the first n_rows rows: the RMS target change of its update alone (effect), its share of the
    joint change <d_k, D> / ||D||^2 and the R^2 (squared correlation over entries) of d_k against D; and how much of D
    the sum of the singles explains (1 - ||D - sum d_k||^2 / ||D||^2), their cosine and norm ratio. `label_gap`: the
    largest |teacher's prediction - label| (float noise if the planting and its labels agree); `start_loss`: the base
    model's mean squared error (where training starts)."""
    modules = planting.modules()
    originals = {name: module.weight.detach().clone() for name, module in modules.items()}
    parts = [planting.rows(rows) for rows in batches(n_rows, batch_size)]

    def target(planted):
        set_weights(modules, originals, planted)
        return torch.cat([planting.predict(inputs) for inputs, _ in parts]).double()

    base = target({})
    joint = target(planting.planted) - base
    labels = torch.cat([y for _, y in parts]).double()
    label_gap = float((base + joint - labels).abs().max())
    singles = {name: target({name: planting.planted[name]}) - base for name in planting.planted}
    set_weights(modules, originals, {})
    total = sum(singles.values())
    energy = float(joint @ joint)
    per_matrix = {name: {"effect": float(d.pow(2).mean().sqrt()), "share": float(d @ joint) / energy,
                         "r2": float(torch.corrcoef(torch.stack([d, joint]))[0, 1] ** 2)} for name, d in singles.items()}
    return {"rows": n_rows, "entries": len(joint), "joint_effect": float(joint.pow(2).mean().sqrt()),
            "label_gap": label_gap, "start_loss": float((base - labels).pow(2).mean()), "per_matrix": per_matrix,
            "sum_of_singles": {"explained": 1 - float((joint - total).pow(2).sum()) / energy,
                               "cosine": float(total @ joint) / math.sqrt(energy * float(total @ total)),
                               "norm_ratio": math.sqrt(float(total @ total) / energy)}}


def mean_gradient(planting, n_rows, batch_size):
    """{name: the gradient of the mean squared error over the first n_rows rows' entries} at the current weights."""
    modules = planting.modules()
    weights = [modules[name].weight for name in planting.names]
    parts = [planting.rows(rows) for rows in batches(n_rows, batch_size)]
    total = sum(len(labels) for _, labels in parts)
    grads = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    for inputs, labels in parts:
        loss = (planting.predict(inputs) - labels).pow(2).sum() / total
        for g, part in zip(grads, torch.autograd.grad(loss, weights)):
            g += part.double()
    return dict(zip(planting.names, grads))


def gradient_alignment(gradient, u, sigma, v):
    """The descent direction -G against the planted update dW = U diag(sigma) V^T: cos(-G, dW), and the shares of ||G||^2
    inside the planted column space (||U^T G||^2), row space (||G V||^2) and both (||U^T G V||^2), with the shares a
    random direction would have (r / d_out, r / d_in, r^2 / (d_out d_in))."""
    delta = (u * sigma) @ v.T
    energy = float(gradient.pow(2).sum())
    d_out, d_in = gradient.shape
    r = u.shape[1]
    return {"cosine": float(-(gradient * delta).sum()) / math.sqrt(energy * float(delta.pow(2).sum())),
            "column_share": float((u.T @ gradient).pow(2).sum()) / energy,
            "row_share": float((gradient @ v).pow(2).sum()) / energy,
            "both_share": float((u.T @ gradient @ v).pow(2).sum()) / energy,
            "random_column_share": r / d_out, "random_row_share": r / d_in, "random_both_share": r * r / (d_out * d_in)}


def change_scores(changes, weights, k):
    """Planting-blind scores of each matrix's change dW: {"relative_change": ||dW|| / ||W||, "top_k_share": the share of
    ||dW||^2 in its k largest singular values (0 for a matrix that did not move)}."""
    relative, top = {}, {}
    for name, change in changes.items():
        change = change.double()
        relative[name] = float(change.norm() / weights[name].double().norm())
        energy = torch.linalg.svdvals(change).pow(2)
        top[name] = float(energy[:k].sum() / energy.sum()) if energy.sum() > 0 else 0.0
    return {"relative_change": relative, "top_k_share": top}


def placement(scores, planted):
    """Where the planted matrices sit in a score's order (1 = highest; ties share their mean place): recall at
    n = len(planted) (ties at the boundary count fractionally), hits = recall x n, the places, their mean, and the
    verdict hits >= ceil(0.75 n)."""
    names = list(scores)
    places = dict(zip(names, rankdata([-scores[name] for name in names], method="average")))
    recall = recall_at_k(scores, set(planted))
    hits = recall * len(planted)
    return {"recall": recall, "hits": hits, "places": sorted(float(places[name]) for name in planted),
            "mean_place": float(np.mean([places[name] for name in planted])),
            "identifiable": bool(hits >= required_hits(len(planted)) - 1e-9)}


def cosines_with_planted(changes, planting):
    """cos(dW, planted dW) in each planted matrix."""
    out = {}
    for name in planting.planted:
        delta, change = planting.update(name), changes[name].double()
        out[name] = float((change * delta).sum() / (change.norm() * delta.norm())) if change.norm() > 0 else 0.0
    return out


class LoraHooks:
    """A LoRA update scaling x B A (A: kaiming-uniform, as peft initialises it; B: zeros) added to each named Linear's
    output through a forward hook; `changes()` gives each matrix's scaling x B A."""

    def __init__(self, modules, rank, alpha, generator):
        self.scaling = alpha / rank
        self.factors = {}
        self.handles = []
        for name, module in modules.items():
            (d_out, d_in), dtype = module.weight.shape, module.weight.dtype
            bound = 1 / math.sqrt(d_in)  # kaiming_uniform with a = sqrt(5): bound sqrt(6 / ((1 + 5) d_in))
            a = torch.nn.Parameter(((torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound).to(dtype))
            b = torch.nn.Parameter(torch.zeros(d_out, rank, dtype=dtype))
            self.factors[name] = (a, b)
            self.handles.append(module.register_forward_hook(self._hook(a, b)))

    def _hook(self, a, b):
        return lambda module, inputs, output: output + self.scaling * (inputs[0] @ a.T) @ b.T

    def parameters(self):
        return [p for pair in self.factors.values() for p in pair]

    def changes(self):
        return {name: self.scaling * (b @ a).detach() for name, (a, b) in self.factors.items()}

    def remove(self):
        for handle in self.handles:
            handle.remove()


def train(planting, parameters, changes, steps, lr, batch_size, seed, report=print):
    """AdamW (no weight decay: it would shrink W itself and blur ||dW||) on the MSE of the target over planting.n_rows
    rows, reshuffled every epoch (per seed). {step: (changes(), the mean loss since the previous step in `steps`)}."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order, losses, out, started = [], [], {}, time.time()
    for step in range(1, max(steps) + 1):
        if len(order) < batch_size:
            order += torch.randperm(planting.n_rows, generator=generator).tolist()
        rows, order = order[:batch_size], order[batch_size:]
        inputs, labels = planting.rows(rows)
        loss = (planting.predict(inputs) - labels).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step in steps:
            out[step] = (changes(), float(np.mean(losses)))
            report(f"  step {step}: mean loss {out[step][1]:.4f} since the previous report "
                   f"({time.time() - started:.0f} s)")
            losses = []
    return out


def localisation(planting, changes_by_step, weights, rank):
    """Per step: the training loss, both scores per matrix, their placement of the planted matrices, and
    cos(dW, planted dW)."""
    out = {}
    for step, (changes, loss) in changes_by_step.items():
        scores = change_scores(changes, weights, rank)
        out[str(step)] = {"loss": loss, "scores": scores, "cosine_with_planted": cosines_with_planted(changes, planting),
                          **{kind: placement(values, planting.planted) for kind, values in scores.items()}}
    return out


def full_finetuning(planting, steps, lr, batch_size, seed, report=print):
    """Train every adapted matrix (nothing else) from the base weights; the model's weights are restored afterwards."""
    modules = planting.modules()
    originals = {name: module.weight.detach().clone() for name, module in modules.items()}
    frozen = [(p, p.requires_grad) for p in planting.model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    for module in modules.values():
        module.weight.requires_grad_(True)
    try:
        def changes():
            return {name: (modules[name].weight.detach() - originals[name]).clone() for name in modules}
        return train(planting, [modules[n].weight for n in planting.names], changes, steps, lr, batch_size, seed, report)
    finally:
        set_weights(modules, originals, {})
        for p, flag in frozen:
            p.requires_grad_(flag)


def lora_finetuning(planting, steps, rank, alpha, lr, batch_size, seed, report=print):
    """Train a rank-`rank` LoRA on every adapted matrix (base weights frozen); the hooks are removed afterwards."""
    frozen = [(p, p.requires_grad) for p in planting.model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    lora = LoraHooks(planting.modules(), rank, alpha, torch.Generator().manual_seed(seed))
    try:
        return train(planting, lora.parameters(), lora.changes, steps, lr, batch_size, seed, report)
    finally:
        lora.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)


@dataclass
class Settings:
    """How the diagnostic ran (recorded with its results)."""
    steps: tuple = (40, 80, 120, 240)
    lr: float = 1e-4
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_lr: float = 1e-3
    batch_size: int = 32
    additivity_rows: int = 256
    gradient_rows: int = 512
    seed: int = 0


def verdicts(localised):
    """{score: {step: identifiable}} of one localisation."""
    kinds = next(iter(localised.values()))["scores"]
    return {kind: {step: entry[kind]["identifiable"] for step, entry in localised.items()} for kind in kinds}


def diagnose(planting, settings, report=print):
    """The identifiability block: settings, rule, additivity, the mean gradient, full fine-tuning and LoRA localisation
    (skipped when every matrix is planted: nothing to localise) and the verdict at the longest step count."""
    modules = planting.modules()
    weights = {name: module.weight.detach().clone() for name, module in modules.items()}
    rank = max(len(sigma) for _, sigma, _ in planting.planted.values())
    n = len(planting.planted)
    block = {"settings": vars(settings) | {"steps": list(settings.steps), "rows": planting.n_rows, "score_rank": rank},
             "rule": IDENTIFIABLE_RULE, "n_planted": n, "required_hits": required_hits(n)}
    report("additivity ...")
    block["additivity"] = additivity(planting, min(settings.additivity_rows, planting.n_rows), settings.batch_size)
    report("mean gradient ...")
    gradient = mean_gradient(planting, min(settings.gradient_rows, planting.n_rows), settings.batch_size)
    block["mean_gradient"] = {"per_matrix": {name: gradient_alignment(gradient[name], *planting.planted[name])
                                             for name in planting.planted}}
    if n == len(planting.names):
        block["localisation"] = "every adapted matrix is planted: nothing to localise"
        return block
    gradient_scores = change_scores(gradient, weights, rank)
    block["mean_gradient"]["placement"] = {kind: placement(values, planting.planted)
                                           for kind, values in gradient_scores.items()}
    report("full fine-tuning ...")
    full = full_finetuning(planting, settings.steps, settings.lr, settings.batch_size, settings.seed, report)
    block["full_finetuning"] = localisation(planting, full, weights, rank)
    report(f"LoRA rank {settings.lora_rank} ...")
    lora = lora_finetuning(planting, settings.steps, settings.lora_rank, settings.lora_alpha, settings.lora_lr,
                           settings.batch_size, settings.seed, report)
    block["lora"] = localisation(planting, lora, weights, rank)
    block["verdicts"] = {"full_finetuning": verdicts(block["full_finetuning"]), "lora": verdicts(block["lora"])}
    last = str(max(settings.steps))
    met = [kind for kind, by_step in block["verdicts"]["full_finetuning"].items() if by_step[last]]
    block["verdict"] = {"step": int(last), "scores_meeting_rule": met, "identifiable": bool(met)}
    return block
