#!/usr/bin/env python
"""A planted-structure control task: labels that a known low-rank change of chosen matrices explains.

    python3 -m data.make_planted --out_dir outputs/planted --model_name_or_path <MiniLM> --seed 0   # from the repo root
    python run_glue_peft.py --task sst2 --dataset_dir outputs/planted ...           # --target class (default)
    python run_glue_peft.py --task stsb --dataset_dir outputs/planted ...           # --target regression
    python run_glue_peft.py --task planted --dataset_dir outputs/planted ...        # --target features|token_features

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

Vector targets (docs/controls.md; the format is fixed in the harness's planted task): `--target features` reads
--num_outputs K directions off the teacher's last-layer [CLS] vector, `--target token_features` off its last hidden
state at every token (K per token). The directions (--feature_directions) are the identity when K is the hidden size
(every hidden dim that varies: a constant dim cannot be standardised, and is left out and recorded), else the top-K
principal directions of the teacher's change (h_T - h_B) or random orthonormal ones; each output is
standardised on the training rows (tokens), and the affine read-out (readout.weight, readout.bias) is written with the
planted update. OUT/planted/{train,validation}.parquet: sentence, idx, label (a list of floats), base_sq_error (the
base model's squared error of the row under the read-out, summed over its outputs and tokens: the denominator of the
harness's eval_recovered; base_mse per split in ground_truth.json). By default the
planted updates there have equal EFFECT (--equal effect): each single update alone moves the target by the same RMS on
--effect_rows training rows, with the sum of squared relative norms that --relative_norm gives every matrix; the
norms are found by a fixed-point rescaling (--effect_iterations) and each matrix's norm and effect are recorded.
--num_planted N draws N matrices per seed, spread over layers and matrix types (instead of --planted).
"""

import argparse
import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from harness.adapters import MATRIX_PATTERNS, module_matrix, resolve_targets

ROOT = Path(__file__).resolve().parents[1]

TASK_OF_TARGET = {"class": "sst2", "regression": "stsb", "features": "planted", "token_features": "planted"}
VECTOR_TARGETS = ("features", "token_features")
FEATURE_DIRECTIONS = ("auto", "identity", "moved_most", "random")
DEFAULT_PLANTED = ["1:value", "2:ffn_in", "3:attention_output", "4:ffn_out"]  # two small, two large matrices


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="Where the task folder and the ground truth go.")
    p.add_argument("--model_name_or_path", required=True, help="The base model (a local folder; the packaged MiniLM).")
    p.add_argument("--source_dir", default=str(ROOT / "data" / "glue" / "sst2"),
                   help="SST-2 parquet files (train.parquet, validation.parquet) whose sentences are labelled.")
    p.add_argument("--planted", nargs="+", default=None,
                   help=f"LAYER:MATRIX of each planted matrix; MATRIX from {', '.join(MATRIX_PATTERNS)} "
                        f"(default {' '.join(DEFAULT_PLANTED)}).")
    p.add_argument("--num_planted", type=int, default=None,
                   help="Instead of --planted: N matrices drawn per --seed, spread over layers and matrix types.")
    p.add_argument("--rank", type=int, default=8, help="Rank K of each planted update.")
    p.add_argument("--relative_norm", type=float, default=None,
                   help="||dW||_F / ||W||_F of each planted update (default 1 for class/regression, 0.25 for the "
                        "vector targets); under --equal effect, the root mean square of the planted matrices' ones.")
    p.add_argument("--spectrum", choices=("flat", "decaying"), default="flat",
                   help="Singular values of each update: all equal, or 1, 1/2, ..., 1/K (before scaling).")
    p.add_argument("--spread_evenly", action="store_true",
                   help="Negative control: the same sum of squared relative norms over every adapted matrix, at "
                        "--spread_rank (under --equal effect, with equal effects there too).")
    p.add_argument("--spread_rank", type=int, default=2, help="Rank of each update under --spread_evenly.")
    p.add_argument("--target", choices=tuple(TASK_OF_TARGET), default="class",
                   help="class: SST-2 schema, label = read-out above its training median; regression: STS-B schema "
                        "(sentence pairs), label = the read-out scaled to mean 2.5, std 1; features: K read-outs of the "
                        "teacher's [CLS] vector; token_features: K read-outs of its last hidden state at every token.")
    p.add_argument("--num_outputs", type=int, default=None,
                   help="K, the read-outs of a vector target (1..hidden size; default: every hidden dim that varies).")
    p.add_argument("--feature_directions", choices=FEATURE_DIRECTIONS, default="auto",
                   help="Directions of a vector target's read-outs: identity (every hidden dim that varies), moved_most (the top-K "
                        "principal directions of h_T - h_B on the training rows) or random (orthonormal, per --seed); "
                        "auto: identity when K is the hidden size, else moved_most.")
    p.add_argument("--equal", choices=("norm", "effect"), default=None,
                   help="What the planted updates share: the relative norm, or the effect on the target (the RMS change "
                        "of the standardised outputs when one update alone is planted). Default: effect for the vector "
                        "targets, norm for class/regression (effect needs a vector target).")
    p.add_argument("--effect_rows", type=int, default=256, help="Training rows the effects are measured on.")
    p.add_argument("--effect_iterations", type=int, default=3,
                   help="Rounds of the fixed-point rescaling to equal effect (norm_k <- norm_k / effect_k, renormalised).")
    p.add_argument("--train_rows", type=int, default=12000, help="Training rows (distinct sentences of the source).")
    p.add_argument("--dev_rows", type=int, default=None, help="Dev rows (default: the whole source dev split).")
    p.add_argument("--max_seq_length", type=int, default=128, help="As the runs tokenise.")
    p.add_argument("--readout", choices=READOUTS, default="residual_pc",
                   help="The direction of the teacher's [CLS] feature that labels are read along (readout_direction).")
    p.add_argument("--ridge", type=float, default=1e-3, help="Ridge of the base-feature regression and of the probes.")
    p.add_argument("--oracle_floor", type=int, default=1, help="Rank of the non-planted matrices in oracle_pattern.json.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the planted updates and the sentence sample.")
    p.add_argument("--batch_size", type=int, default=128, help="Forward batch size.")
    args = p.parse_args(argv)
    vector = args.target in VECTOR_TARGETS
    args.relative_norm = args.relative_norm if args.relative_norm is not None else (0.25 if vector else 1.0)
    args.equal = args.equal or ("effect" if vector else "norm")
    check_args(args)
    return args


def check_args(args):
    """One line per meaningless setting, before any model is loaded."""
    positive = {"--rank": args.rank, "--spread_rank": args.spread_rank, "--train_rows": args.train_rows,
                "--max_seq_length": args.max_seq_length, "--batch_size": args.batch_size, "--effect_rows": args.effect_rows}
    for flag, value in positive.items():
        if value < 1:
            raise SystemExit(f"{flag} {value}: must be at least 1 (a rank-0 or empty planting plants nothing).")
    if not (math.isfinite(args.relative_norm) and args.relative_norm > 0):
        raise SystemExit(f"--relative_norm {args.relative_norm}: must be a positive number (0 plants nothing).")
    if args.dev_rows is not None and args.dev_rows < 1:
        raise SystemExit(f"--dev_rows {args.dev_rows}: must be at least 1.")
    if args.planted is not None and args.num_planted is not None:
        raise SystemExit("--planted and --num_planted both given: name the matrices or draw them, not both.")
    if args.num_planted is not None and args.num_planted < 1:
        raise SystemExit(f"--num_planted {args.num_planted}: must be at least 1.")
    vector = args.target in VECTOR_TARGETS
    if not vector and (args.num_outputs is not None or args.feature_directions != "auto"):
        raise SystemExit(f"--num_outputs/--feature_directions apply to --target features|token_features, not {args.target}.")
    if args.num_outputs is not None and args.num_outputs < 1:
        raise SystemExit(f"--num_outputs {args.num_outputs}: must be at least 1.")
    if args.equal == "effect" and not vector:
        raise SystemExit(f"--equal effect needs a vector target (features or token_features), not --target {args.target}.")
    if args.effect_iterations < 0:
        raise SystemExit(f"--effect_iterations {args.effect_iterations}: must be 0 or more.")


def planted_targets(targets, specs, spread_evenly):
    """Module paths of the planted matrices, from LAYER:MATRIX specs (or every target under --spread_evenly)."""
    if spread_evenly:
        return list(targets)
    by_place = {module_matrix(name): name for name in targets}
    chosen = []
    for spec in specs:
        layer, _, matrix = spec.partition(":")
        if not layer.isdigit() or matrix not in MATRIX_PATTERNS:
            raise SystemExit(f"--planted {spec}: expected LAYER:MATRIX with MATRIX one of {', '.join(MATRIX_PATTERNS)}.")
        if (int(layer), matrix) not in by_place:
            raise SystemExit(f"--planted {spec}: the model has no layer {layer} {matrix} matrix.")
        chosen.append(by_place[(int(layer), matrix)])
    if len(set(chosen)) != len(chosen):
        raise SystemExit(f"--planted names a matrix twice: {specs}.")
    return chosen


def draw_planted(targets, count, seed):
    """--num_planted: `count` adapted matrices drawn per seed and spread out. Each pick is among the matrices whose layer
    and type were picked least so far (the sum of both counts), at random among ties; returned in model order."""
    if count > len(targets):
        raise SystemExit(f"--num_planted {count}: the model has only {len(targets)} adapted matrices.")
    rng = np.random.default_rng([seed, 26])
    left = [module_matrix(name) for name in targets]
    layers, types, chosen = Counter(), Counter(), set()
    for _ in range(count):
        cost = [layers[layer] + types[matrix] for layer, matrix in left]
        best = [place for place, c in zip(left, cost) if c == min(cost)]
        layer, matrix = best[rng.integers(len(best))]
        left.remove((layer, matrix))
        layers[layer] += 1
        types[matrix] += 1
        chosen.add((layer, matrix))
    return [name for name in targets if module_matrix(name) in chosen]


def chosen_matrices(targets, args):
    """(the planted module paths, how many matrices the positive control plants: the negative control's budget)."""
    if args.num_planted is not None:
        positive = draw_planted(targets, args.num_planted, args.seed)
    else:
        positive = planted_targets(targets, args.planted or DEFAULT_PLANTED, False)
    return (list(targets) if args.spread_evenly else positive), len(positive)


def orthonormal(rows, cols, generator):
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a unique QR: the distribution is Haar


def draw_updates(modules, names, rank, spectrum, seed):
    """{name: (U, singular values of unit norm, V)} (float64): U, V random orthonormal, per seed."""
    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for name in names:
        d_out, d_in = modules[name].weight.shape
        if rank > min(d_out, d_in):
            raise SystemExit(f"--rank {rank} exceeds {name}'s smaller side {min(d_out, d_in)}.")
        u, v = orthonormal(d_out, rank, generator), orthonormal(d_in, rank, generator)
        shape = torch.ones(rank, dtype=torch.float64) if spectrum == "flat" else 1.0 / torch.arange(1, rank + 1).double()
        updates[name] = (u, shape / shape.norm(), v)
    return updates


def scaled_updates(updates, relative_norms, weight_norms):
    """The updates at ||dW||_F = relative_norm x ||W||_F (||U diag(s) V^T||_F = ||s||_2 for orthonormal U, V)."""
    return {name: (u, shape * (relative_norms[name] * weight_norms[name]), v) for name, (u, shape, v) in updates.items()}


def set_weights(modules, originals, planted):
    """Each weight in `originals` := the original plus its update in `planted` (if any), in place: restores the others."""
    with torch.no_grad():
        for name, original in originals.items():
            weight = original.double()
            if name in planted:
                u, sigma, v = planted[name]
                weight = weight + (u * sigma) @ v.T
            modules[name].weight.copy_(weight.to(original.dtype))


def plant(model, names, rank, relative_norm, spectrum, seed):
    """Add dW_k = U diag(sigma) V^T to each named Linear in place; return {name: (U, sigma, V)} (float64)."""
    modules = dict(model.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in names}
    norms = {name: float(w.double().norm()) for name, w in originals.items()}
    planted = scaled_updates(draw_updates(modules, names, rank, spectrum, seed), dict.fromkeys(names, relative_norm), norms)
    set_weights(modules, originals, planted)
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


@torch.no_grad()
def token_states(encoder, tokenizer, texts, max_seq_length, batch_size):
    """The last hidden state at every real token (special tokens included) of each sentence, float64, rows concatenated
    in input order, and each row's token count. Batches are of length-sorted sentences (less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    per_row = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], truncation=True, max_length=max_seq_length, padding=True,
                          return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state.double().numpy()
        for j, row in enumerate(rows):
            per_row[row] = hidden[j, :int(batch["attention_mask"][j].sum())]
    return np.concatenate(per_row), np.array([len(h) for h in per_row])


def target_states(encoder, tokenizer, texts, max_seq_length, batch_size, per_token):
    """(the hidden states a vector target reads: one row per sentence ([CLS]) or per token, each sentence's count)."""
    if per_token:
        return token_states(encoder, tokenizer, texts, max_seq_length, batch_size)
    return cls_features(encoder, tokenizer, texts, max_seq_length, batch_size), np.ones(len(texts), dtype=int)


def varying_dims(h):
    """The hidden dims whose std over the entries exceeds 1e-6 x the median dim's (a LayerNorm can hold a dim constant:
    MiniLM's last layer holds 3 of 384, std < 1e-8 against ~0.3)."""
    std = h.std(0)
    return np.flatnonzero(std > 1e-6 * np.median(std))


def feature_readout(h_teacher, h_base, directions, fixed):
    """The standardised affine read-out (weight K x hidden, bias K) of a vector target, fit on training entries: outputs
    along `fixed` directions (hidden x K: random), along every hidden dim that varies (identity), or along the top-K
    principal directions of the change h_T - h_B (moved_most; K = fixed's width), each scaled to mean 0 and variance 1
    over the entries."""
    if directions == "identity":
        fixed = np.eye(h_teacher.shape[1])[:, varying_dims(h_teacher)]
    if directions == "moved_most":
        change = (h_teacher - h_base) - (h_teacher - h_base).mean(0)
        vectors = np.linalg.eigh(change.T @ change)[1][:, ::-1][:, :fixed.shape[1]]
        # the sign of each eigenvector: its largest entry positive (eigh's sign is arbitrary)
        fixed = vectors * np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    raw = h_teacher @ fixed
    mean, std = raw.mean(0), raw.std(0)
    if (std <= 1e-12 * max(1.0, np.abs(mean).max())).any():
        raise SystemExit(f"read-out output {int(np.argmin(std))} has no variance on the training rows: choose another "
                         "--feature_directions or --num_outputs.")
    return np.ascontiguousarray(fixed.T / std[:, None]), -mean / std


def effects_of_singles(states, modules, originals, planted, weight, h_base):
    """{name: RMS change of the read-out outputs (entries x K) when `name`'s update alone is planted}; weights restored."""
    effects = {}
    for name in planted:
        set_weights(modules, originals, {name: planted[name]})
        effects[name] = float(np.sqrt(np.mean(((states()[0] - h_base) @ weight.T) ** 2)))
    set_weights(modules, originals, {})
    return effects


def equal_effect_norms(states, h_base, modules, originals, updates, weight_norms, budget, directions, fixed,
                       iterations):
    """Relative norms at which each update alone moves the target (read out as fit on the joint teacher) by the same
    RMS, with sum of squared relative norms = `budget`: `iterations` rounds of norm_k <- norm_k / effect_k, rescaled.
    `states()`: the current model's target states on the rows the effects are measured on; h_base: the base model's."""
    norms = dict.fromkeys(updates, math.sqrt(budget / len(updates)))
    for _ in range(iterations):
        planted = scaled_updates(updates, norms, weight_norms)
        set_weights(modules, originals, planted)
        weight, _ = feature_readout(states()[0], h_base, directions, fixed)
        effects = effects_of_singles(states, modules, originals, planted, weight, h_base)
        norms = {name: norm / effects[name] for name, norm in norms.items()}
        total = sum(n ** 2 for n in norms.values())
        norms = {name: n * math.sqrt(budget / total) for name, n in norms.items()}
    return norms


def readout_directions(args, hidden):
    """(the resolved --feature_directions, the fixed hidden x K directions: random ones, or a placeholder of width K for
    moved_most and identity)."""
    k = args.num_outputs or hidden
    if k > hidden:
        raise SystemExit(f"--num_outputs {k}: the model's hidden size is {hidden}; at most that many read-outs.")
    directions = args.feature_directions
    if directions == "auto":
        directions = "identity" if k == hidden else "moved_most"
    if directions == "identity" and k != hidden:
        raise SystemExit(f"--feature_directions identity reads every hidden dim: --num_outputs {k} is not the hidden "
                         f"size {hidden} (leave it out).")
    if directions == "random":
        return directions, orthonormal(hidden, k, torch.Generator().manual_seed(args.seed + 1)).numpy()
    return directions, np.eye(hidden)[:, :k]


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


def r2_by_output(predicted, labels):
    """Mean over outputs (columns) of R^2 = 1 - SSE / SST."""
    sse = ((labels - predicted) ** 2).sum(0)
    sst = ((labels - labels.mean(0)) ** 2).sum(0)
    return float(np.mean(1 - sse / sst))


def write_vector_split(path, sentences, labels, lengths, base_sq_error):
    """sentence, idx, label (list<float64>: a row's entries x K outputs, row-major), base_sq_error (float64: the base
    model's squared error of the row, `row_sq_errors`) of one split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ends = np.cumsum(lengths)
    rows = [labels[end - n:end].reshape(-1) for end, n in zip(ends, lengths)]
    table = pa.table({"sentence": pa.array(sentences, pa.string()), "idx": pa.array(range(len(sentences)), pa.int64()),
                      "label": pa.array(rows, pa.list_(pa.float64())),
                      "base_sq_error": pa.array(base_sq_error, pa.float64())})
    pq.write_table(table, path)


def row_sq_errors(predicted, labels, lengths):
    """Per row (sentence), the squared error of `predicted` against `labels` (entries x K, rows' entries in order),
    summed over its entries (one, or its real tokens) and the K outputs."""
    return np.bincount(np.repeat(np.arange(len(lengths)), lengths), weights=((predicted - labels) ** 2).sum(1),
                       minlength=len(lengths))


def vector_planting(args, model, tokenizer, names, budget, train, dev):
    """The teacher (planted in `model`), its read-out and labels of a vector target: (planted updates, effects, base
    weight norms, ground-truth entries, (readout weight, readout bias, labels per entry, entries per row))."""
    from functools import partial

    modules = dict(model.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in names}
    weight_norms = {name: float(w.double().norm()) for name, w in originals.items()}
    rank = args.spread_rank if args.spread_evenly else args.rank
    directions, fixed = readout_directions(args, model.config.hidden_size)
    states = partial(target_states, model.base_model, tokenizer, max_seq_length=args.max_seq_length,
                     batch_size=args.batch_size, per_token=args.target == "token_features")
    updates = draw_updates(modules, names, rank, args.spectrum, args.seed)
    effect_states = partial(states, train[:args.effect_rows])
    effect_base = effect_states()[0]
    constant = sorted(set(range(effect_base.shape[1])) - set(varying_dims(effect_base)))
    if directions == "identity" and constant and args.num_outputs is not None:
        raise SystemExit(f"--num_outputs {args.num_outputs}: hidden dims {constant} are constant on the training rows; "
                         f"leave --num_outputs out to read the {effect_base.shape[1] - len(constant)} that vary.")
    iterations = args.effect_iterations if args.equal == "effect" else 0
    norms = equal_effect_norms(effect_states, effect_base, modules, originals, updates, weight_norms,
                               budget * args.relative_norm ** 2, directions, fixed, iterations)
    planted = scaled_updates(updates, norms, weight_norms)
    h_base, lengths = states(train + dev)
    set_weights(modules, originals, planted)
    h_teacher, _ = states(train + dev)
    n_entries = int(lengths[:len(train)].sum())
    weight, bias = feature_readout(h_teacher[:n_entries], h_base[:n_entries], directions, fixed)
    effects = effects_of_singles(effect_states, modules, originals, planted, weight, effect_base)
    set_weights(modules, originals, planted)  # the teacher stays planted, as under the scalar targets
    labels = h_teacher @ weight.T + bias
    start = h_base @ weight.T + bias
    readout = {"kind": directions, "feature": "last layer [CLS]" if args.target == "features" else "last layer, every token",
               "num_outputs": weight.shape[0], "standardised_on": f"{n_entries} training entries",
               "constant_dims_left_out": sorted(set(range(weight.shape[1])) - set(varying_dims(h_teacher[:n_entries])))
               if directions == "identity" else [],
               "weight_sha256": hashlib.sha256(weight.tobytes()).hexdigest()}
    truth = {"readout": readout, "equal": args.equal, "effect_rows": min(args.effect_rows, len(train)),
             "effect_iterations": iterations, "effect_spread": max(effects.values()) / min(effects.values()),
             "joint_effect": float(np.sqrt(np.mean((labels[:n_entries] - start[:n_entries]) ** 2))),
             "start_r2": {"train": r2_by_output(start[:n_entries], labels[:n_entries]),
                          "validation": r2_by_output(start[n_entries:], labels[n_entries:])},
             "tokens": {"train": n_entries, "validation": int(lengths[len(train):].sum())}}
    base_sq_error = row_sq_errors(start, labels, lengths)
    truth["base_mse"] = {split: float(base_sq_error[rows].sum() / (truth["tokens"][split] * weight.shape[0]))
                         for split, rows in (("train", slice(0, len(train))), ("validation", slice(len(train), None)))}
    return planted, effects, weight_norms, truth, (weight, bias, labels, lengths, base_sq_error)


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    out = Path(args.out_dir)
    task = TASK_OF_TARGET[args.target]
    train, dev, rng = sample_sentences(args.source_dir, args.train_rows, args.dev_rows, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_name_or_path, num_labels=1).eval()
    targets = resolve_targets(model, list(MATRIX_PATTERNS))
    names, budget = chosen_matrices(targets, args)
    if args.target in VECTOR_TARGETS:
        return main_vector(args, out, model, tokenizer, targets, names, budget, train, dev)
    # Regression uses STS-B's pair schema: each sentence with a second one drawn from the same split.
    second = [[s[i] for i in rng.permutation(len(s))] for s in (train, dev)] if task == "stsb" else None
    texts = train + dev
    inputs = (texts, second[0] + second[1]) if second else texts

    h_base = cls_features(model.base_model, tokenizer, inputs, args.max_seq_length, args.batch_size)
    modules = dict(model.named_modules())
    base_norms = {name: float(modules[name].weight.detach().double().norm()) for name in names}
    if args.spread_evenly:  # the sum of squared relative norms of the positive control, spread evenly
        norm = args.relative_norm * math.sqrt(budget / len(names))
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
    write_update(out, planted, {"readout.direction": torch.from_numpy(np.ascontiguousarray(w))})
    write_oracle(out, targets, planted, rank, args.oracle_floor)
    truth = {
        "task": task, "target": args.target, "seed": args.seed, "model": str(args.model_name_or_path),
        "control": "negative (spread evenly)" if args.spread_evenly else "positive (planted)",
        "planted": planted_entries(planted, modules, base_norms),
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


def planted_entries(planted, modules, base_norms, effects=None):
    """ground_truth.json's `planted`: per matrix its place, rank, singular values, norms (and effect, if measured)."""
    entries = {}
    for name, (u, s, v) in planted.items():
        entries[name] = {"layer": module_matrix(name)[0], "matrix": module_matrix(name)[1], "rank": len(s),
                         "relative_norm": float(s.norm() / base_norms[name]), "singular_values": s.tolist(),
                         "weight_norm": base_norms[name], "d_in": modules[name].in_features,
                         "d_out": modules[name].out_features}
        if effects is not None:
            entries[name]["effect"] = effects[name]
    return entries


def write_update(out, planted, extra):
    tensors = {f"{name}.{part}": t.contiguous() for name, (u, s, v) in planted.items()
               for part, t in (("U", u), ("sigma", s), ("V", v))}
    save_file({**tensors, **extra}, str(out / "planted_update.safetensors"))


def write_oracle(out, targets, planted, rank, floor):
    oracle = {name: (rank if name in planted else floor) for name in targets}
    (out / "oracle_pattern.json").write_text(json.dumps(oracle, indent=1) + "\n")


def main_vector(args, out, model, tokenizer, targets, names, budget, train, dev):
    """--target features|token_features: OUT/planted/*.parquet with list labels, the read-out in the update file."""
    planted, effects, base_norms, entries, (weight, bias, labels, lengths, base_sq_error) = vector_planting(
        args, model, tokenizer, names, budget, train, dev)
    (out / "planted").mkdir(parents=True, exist_ok=True)
    n_entries, n_train = int(lengths[:len(train)].sum()), len(train)
    write_vector_split(out / "planted" / "train.parquet", train, labels[:n_entries], lengths[:n_train],
                       base_sq_error[:n_train])
    write_vector_split(out / "planted" / "validation.parquet", dev, labels[n_entries:], lengths[n_train:],
                       base_sq_error[n_train:])
    write_update(out, planted, {"readout.weight": torch.from_numpy(weight), "readout.bias": torch.from_numpy(bias)})
    rank = args.spread_rank if args.spread_evenly else args.rank
    write_oracle(out, targets, planted, rank, args.oracle_floor)
    modules = dict(model.named_modules())
    truth = {"task": "planted", "target": args.target, "num_outputs": entries["readout"]["num_outputs"],
             "max_seq_length": args.max_seq_length, "seed": args.seed, "model": str(args.model_name_or_path),
             "control": "negative (spread evenly)" if args.spread_evenly else "positive (planted)",
             "planted": planted_entries(planted, modules, base_norms, effects), "num_adapted_matrices": len(targets),
             **entries, "rows": {"train": len(train), "validation": len(dev)}, "args": vars(args)}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(f"{out}: {args.target} x {truth['num_outputs']}, {len(train)}/{len(dev)} rows; planted {len(planted)} matrices "
          f"at rank {rank}, equal {args.equal} (effects within x{truth['effect_spread']:.3f}); the frozen read-out on "
          f"the base model: R^2 {truth['start_r2']['validation']:.3f}, MSE {truth['base_mse']['validation']:.4g} on dev")
    return truth


if __name__ == "__main__":
    main()
