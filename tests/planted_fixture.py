"""A tiny vector-label planting folder in the format of /work/wt/PLANTED_CONTRACT.md (docs/planted.md), for the
harness's tests while data/make_planted.py is rewritten: a teacher = the tiny model with random rank-2 updates on two
matrices, a random affine read-out of its last hidden state standardised on the training rows, labels = that read-out
of the teacher, base_sq_error = the squared error of that read-out of the base model (summed over outputs and tokens)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from conftest import WORDS
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

from harness.adapters import MATRIX_PATTERNS, resolve_targets

PLANTED = ("encoder.layer.0.attention.self.value", "encoder.layer.1.intermediate.dense")


def sentences(rng, n) -> list:
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 10))) for _ in range(n)]


def plant(encoder, generator, rank=2, relative_norm=0.3) -> dict:
    """Add U diag(sigma) V^T to each PLANTED matrix in place; {name: (U, sigma, V)} (float64)."""
    modules = dict(encoder.named_modules())
    planted = {}
    for name in PLANTED:
        weight = modules[name].weight
        u = torch.linalg.qr(torch.randn(weight.shape[0], rank, generator=generator, dtype=torch.float64))[0]
        v = torch.linalg.qr(torch.randn(weight.shape[1], rank, generator=generator, dtype=torch.float64))[0]
        sigma = torch.full((rank,), relative_norm * float(weight.detach().double().norm()) / rank ** 0.5,
                           dtype=torch.float64)
        with torch.no_grad():
            weight += ((u * sigma) @ v.T).to(weight.dtype)
        planted[name] = (u, sigma, v)
    return planted


@torch.no_grad()
def hidden_states(encoder, tokenizer, texts, max_seq_length, per_token) -> list:
    """Per sentence: the last hidden state at [CLS] (hidden,) or at each of its tokens (tokens, hidden), float64."""
    batch = tokenizer(texts, truncation=True, max_length=max_seq_length, padding=True, return_tensors="pt")
    states = encoder(**batch).last_hidden_state.double()
    lengths = batch["attention_mask"].sum(1).tolist()
    return [states[i, :n] if per_token else states[i, 0] for i, n in enumerate(lengths)]


def write_planted_fixture(out: Path, model_dir, target="features", num_outputs=3, n_train=48, n_dev=16,
                          max_seq_length=32, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    teacher = AutoModel.from_pretrained(model_dir).eval()
    prefix = teacher.base_model_prefix  # the module paths as the harness's model (and a sequence classifier) name them
    texts = sentences(rng, n_train + n_dev)
    per_token = target == "token_features"
    base_states = hidden_states(teacher, tokenizer, texts, max_seq_length, per_token)
    planted = plant(teacher, generator)
    states = hidden_states(teacher, tokenizer, texts, max_seq_length, per_token)
    hidden = teacher.config.hidden_size
    raw_weight = torch.randn(num_outputs, hidden, generator=generator, dtype=torch.float64)
    train_rows = torch.cat([s.reshape(-1, hidden) for s in states[:n_train]]) @ raw_weight.T
    mean, std = train_rows.mean(0), train_rows.std(0, correction=0)
    weight, bias = raw_weight / std[:, None], -mean / std  # outputs of mean 0, variance 1 over the training rows
    labels = [(s @ weight.T + bias).reshape(-1).tolist() for s in states]
    base_sq_error = [float((((b - s) @ weight.T) ** 2).sum()) for b, s in zip(base_states, states)]

    (out / "planted").mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", slice(0, n_train)), ("validation", slice(n_train, None))):
        frame = pd.DataFrame({"sentence": texts[rows], "label": labels[rows], "idx": range(len(texts[rows])),
                              "base_sq_error": base_sq_error[rows]})
        frame.to_parquet(out / "planted" / f"{split}.parquet", index=False)
    tensors = {f"{prefix}.{name}.{part}": t.contiguous() for name, (u, s, v) in planted.items()
               for part, t in (("U", u), ("sigma", s), ("V", v))}
    save_file({**tensors, "readout.weight": weight.contiguous(), "readout.bias": bias.contiguous()},
              str(out / "planted_update.safetensors"))
    targets = resolve_targets(torch.nn.ModuleDict({prefix: teacher}), list(MATRIX_PATTERNS))
    oracle = {name: (2 if name.removeprefix(f"{prefix}.") in planted else 1) for name in targets}
    (out / "oracle_pattern.json").write_text(json.dumps(oracle, indent=1) + "\n")
    truth = {"task": "planted", "target": target, "num_outputs": num_outputs, "max_seq_length": max_seq_length,
             "readout": {"kind": "random_affine", "standardised_on": "train"}, "model": str(model_dir), "seed": seed,
             "planted": {f"{prefix}.{name}": {"rank": len(s), "singular_values": s.tolist()}
                         for name, (u, s, v) in planted.items()}}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return out
