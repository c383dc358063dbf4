#!/usr/bin/env python
"""A planted-structure control task: labels that a known low-rank change of chosen matrices explains.

    python3 -m data.make_planted --out_dir outputs/planted --model_name_or_path <MiniLM> --seed 0   # from the repo root
    python run_glue_peft.py --task sst2 --dataset_dir outputs/planted ...           # --target class (default)
    python run_glue_peft.py --task stsb --dataset_dir outputs/planted ...           # --target regression

The teacher is the base model with a rank-K update dW = U diag(sigma) V^T planted on chosen adapted matrices
(--planted LAYER:MATRIX ...; U, V random orthonormal, ||dW||_F = --relative_norm x ||W||_F). Real sentences (SST-2's)
are labelled by reading the teacher's last-layer [CLS] feature h_T(x) along one direction w (--readout): by default
the top principal direction of the part of h_T that no linear map of the base model's feature h_B explains (a ridge
regression on the training rows), so that labels carry as much as possible of what the planted change added. A linear
probe on the base model's features and one on the teacher's are scored on dev and recorded: the control's
difficulty (how much a model could get without the planted change) is known before any run.

Written: OUT/<task>/train.parquet and validation.parquet in the HF glue schema of the task (sst2: sentence, label,
idx; stsb: sentence1, sentence2, label, idx); OUT/ground_truth.json (planted matrices, ranks, singular values,
norms, seed, the read-out, the probes' scores, every flag); OUT/planted_update.safetensors (U, sigma, V per planted
matrix, float64, and the read-out direction w); OUT/oracle_pattern.json (a --rank_pattern: rank K on the planted matrices, --oracle_floor elsewhere).
`--spread_evenly` is the negative control: the same sum of squared relative norms spread over every adapted matrix, at
rank --spread_rank each. The same seed gives the same files.
"""

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from adapters import MATRIX_PATTERNS, module_matrix, resolve_targets

ROOT = Path(__file__).resolve().parents[1]

TASK_OF_TARGET = {"class": "sst2", "regression": "stsb"}
DEFAULT_PLANTED = ["1:value", "2:ffn_in", "3:attention_output", "4:ffn_out"]  # two small, two large matrices


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="Where the task folder and the ground truth go.")
    p.add_argument("--model_name_or_path", required=True, help="The base model (a local folder; the packaged MiniLM).")
    p.add_argument("--source_dir", default=str(ROOT / "data" / "glue" / "sst2"),
                   help="SST-2 parquet files (train.parquet, validation.parquet) whose sentences are labelled.")
    p.add_argument("--planted", nargs="+", default=DEFAULT_PLANTED,
                   help=f"LAYER:MATRIX of each planted matrix; MATRIX from {', '.join(MATRIX_PATTERNS)}.")
    p.add_argument("--rank", type=int, default=8, help="Rank K of each planted update.")
    p.add_argument("--relative_norm", type=float, default=1.0, help="||dW||_F / ||W||_F of each planted update.")
    p.add_argument("--spectrum", choices=("flat", "decaying"), default="flat",
                   help="Singular values of each update: all equal, or 1, 1/2, ..., 1/K (before scaling).")
    p.add_argument("--spread_evenly", action="store_true",
                   help="Negative control: the same sum of squared relative norms over every adapted matrix, at --spread_rank.")
    p.add_argument("--spread_rank", type=int, default=2, help="Rank of each update under --spread_evenly.")
    p.add_argument("--target", choices=tuple(TASK_OF_TARGET), default="class",
                   help="class: SST-2 schema, label = read-out above its training median; regression: STS-B schema "
                        "(sentence pairs), label = the read-out scaled to mean 2.5, std 1.")
    p.add_argument("--train_rows", type=int, default=12000, help="Training rows (distinct sentences of the source).")
    p.add_argument("--dev_rows", type=int, default=None, help="Dev rows (default: the whole source dev split).")
    p.add_argument("--max_seq_length", type=int, default=128, help="As the runs tokenise.")
    p.add_argument("--readout", choices=READOUTS, default="residual_pc",
                   help="The direction of the teacher's [CLS] feature that labels are read along (readout_direction).")
    p.add_argument("--ridge", type=float, default=1e-3, help="Ridge of the base-feature regression and of the probes.")
    p.add_argument("--oracle_floor", type=int, default=1, help="Rank of the non-planted matrices in oracle_pattern.json.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the planted updates and the sentence sample.")
    p.add_argument("--batch_size", type=int, default=128, help="Forward batch size.")
    return p.parse_args(argv)


def planted_targets(targets, specs, spread_evenly):
    """Module paths of the planted matrices, from LAYER:MATRIX specs (or every target under --spread_evenly)."""
    if spread_evenly:
        return list(targets)
    by_place = {module_matrix(name): name for name in targets}
    chosen = []
    for spec in specs:
        layer, _, matrix = spec.partition(":")
        if not layer.isdigit() or matrix not in MATRIX_PATTERNS:
            raise ValueError(f"--planted {spec}: expected LAYER:MATRIX with MATRIX one of {', '.join(MATRIX_PATTERNS)}.")
        if (int(layer), matrix) not in by_place:
            raise ValueError(f"--planted {spec}: the model has no layer {layer} {matrix} matrix.")
        chosen.append(by_place[(int(layer), matrix)])
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"--planted names a matrix twice: {specs}.")
    return chosen


def orthonormal(rows, cols, generator):
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a unique QR: the distribution is Haar


def plant(model, names, rank, relative_norm, spectrum, seed):
    """Add dW_k = U diag(sigma) V^T to each named Linear in place; return {name: (U, sigma, V)} (float64)."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    planted = {}
    for name in names:
        weight = modules[name].weight
        d_out, d_in = weight.shape
        if rank > min(d_out, d_in):
            raise ValueError(f"--rank {rank} exceeds {name}'s smaller side {min(d_out, d_in)}.")
        u, v = orthonormal(d_out, rank, generator), orthonormal(d_in, rank, generator)
        shape = torch.ones(rank, dtype=torch.float64) if spectrum == "flat" else 1.0 / torch.arange(1, rank + 1).double()
        # ||U diag(s) V^T||_F = ||s||_2 for orthonormal U, V.
        sigma = shape * (relative_norm * weight.detach().double().norm() / shape.norm())
        with torch.no_grad():
            weight += ((u * sigma) @ v.T).to(weight.dtype)
        planted[name] = (u, sigma, v)
    return planted


@torch.no_grad()
def cls_features(encoder, tokenizer, texts, max_seq_length, batch_size):
    """The last layer's [CLS] vector of each input (a sentence, or a pair as two lists), float64, in input order.
    Batches are formed from length-sorted inputs (less padding); the result does not depend on it up to float noise."""
    pairs = isinstance(texts, tuple)
    columns = texts if pairs else (texts,)
    order = np.argsort([sum(len(c[i]) for c in columns) for i in range(len(columns[0]))], kind="stable")
    out = np.empty((len(order), encoder.config.hidden_size))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer(*[[c[i] for i in rows] for c in columns], truncation=True, max_length=max_seq_length,
                          padding=True, return_tensors="pt")
        out[rows] = encoder(**batch).last_hidden_state[:, 0].double().numpy()
    return out


def ridge_fit(x, y, ridge):
    """Least squares with an intercept and a ridge (scaled by the features' mean variance): coefficients, intercept."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc = x - mean_x
    gram = xc.T @ xc
    coef = np.linalg.solve(gram + ridge * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0]), xc.T @ (y - mean_y))
    return coef, mean_y - mean_x @ coef


READOUTS = ("residual_pc", "least_predictable", "moved_most")


def readout_direction(h_teacher, h_base, ridge, readout):
    """The unit direction w that labels are read along, and the share of Var(w.h_T) that no linear map of h_B
    explains. residual_pc: the top principal direction of R, the part of H_T a ridge regression on H_B leaves
    (the most variance that is new); least_predictable: the largest Var(w.R) / Var(w.h_T) (the generalised
    eigenproblem R^T R w = lambda H^T H w: new, however small); moved_most: the top principal direction of
    H_T - H_B (what the update changed most)."""
    from scipy.linalg import eigh

    coef, intercept = ridge_fit(h_base, h_teacher, ridge)
    residual = h_teacher - (h_base @ coef + intercept)
    centred = h_teacher - h_teacher.mean(0)
    total = centred.T @ centred
    if readout == "least_predictable":
        w = eigh(residual.T @ residual, total + 1e-9 * np.trace(total) / total.shape[0] * np.eye(total.shape[0]))[1][:, -1]
    else:
        moved = residual if readout == "residual_pc" else (h_teacher - h_base) - (h_teacher - h_base).mean(0)
        w = eigh(moved.T @ moved)[1][:, -1]
    w = w / np.linalg.norm(w)
    return w, float((w @ residual.T @ residual @ w) / (w @ total @ w))


def probe_scores(features, train_y, dev_y, n_train, target, ridge):
    """A linear probe (ridge regression; thresholded at 0.5 for class labels) fit on training rows, scored on dev."""
    coef, intercept = ridge_fit(features[:n_train], train_y.astype(float), ridge)
    predicted = features[n_train:] @ coef + intercept
    if target == "class":
        return {"dev_accuracy": float(np.mean((predicted > 0.5) == (dev_y > 0.5)))}
    return {"dev_pearson": float(np.corrcoef(predicted, dev_y)[0, 1])}


def sample_sentences(source_dir, train_rows, dev_rows, seed):
    train = pd.read_parquet(Path(source_dir, "train.parquet"))["sentence"].astype(str).str.strip()
    dev = pd.read_parquet(Path(source_dir, "validation.parquet"))["sentence"].astype(str).str.strip()
    train = train[train.str.len() > 0].drop_duplicates()
    if len(train) < train_rows:
        raise ValueError(f"--train_rows {train_rows}: {source_dir}/train.parquet has only {len(train)} distinct sentences.")
    rng = np.random.default_rng(seed)
    train = train.iloc[np.sort(rng.choice(len(train), train_rows, replace=False))].tolist()
    dev = dev.tolist()[: dev_rows or None]
    return train, dev, rng


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    task = TASK_OF_TARGET[args.target]
    train, dev, rng = sample_sentences(args.source_dir, args.train_rows, args.dev_rows, args.seed)
    # Regression uses STS-B's pair schema: each sentence with a second one drawn from the same split.
    second = [[s[i] for i in rng.permutation(len(s))] for s in (train, dev)] if task == "stsb" else None
    texts = train + dev
    inputs = (texts, second[0] + second[1]) if second else texts

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=1).eval()
    targets = resolve_targets(model, list(MATRIX_PATTERNS))
    names = planted_targets(targets, args.planted, args.spread_evenly)
    h_base = cls_features(model.base_model, tokenizer, inputs, args.max_seq_length, args.batch_size)
    modules = dict(model.named_modules())
    base_norms = {name: float(modules[name].weight.detach().double().norm()) for name in names}
    if args.spread_evenly:  # the sum of squared relative norms of the positive control, spread evenly
        norm = args.relative_norm * math.sqrt(len(args.planted) / len(names))
        rank = args.spread_rank
    else:
        norm, rank = args.relative_norm, args.rank
    planted = plant(model, names, rank, norm, args.spectrum, args.seed)
    h_teacher = cls_features(model.base_model, tokenizer, inputs, args.max_seq_length, args.batch_size)

    n_train = len(train)
    w, unexplained = readout_direction(h_teacher[:n_train], h_base[:n_train], args.ridge, args.readout)
    raw_readout = h_teacher @ w
    centre, scale = float(raw_readout[:n_train].mean()), float(raw_readout[:n_train].std())
    readout = (raw_readout - centre) / scale
    threshold = float(np.median(readout[:n_train]))
    labels = (readout > threshold).astype(int) if args.target == "class" else 2.5 + readout
    probes = {kind: probe_scores(h, labels[:n_train], labels[n_train:], n_train, args.target, args.ridge)
              for kind, h in (("base_features", h_base), ("teacher_features", h_teacher))}

    (out / task).mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", slice(0, n_train)), ("validation", slice(n_train, None))):
        frame = {"sentence": texts[rows]} if task == "sst2" else {"sentence1": texts[rows], "sentence2": inputs[1][rows]}
        frame.update(label=labels[rows].tolist(), idx=list(range(len(texts[rows]))))
        pd.DataFrame(frame).to_parquet(out / task / f"{split}.parquet", index=False)
    tensors = {f"{name}.{part}": t.contiguous() for name, (u, s, v) in planted.items()
               for part, t in (("U", u), ("sigma", s), ("V", v))}
    save_file({**tensors, "readout.direction": torch.from_numpy(np.ascontiguousarray(w))},
              str(out / "planted_update.safetensors"))
    oracle = {name: (rank if name in planted else args.oracle_floor) for name in targets}
    (out / "oracle_pattern.json").write_text(json.dumps(oracle, indent=1) + "\n")
    truth = {
        "task": task, "target": args.target, "seed": args.seed, "model": str(args.model_name_or_path),
        "control": "negative (spread evenly)" if args.spread_evenly else "positive (planted)",
        "planted": {name: {"layer": module_matrix(name)[0], "matrix": module_matrix(name)[1], "rank": rank,
                           "relative_norm": float(s.norm() / base_norms[name]), "singular_values": s.tolist(),
                           "weight_norm": base_norms[name], "d_in": modules[name].in_features,
                           "d_out": modules[name].out_features} for name, (u, s, v) in planted.items()},
        "num_adapted_matrices": len(targets),
        "readout": {"feature": "last layer [CLS]", "direction": args.readout, "unexplained_share": unexplained, "centre": centre, "scale": scale,
                    "class_threshold": threshold if args.target == "class" else None,
                    "direction_sha256": hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest()},
        "probes": probes, "rows": {"train": n_train, "validation": len(dev)},
        "label_balance": float(np.mean(labels[:n_train] > (0.5 if args.target == "class" else 2.5))),
        "args": vars(args),
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"{out}: {task} {n_train}/{len(dev)} rows; planted {len(planted)} matrices at rank {rank}; linear probe on dev: "
          f"base features {probes['base_features']}, teacher features {probes['teacher_features']}")
    return truth


if __name__ == "__main__":
    main()
