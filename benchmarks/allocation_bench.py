#!/usr/bin/env python
"""Which signal finds the planted matrices? Every signal x timing on planted controls, signals only (CPU-minutes).

    python3 -m benchmarks.allocation_bench --planting outputs/planted [more plantings] --out_dir outputs/alloc_bench

Each planting is a folder written by data/make_planted.py. A vector planting (target features or token_features) is
run as the harness runs `--task planted` (planted_task.py): the base encoder with the planting's frozen affine
read-out, its batches from planted_task.VectorLabelCollator, and its MSE loss over the outputs (and real tokens). A
scalar planting (class, regression) is run as a sequence classifier (TARGETS).

Per planting and timing, ONE fresh uniform LoRA adapter (rank --lora_r on every matrix the planting's model has, the
same seed every time) carries one `gradnorm_rank.GradNormRank` per signal (each with its own hooks), and every
signal observes the same forward/backward passes:
- calibration: --calibration_batches batches, forward and backward with no optimizer step; each signal's value is
  the mean of its observations, as `GradNormRank.calibrate` takes it;
- warmup: --warmup_steps AdamW steps (constant learning rate --learning_rate, the harness's weight decay and gradient
  clipping), each signal's in-training EMA; the warm-up's first batches are calibration's.
The passes are shared because no signal changes them: the hooks only read, and calibration takes no optimizer step,
so each signal's shares are those of a GradNormRank run alone on the same seed and batches (test:
test_shared_passes_give_each_signal_its_own_runs_shares). Nothing is allocated, resized or trained further: the
shares s_k (GradNormRank.scores) are read where the allocation would read them.

Reported per planting x timing x signal (and score_norm): recall at k = the planted count (ties at random,
analysis.allocation.recall_at_k), the mean place of the planted matrices (1 = top, ties averaged), the share of the
score mass on them, the Spearman correlation of the shares with the oracle's rank pattern, and the cost:
- signal_seconds: the signal's own work, measured by its GradNormRank (MethodOverhead's signal part: its hooks and
  per-observation values) plus its shares at the allocation (scores(): update_concentration's SVDs, update_norm's
  r x r products); under calibration also the shared passes' forward and backward (pass_seconds, what calibration
  adds to a run's work);
- pass_seconds: the shared passes' wall-clock seconds less every signal's own work (forward, backward and, in the
  warm-up, the optimizer steps);
- signal_buffer_mb: the signal's own accumulators (Signal.buffer_bytes).
`update_concentration` and `update_norm` have no calibration row (they read a trained update). Reference rows
(timing `reference`): where ground_truth.json holds an `identifiability` block (data/identifiability.py), full
fine-tuning's planting-blind change scores of each matrix at the block's verdict step, as the block holds them (not
recomputed); they are no allocation signal.

Written to --out_dir: allocation_bench.md (the table), allocation_bench.csv (the same rows), scores.csv (every
matrix's share per planting x timing x signal) and heatmap_<planting>_<timing>.png (shares, signals x matrices, the
planted matrices marked).
"""

import argparse
import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, spearmanr

from analysis.allocation import GroundTruth, recall_at_k
from gradnorm_rank import GradNormRank, GradNormRankConfig, choices
from gradnorm_rank.config import NEEDS_TRAINING, SHARE_SIGNALS
from harness import planted_task
from harness.adapters import MATRIX_PATTERNS, module_matrix, resolve_targets
from harness.training_arguments import GlueTrainingArguments

TIMINGS = ("calibration", "warmup")
# A scalar planting's target -> (the task's text columns, the head's outputs, the loss of the model's forward).
# The vector targets (planted_task.TARGETS) are run through planted_task's model, collator and loss.
TARGETS = {"class": (("sentence",), 2, "single_label_classification"),
           "regression": (("sentence1", "sentence2"), 1, "regression")}
# delta is weight_grad under its older name; lora_b also under the two score normalisations that correct its width.
DEFAULT_SIGNALS = [s for s in choices("signal") if s != "delta"] + ["lora_b:per_rank_unit", "lora_b:per_sqrt_d_in"]
HARNESS = {f.name: f.default for f in dataclasses.fields(GlueTrainingArguments)}
# The planting-blind scores of full fine-tuning's change that the identifiability block holds per matrix.
REFERENCE_SCORES = ("relative_change", "top_k_share")


@dataclass(frozen=True)
class Spec:
    """One signal as benchmarked: its name and the score normalisation its shares are taken under."""

    signal: str
    score_norm: str

    @property
    def label(self) -> str:
        return self.signal if self.score_norm == "raw" else f"{self.signal}:{self.score_norm}"


def parse_spec(text: str, default_norm: str) -> Spec:
    """SIGNAL or SIGNAL:SCORE_NORM; a signal that gives shares is always raw."""
    signal, _, norm = text.partition(":")
    if signal not in choices("signal"):
        raise ValueError(f"--signals {text}: unknown signal {signal!r}; choose from {', '.join(choices('signal'))}.")
    if norm and norm not in choices("score_norm"):
        raise ValueError(f"--signals {text}: unknown score_norm {norm!r}; choose from {', '.join(choices('score_norm'))}.")
    if norm and norm != "raw" and signal in SHARE_SIGNALS:
        raise ValueError(f"--signals {text}: {signal} gives shares or ratios, not norms; its score_norm is raw.")
    return Spec(signal, norm or ("raw" if signal in SHARE_SIGNALS else default_norm))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planting", nargs="+", required=True, help="Folders written by data/make_planted.py.")
    p.add_argument("--out_dir", required=True, help="Where the table, CSVs and figures go.")
    p.add_argument("--model_name_or_path", default=None,
                   help="The base model (default: the one ground_truth.json names).")
    p.add_argument("--signals", nargs="+", default=DEFAULT_SIGNALS,
                   help="SIGNAL or SIGNAL:SCORE_NORM (gradnorm_rank's choices of signal and score_norm).")
    p.add_argument("--timings", nargs="+", default=list(TIMINGS), choices=TIMINGS)
    p.add_argument("--calibration_batches", type=int, default=8, help="Batches of the calibration.")
    p.add_argument("--warmup_steps", type=int, default=40, help="Optimizer steps of the warm-up.")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=None,
                   help="Default: the planting's (ground_truth.json), else 64; a vector planting needs its own.")
    p.add_argument("--lora_r", type=int, default=2, help="The uniform starting rank (the budget: r x matrices).")
    p.add_argument("--lora_alpha", type=float, default=None, help="Default: 2 x --lora_r.")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW's (constant), in the warm-up.")
    p.add_argument("--weight_decay", type=float, default=HARNESS["weight_decay"], help="AdamW's, in the warm-up.")
    p.add_argument("--max_grad_norm", type=float, default=HARNESS["max_grad_norm"],
                   help="Gradient clipping in the warm-up, after the signals read the gradients (0 disables).")
    p.add_argument("--score_norm", default="raw", choices=choices("score_norm"),
                   help="For the norm signals given without :SCORE_NORM (the share signals always use raw).")
    p.add_argument("--seed", type=int, default=0, help="Adapter initialisation, batch order and the nulls' seed.")
    p.add_argument("--threads", type=int, default=1, help="torch's CPU threads.")
    args = p.parse_args(argv)
    if min(args.calibration_batches, args.warmup_steps, args.batch_size, args.lora_r, args.threads) < 1:
        p.error("--calibration_batches, --warmup_steps, --batch_size, --lora_r and --threads must be >= 1.")
    try:
        args.specs = list(dict.fromkeys(parse_spec(s, args.score_norm) for s in args.signals))
    except ValueError as error:
        p.error(str(error))
    return args


@dataclass
class Planting:
    """One planting folder as the benchmark runs it: the base model (no adapter), its batches and its ground truth."""

    name: str
    truth: GroundTruth
    truth_json: dict
    base: torch.nn.Module
    task_type: str | None  # peft's: a sequence classifier, or None for planted_task's read-out model
    batches: list


def sample_rows(folder, truth, args) -> pd.DataFrame:
    """The training rows of the longest timing's batches, in an order drawn from --seed."""
    rows = pd.read_parquet(Path(folder, truth["task"], "train.parquet"))
    steps = max(args.calibration_batches if "calibration" in args.timings else 0,
                args.warmup_steps if "warmup" in args.timings else 0)
    needed = steps * args.batch_size
    if len(rows) < needed:
        raise SystemExit(f"--planting {folder}: {len(rows)} training rows, fewer than the {steps} batches x "
                         f"--batch_size {args.batch_size} = {needed} the timings need.")
    return rows.iloc[np.random.default_rng(args.seed).permutation(len(rows))[:needed]]


def scalar_planting(folder, truth, model_path, tokenizer, args):
    """(base, peft task type, batches) of a scalar planting: a sequence classifier with a fresh head."""
    from transformers import AutoModelForSequenceClassification

    columns, num_labels, problem = TARGETS[truth["target"]]
    rows = sample_rows(folder, truth, args)
    max_length = args.max_seq_length or truth.get("max_seq_length") or 64
    label_dtype = torch.long if num_labels > 1 else torch.float32
    batches = []
    for start in range(0, len(rows), args.batch_size):
        part = rows.iloc[start:start + args.batch_size]
        batch = tokenizer(*[part[c].astype(str).tolist() for c in columns], truncation=True,
                          max_length=max_length, padding=True, return_tensors="pt")
        batch["labels"] = torch.tensor(part["label"].to_numpy(), dtype=label_dtype)
        batches.append(dict(batch))
    torch.manual_seed(args.seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels, problem_type=problem)
    return base, "SEQ_CLS", batches


def vector_planting(folder, truth, model_path, tokenizer, args):
    """(base, peft task type, batches) of a vector planting, as the harness's --task planted builds them: checked by
    planted_task (one line naming the file or row), tokenised as glue_data.tokenize_splits does, batched by
    VectorLabelCollator."""
    planting = planted_task.read_planting(folder)
    base = planted_task.ReadoutModel.load(model_path, planting)
    planted_task.check_planting(planting, base, args.max_seq_length or planting.max_seq_length)
    rows = sample_rows(folder, truth, args)
    columns = {"sentence": rows["sentence"].tolist(), "label": [np.asarray(v).tolist() for v in rows["label"]]}
    if planted_task.BASE_ERROR in rows:
        columns[planted_task.BASE_ERROR] = rows[planted_task.BASE_ERROR].tolist()
    split = datasets.Dataset.from_dict(columns)  # checked as the harness checks its splits
    planted_task.check_labels({"train": split}, planting)
    planted_task.check_token_counts({"train": split}, tokenizer, planting)
    collator = planted_task.VectorLabelCollator(tokenizer, planting, pad_to_max_length=False)
    features = [{**tokenizer(sentence, truncation=True, max_length=planting.max_seq_length), "label": label,
                 planted_task.BASE_ERROR: error}
                for sentence, label, error in zip(split["sentence"], split["label"], split[planted_task.BASE_ERROR])]
    batches = [dict(collator(features[start:start + args.batch_size]))
               for start in range(0, len(features), args.batch_size)]
    return base, None, batches


def read_planting(folder, args) -> Planting:
    """The planting in `folder`, its model and batches; one error line naming the folder otherwise."""
    from transformers import AutoTokenizer

    path = Path(folder, "ground_truth.json")
    if not path.is_file():
        raise SystemExit(f"--planting {folder}: no ground_truth.json (not a data/make_planted.py folder).")
    truth = json.loads(path.read_text())
    target = truth.get("target")
    if target not in TARGETS and target not in planted_task.TARGETS:
        raise SystemExit(f"{path}: target {target!r}; this benchmark knows "
                         f"{', '.join([*TARGETS, *planted_task.TARGETS])}.")
    model_path = args.model_name_or_path or truth["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    build = vector_planting if target in planted_task.TARGETS else scalar_planting
    try:
        base, task_type, batches = build(folder, truth, model_path, tokenizer, args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"--planting {folder}: {error}") from None
    return Planting(Path(folder).name, GroundTruth.read(path), truth, base, task_type, batches)


def fresh_adapter(planting: Planting, args):
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(planting.base, list(MATRIX_PATTERNS))
    torch.manual_seed(args.seed)
    config = LoraConfig(task_type=planting.task_type, r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
                        target_modules=targets, lora_dropout=0.0)
    return get_peft_model(copy.deepcopy(planting.base), config)


def signal_config(spec: Spec, timing, args):
    when = ({"calibration_steps": args.calibration_batches} if timing == "calibration"
            else {"warmup_steps": args.warmup_steps})
    return GradNormRankConfig(signal=spec.signal, score_norm=spec.score_norm, signal_seed=args.seed, **when)


def observe(model, trackers, batches, args, optimizer=None):
    """Forward and backward over `batches`, every tracker observing each one; with an optimizer, an AdamW step after
    each (clipped at --max_grad_norm after the trackers read the gradients), as the warm-up's loop; without, none, as
    GradNormRank.calibrate. The dropout draws are --seed's. Returns the wall-clock seconds."""
    torch.manual_seed(args.seed)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for grn in trackers.values():
            grn.observe_gradients()
        if optimizer is not None:
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
            optimizer.step()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def collect(planting: Planting, specs, timing, args):
    """Every signal of `specs` over one timing's shared passes: {spec: (shares, signal seconds, buffer bytes)} and
    the passes' own seconds (less the signals' work)."""
    model = fresh_adapter(planting, args)
    trackers = {spec: GradNormRank(model, signal_config(spec, timing, args)) for spec in specs}
    buffers = {spec: grn.signal.buffer_bytes() for spec, grn in trackers.items()}
    if timing == "calibration":
        wall = observe(model, trackers, planting.batches[:args.calibration_batches], args)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        wall = observe(model, trackers, planting.batches[:args.warmup_steps], args, optimizer)
    passes = wall - sum(grn.overhead.signal_seconds for grn in trackers.values())
    results = {}
    for spec, grn in trackers.items():
        start = time.perf_counter()
        shares = grn.scores()
        own = grn.overhead.signal_seconds + time.perf_counter() - start
        results[spec] = (shares, own + (passes if timing == "calibration" else 0.0), buffers[spec])
        grn.signal.remove()
    return results, passes


def placement(scores: dict, truth: GroundTruth) -> dict:
    names = list(scores)
    values = np.array([scores[n] for n in names])
    places = rankdata(-values, method="average")
    planted = [n in truth.planted for n in names]
    oracle = np.array([truth.oracle[n] for n in names], dtype=float)
    rho = spearmanr(values, oracle).statistic if values.std() > 0 and oracle.std() > 0 else float("nan")
    return {"recall_at_k": recall_at_k(scores, set(truth.planted)),
            "mean_planted_place": float(places[planted].mean()),
            "planted_score_share": float(values[planted].sum() / values.sum()) if values.sum() > 0 else float("nan"),
            "spearman_oracle": float(rho)}


def reference_scores(truth_json) -> dict:
    """{name: (step, {matrix: score})} of full fine-tuning's change scores at the identifiability block's verdict step
    (none without a block)."""
    block = truth_json.get("identifiability")
    if not block or "full_finetuning" not in block:
        return {}
    step = block["verdict"]["step"]
    scores = block["full_finetuning"][str(step)]["scores"]
    return {f"full_ft_{name}": (step, scores[name]) for name in REFERENCE_SCORES if name in scores}


def row(planting: Planting, timing, label, signal, score_norm, observations, shares) -> dict:
    return {"planting": planting.name, "timing": timing, "signal": label, "base_signal": signal,
            "score_norm": score_norm, "observations": observations, "planted": len(planting.truth.planted),
            "matrices": len(shares), **placement(shares, planting.truth)}


def share_rows(planting: Planting, timing, label, shares) -> list:
    total = sum(shares.values())
    return [{"planting": planting.name, "timing": timing, "signal": label, "module": name,
             "planted": name in planting.truth.planted, "share": value / total if total > 0 else 0.0}
            for name, value in shares.items()]


def run_planting(folder, args):
    planting = read_planting(folder, args)
    rows, scores = [], []
    for timing in args.timings:
        specs = [s for s in args.specs if not (timing == "calibration" and s.signal in NEEDS_TRAINING)]
        results, passes = collect(planting, specs, timing, args)
        observations = args.calibration_batches if timing == "calibration" else args.warmup_steps
        for spec, (shares, seconds, buffer) in results.items():
            rows.append({**row(planting, timing, spec.label, spec.signal, spec.score_norm, observations, shares),
                         "signal_seconds": seconds, "pass_seconds": passes, "signal_buffer_mb": buffer / 2**20})
            scores += share_rows(planting, timing, spec.label, shares)
            print(f"{planting.name} {timing} {spec.label}: recall {rows[-1]['recall_at_k']:.2f}, "
                  f"{seconds:.1f} s", flush=True)
    for name, (step, values) in reference_scores(planting.truth_json).items():
        rows.append(row(planting, "reference", name, name, "", step, values))
        scores += share_rows(planting, "reference", name, values)
    return rows, scores


def heatmap(scores: pd.DataFrame, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = scores.pivot(index="signal", columns="module", values="share")
    table = table.loc[list(dict.fromkeys(scores["signal"]))]  # the table's order of signals
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_markdown(table: pd.DataFrame) -> str:
    columns = ["planting", "timing", "signal", "observations", "recall_at_k", "mean_planted_place",
               "planted_score_share", "spearman_oracle", "signal_seconds", "pass_seconds", "signal_buffer_mb"]

    def cell(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in table.to_dict("records")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, scores = [], []
    for folder in args.planting:
        more_rows, more_scores = run_planting(folder, args)
        rows += more_rows
        scores += more_scores
    table, scores = pd.DataFrame(rows), pd.DataFrame(scores)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
