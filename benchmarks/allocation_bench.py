#!/usr/bin/env python
"""Which signal finds the planted matrices? Every signal x timing on planted controls, signals only (CPU-minutes).

    python3 -m benchmarks.allocation_bench --planting outputs/planted [more plantings] --out_dir outputs/alloc_bench

Each planting is a folder written by data/make_planted.py (ground_truth.json, oracle_pattern.json, <task>/train.parquet).
Per planting x signal x timing the base model gets a fresh uniform LoRA adapter (rank --lora_r on every matrix the
planting's model has, the same seed every time) and `gradnorm_rank.GradNormRank` collects the signal on the same
--batches batches of the planting's training rows:
- calibration: `GradNormRank.calibrate` over the batches (no optimizer step);
- warmup: --batches AdamW steps (learning rate --learning_rate) with the in-training EMA, then the allocation.
Nothing is trained further. Reported from the signal's shares s_k (GradNormRank.scores): recall at k = the planted
count (ties at random, analysis.allocation.recall_at_k), the mean place of the planted matrices (1 = top, ties
averaged), the share of the score mass on them, the Spearman correlation of the shares with the oracle's rank pattern,
and the cost: the signal's seconds (MethodOverhead's signal part: under calibration its whole forward/backward
passes, under the warm-up its hooks and norms only), the bytes of the signal's own accumulators, and on CUDA the
peak memory of the run. `update_concentration` has no calibration row (it reads a trained update).

Written to --out_dir: allocation_bench.md (the table), allocation_bench.csv (the same rows), scores.csv (every
matrix's share per planting x signal x timing) and heatmap_<planting>_<timing>.png (shares, signals x matrices, the
planted matrices marked).
"""

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, spearmanr

from analysis.allocation import GroundTruth, recall_at_k
from gradnorm_rank import GradNormRank, GradNormRankConfig, LoopHost, choices
from gradnorm_rank.signals import NEEDS_TRAINING
from harness.adapters import MATRIX_PATTERNS, module_matrix, resolve_targets

TIMINGS = ("calibration", "warmup")
# ground_truth.json's target -> (the task's text columns, the head's outputs, the loss of the model's forward).
# A new target (e.g. a vector read-out) adds its row here.
TARGETS = {"class": (("sentence",), 2, "single_label_classification"),
           "regression": (("sentence1", "sentence2"), 1, "regression")}
DEFAULT_SIGNALS = [s for s in choices("signal") if s != "delta"]  # delta is weight_grad under its older name


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planting", nargs="+", required=True, help="Folders written by data/make_planted.py.")
    p.add_argument("--out_dir", required=True, help="Where the table, CSVs and figures go.")
    p.add_argument("--model_name_or_path", default=None,
                   help="The base model (default: the one ground_truth.json names).")
    p.add_argument("--signals", nargs="+", default=DEFAULT_SIGNALS, choices=choices("signal"))
    p.add_argument("--timings", nargs="+", default=list(TIMINGS), choices=TIMINGS)
    p.add_argument("--batches", type=int, default=8, help="Calibration batches = warm-up steps.")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--lora_r", type=int, default=2, help="The uniform starting rank (the budget: r x matrices).")
    p.add_argument("--lora_alpha", type=float, default=None, help="Default: 2 x --lora_r.")
    p.add_argument("--learning_rate", type=float, default=5e-4, help="AdamW's, in the warm-up.")
    p.add_argument("--score_norm", default="raw", choices=choices("score_norm"),
                   help="For the norm signals (the share signals always use raw).")
    p.add_argument("--seed", type=int, default=0, help="Adapter initialisation, batch order and the nulls' seed.")
    args = p.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1 or args.lora_r < 1:
        p.error("--batches, --batch_size and --lora_r must be >= 1.")
    return args


def read_planting(folder, tokenizer, args):
    """(GroundTruth, the target's row of TARGETS, the tokenised batches) of one planting folder."""
    path = Path(folder, "ground_truth.json")
    if not path.is_file():
        raise SystemExit(f"--planting {folder}: no ground_truth.json (not a data/make_planted.py folder).")
    truth = json.loads(path.read_text())
    if truth.get("target") not in TARGETS:
        raise SystemExit(f"{path}: target {truth.get('target')!r}; this benchmark knows {', '.join(TARGETS)}.")
    columns, num_labels, problem = TARGETS[truth["target"]]
    rows = pd.read_parquet(Path(folder, truth["task"], "train.parquet"))
    needed = args.batches * args.batch_size
    if len(rows) < needed:
        raise SystemExit(f"{folder}: {len(rows)} training rows, fewer than --batches x --batch_size = {needed}.")
    rows = rows.iloc[np.random.default_rng(args.seed).permutation(len(rows))[:needed]]
    label_dtype = torch.long if num_labels > 1 else torch.float32
    batches = []
    for start in range(0, needed, args.batch_size):
        part = rows.iloc[start:start + args.batch_size]
        batch = tokenizer(*[part[c].astype(str).tolist() for c in columns], truncation=True,
                          max_length=args.max_seq_length, padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor(part["label"].to_numpy(), dtype=label_dtype)
        batches.append(dict(batch))
    return truth, (num_labels, problem), GroundTruth.read(path), batches


def fresh_adapter(base, targets, args):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    config = LoraConfig(task_type="SEQ_CLS", r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
                        target_modules=targets, lora_dropout=0.0)
    return get_peft_model(copy.deepcopy(base), config)


def signal_config(signal, timing, args):
    norm = "raw" if signal in ("activation_variance", "update_concentration", "random") else args.score_norm
    when = {"calibration_steps": args.batches} if timing == "calibration" else {"warmup_steps": args.batches}
    return GradNormRankConfig(signal=signal, score_norm=norm, signal_seed=args.seed, **when)


def collect(base, targets, batches, signal, timing, args):
    """One signal x timing on a fresh adapter: the GradNormRank after its allocation, and the CUDA peak (None)."""
    model = fresh_adapter(base, targets, args)
    grn = GradNormRank(model, signal_config(signal, timing, args))
    buffer = grn.signal.buffer_bytes()
    loss = lambda batch: model(**batch).loss  # noqa: E731
    if timing == "calibration":
        grn.calibrate(iter(batches), loss)
    else:
        params = lambda: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
        optimizer = torch.optim.AdamW(params(), lr=args.learning_rate)
        constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # noqa: E731
        host = LoopHost(optimizer, constant(optimizer), lambda: torch.optim.AdamW(params(), lr=args.learning_rate),
                        constant)
        grn.attach(host)
        model.train()
        for step, batch in enumerate(batches, start=1):
            loss(batch).backward()
            grn.observe_gradients()
            host.optimizer.step()
            grn.after_optimizer_step()
            host.lr_scheduler.step()
            host.optimizer.zero_grad(set_to_none=True)
            grn.maybe_reallocate(step)
    return grn, buffer


def placement(scores: dict, truth: GroundTruth) -> dict:
    names = list(scores)
    values = np.array([scores[n] for n in names])
    places = rankdata(-values, method="average")
    planted = [n in truth.planted for n in names]
    oracle = np.array([truth.oracle[n] for n in names], dtype=float)
    rho = spearmanr(values, oracle).statistic if values.std() > 0 else float("nan")
    return {"recall_at_k": recall_at_k(scores, set(truth.planted)),
            "mean_planted_place": float(places[planted].mean()),
            "planted_score_share": float(values[planted].sum() / values.sum()) if values.sum() > 0 else float("nan"),
            "spearman_oracle": float(rho)}


def run_planting(folder, args):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    truth_json = json.loads(Path(folder, "ground_truth.json").read_text())
    model_path = args.model_name_or_path or truth_json["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    _, (num_labels, problem), truth, batches = read_planting(folder, tokenizer, args)
    torch.manual_seed(args.seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels, problem_type=problem)
    targets = resolve_targets(base, list(MATRIX_PATTERNS))
    rows, scores = [], []
    for timing in args.timings:
        for signal in args.signals:
            if timing == "calibration" and signal in NEEDS_TRAINING:
                continue
            cuda = torch.cuda.is_available() and next(base.parameters()).is_cuda
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            grn, buffer = collect(base, targets, batches, signal, timing, args)
            wall = time.perf_counter() - start
            shares = grn.scores()
            rows.append({"planting": Path(folder).name, "timing": timing, "signal": signal,
                         "score_norm": grn.config.score_norm, "planted": len(truth.planted), "matrices": len(shares),
                         **placement(shares, truth), "signal_seconds": grn.overhead.signal_seconds,
                         "wall_seconds": wall, "signal_buffer_mb": buffer / 2**20,
                         "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None})
            scores += [{"planting": Path(folder).name, "timing": timing, "signal": signal, "module": name,
                        "planted": name in truth.planted, "share": share} for name, share in shares.items()]
            print(f"{Path(folder).name} {timing} {signal}: recall {rows[-1]['recall_at_k']:.2f}, "
                  f"{rows[-1]['signal_seconds']:.1f} s", flush=True)
    return rows, scores


def heatmap(scores: pd.DataFrame, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scores.pivot(index="signal", columns="module", values="share")
    modules = sorted(table.columns, key=lambda n: module_matrix(n) or (0, n))
    table = table[modules]
    planted = set(scores.loc[scores["planted"], "module"])
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(modules)), 0.45 * len(table) + 2))
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap="viridis")
    labels = ["{}:{}".format(*module_matrix(n)) if module_matrix(n) else n for n in modules]
    ax.set_xticks(range(len(modules)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(table)), table.index)
    for i, name in enumerate(modules):
        if name in planted:
            ax.get_xticklabels()[i].set_color("red")
            ax.add_patch(plt.Rectangle((i - 0.5, -0.5), 1, len(table), fill=False, edgecolor="red", linewidth=1.5))
    fig.colorbar(image, ax=ax, label="share of the score")
    ax.set_title(f"{path.stem}: planted matrices in red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(table: pd.DataFrame) -> str:
    columns = ["planting", "timing", "signal", "recall_at_k", "mean_planted_place", "planted_score_share",
               "spearman_oracle", "signal_seconds", "signal_buffer_mb", "cuda_peak_mb"]

    def cell(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in table.to_dict("records")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, scores = [], []
    for folder in args.planting:
        more_rows, more_scores = run_planting(folder, args)
        rows += more_rows
        scores += more_scores
    table, scores = pd.DataFrame(rows), pd.DataFrame(scores)
    table.to_csv(out / "allocation_bench.csv", index=False)
    scores.to_csv(out / "scores.csv", index=False)
    markdown = to_markdown(table)
    (out / "allocation_bench.md").write_text(markdown)
    for (planting, timing), part in scores.groupby(["planting", "timing"]):
        heatmap(part, out / f"heatmap_{planting}_{timing}.png")
    print(markdown, end="")
    return table, scores


if __name__ == "__main__":
    main()
