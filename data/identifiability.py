#!/usr/bin/env python
"""Is a planting identifiable? The diagnostics of analysis/identifiability.py on a data/make_planted.py folder.

    OMP_NUM_THREADS=1 python3 -m data.identifiability OUT --steps 40 80 120 240 --rows 2000     # from the repo root

Reads OUT/ground_truth.json (a vector target: features or token_features), OUT/planted_update.safetensors and
OUT/planted/train.parquet; trains on the first --rows training rows with the frozen read-out of the planting (no head,
MSE on its labels, as the harness's planted task). Writes an `identifiability` block into OUT/ground_truth.json
(replaced atomically: the rest of the file is kept), a readable report OUT/identifiability.md, and prints the report.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from analysis.identifiability import Planting, Settings, diagnose
from data.make_planted import VECTOR_TARGETS
from harness.adapters import MATRIX_PATTERNS, resolve_targets

REPORT = "identifiability.md"


def parse_args(argv=None):
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("out_dir", help="A folder written by data/make_planted.py with --target features|token_features.")
    p.add_argument("--steps", type=int, nargs="+", default=list(defaults.steps),
                   help="Training steps at which the changes are scored (the longest is how long both runs train).")
    p.add_argument("--rows", type=int, default=None, help="The first N training rows are used (default: all).")
    p.add_argument("--batch_size", type=int, default=defaults.batch_size, help="Rows per step (and per forward).")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate of full fine-tuning.")
    p.add_argument("--lora_rank", type=int, default=defaults.lora_rank, help="Rank of the LoRA on every matrix.")
    p.add_argument("--lora_alpha", type=float, default=defaults.lora_alpha, help="LoRA scaling = alpha / rank.")
    p.add_argument("--lora_lr", type=float, default=defaults.lora_lr, help="AdamW learning rate of the LoRA.")
    p.add_argument("--additivity_rows", type=int, default=defaults.additivity_rows,
                   help="Rows the single and joint target changes are measured on.")
    p.add_argument("--gradient_rows", type=int, default=defaults.gradient_rows,
                   help="Rows the base model's mean gradient is averaged over.")
    p.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the row order and the LoRA's A.")
    p.add_argument("--model_name_or_path", default=None, help="The base model (default: the ground truth's `model`).")
    args = p.parse_args(argv)
    counts = {"--rows": args.rows or 1, "--batch_size": args.batch_size, "--lora_rank": args.lora_rank,
              "--additivity_rows": args.additivity_rows, "--gradient_rows": args.gradient_rows, "--steps": min(args.steps)}
    for flag, value in counts.items():
        if value < 1:
            raise SystemExit(f"{flag} {value}: must be at least 1.")
    return args


def load_planting(out_dir, model_path, n_rows):
    """A Planting of the folder: the base model (eval mode: no dropout), its adapted matrices, the planted updates,
    the frozen read-out as prediction and the first n_rows training rows with their labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = Path(out_dir)
    truth = json.loads((out / "ground_truth.json").read_text())
    if truth.get("target") not in VECTOR_TARGETS:
        raise SystemExit(f"{out / 'ground_truth.json'}: target {truth.get('target')!r}; the diagnostic needs a vector "
                         f"target ({' or '.join(VECTOR_TARGETS)}).")
    tensors = load_file(out / "planted_update.safetensors")
    weight, bias = tensors["readout.weight"].float(), tensors["readout.bias"].float()
    frame = pd.read_parquet(out / "planted" / "train.parquet")
    n_rows = min(n_rows or len(frame), len(frame))
    sentences = frame["sentence"].tolist()[:n_rows]
    labels = [np.asarray(label, dtype=np.float64) for label in frame["label"].tolist()[:n_rows]]
    model_path = model_path or truth["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1).eval()
    per_token, max_len, k = truth["target"] == "token_features", truth["max_seq_length"], truth["num_outputs"]
    for i, (sentence, label) in enumerate(zip(sentences, labels)):
        tokens = len(tokenizer(sentence, truncation=True, max_length=max_len)["input_ids"]) if per_token else 1
        if len(label) != tokens * k:
            raise SystemExit(f"{out}/planted/train.parquet row {i}: label of length {len(label)}, expected {tokens} x {k}.")

    def predict(batch):
        hidden = model.base_model(**batch).last_hidden_state
        hidden = hidden[batch["attention_mask"].bool()] if per_token else hidden[:, 0]
        return (hidden @ weight.T + bias).reshape(-1)

    def rows(indices):
        batch = tokenizer([sentences[i] for i in indices], truncation=True, max_length=max_len, padding=True,
                          return_tensors="pt")
        return batch, torch.from_numpy(np.concatenate([labels[i] for i in indices]).astype(np.float32))

    names = resolve_targets(model, list(MATRIX_PATTERNS))
    planted = {name: tuple(tensors[f"{name}.{part}"] for part in ("U", "sigma", "V")) for name in truth["planted"]}
    return truth, Planting(model=model, names=names, planted=planted, predict=predict, rows=rows, n_rows=n_rows)


def write_block(out_dir, block):
    """ground_truth.json with the `identifiability` block, replaced atomically (a temporary file, then os.replace)."""
    path = Path(out_dir) / "ground_truth.json"
    truth = json.loads(path.read_text())
    truth["identifiability"] = block
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(truth, indent=1) + "\n")
    os.replace(temporary, path)


def short(name):
    layer, _, rest = name.partition(".layer.")[2].partition(".")
    return f"L{layer} {rest}"


def placement_cells(entry):
    return f"{entry['hits']:.2f} | {entry['mean_place']:.1f} | {'yes' if entry['identifiable'] else 'no'}"


def localisation_table(title, localised, n, start_loss):
    lines = [f"### {title}", "",
             f"| step | loss | ‖ΔW‖/‖W‖: hits of {n} | mean place | identifiable | top-k share: hits of {n} | mean place "
             "| identifiable | mean cos(ΔW, planted) |", "|" + " --- |" * 9,
             f"| 0 | {start_loss:.4f} |" + " |" * 7]
    for step, entry in localised.items():
        cosines = entry["cosine_with_planted"].values()
        lines.append(f"| {step} | {entry['loss']:.4f} | {placement_cells(entry['relative_change'])} | "
                     f"{placement_cells(entry['top_k_share'])} | {sum(cosines) / len(cosines):.3f} |")
    return lines + [""]


def report(out_dir, truth, block):
    """The block as markdown."""
    add, grad = block["additivity"], block["mean_gradient"]
    lines = [f"# Identifiability of {out_dir}", "",
             f"Target {truth['target']} x {truth['num_outputs']} ({truth['readout']['kind']}), {block['n_planted']} "
             f"planted of {truth['num_adapted_matrices']} matrices; {block['settings']['rows']} training rows. Rule: "
             f"{block['rule']}.", "", "## Additivity", "",
             f"On {add['rows']} rows ({add['entries']} target entries); joint effect (RMS) {add['joint_effect']:.4f}; "
             f"largest |teacher − label| {add['label_gap']:.2e}. The sum of the singles explains "
             f"{add['sum_of_singles']['explained']:.3f} of the joint change (cosine {add['sum_of_singles']['cosine']:.3f}, "
             f"norm ratio {add['sum_of_singles']['norm_ratio']:.3f}).", "",
             "| matrix | relative norm | effect | share of the joint change | R² against it |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, entry in add["per_matrix"].items():
        lines.append(f"| {short(name)} | {truth['planted'][name]['relative_norm']:.4f} | {entry['effect']:.4f} | "
                     f"{entry['share']:.3f} | {entry['r2']:.3f} |")
    lines += ["", "## The base model's mean gradient", "",
              "| matrix | cos(−G, ΔW) | share in U (random) | share in V (random) | share in both (random) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, e in grad["per_matrix"].items():
        lines.append(f"| {short(name)} | {e['cosine']:.3f} | {e['column_share']:.3f} ({e['random_column_share']:.3f}) | "
                     f"{e['row_share']:.3f} ({e['random_row_share']:.3f}) | {e['both_share']:.4f} "
                     f"({e['random_both_share']:.4f}) |")
    if "placement" in grad:
        p = grad["placement"]
        lines += ["", f"As a score: ‖G‖/‖W‖ hits {p['relative_change']['hits']:.2f}, mean place "
                      f"{p['relative_change']['mean_place']:.1f}; top-k share of G hits {p['top_k_share']['hits']:.2f}, "
                      f"mean place {p['top_k_share']['mean_place']:.1f}."]
    if isinstance(block.get("localisation"), str):
        return "\n".join(lines + ["", block["localisation"], ""])
    n = block["n_planted"]
    lines += ["", "## Ceiling localisation", "", f"Loss: the mean since the previous step count (step 0: the base model's, "
                                                      f"on the {add['rows']} additivity rows).", ""]
    start = add["start_loss"]
    lines += localisation_table(f"Full fine-tuning (lr {block['settings']['lr']})", block["full_finetuning"], n, start)
    lines += localisation_table(f"LoRA rank {block['settings']['lora_rank']} on every matrix (lr "
                                f"{block['settings']['lora_lr']})", block["lora"], n, start)
    verdict = block["verdict"]
    lines += ["## Verdict", "", f"At step {verdict['step']}: " + (
        f"identifiable by {', '.join(verdict['scores_meeting_rule'])}." if verdict["identifiable"]
        else "not identifiable by either score."), ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    truth, planting = load_planting(args.out_dir, args.model_name_or_path, args.rows)
    settings = Settings(steps=tuple(sorted(set(args.steps))), lr=args.lr, lora_rank=args.lora_rank,
                        lora_alpha=args.lora_alpha, lora_lr=args.lora_lr, batch_size=args.batch_size,
                        additivity_rows=args.additivity_rows, gradient_rows=args.gradient_rows, seed=args.seed)
    started = time.time()
    block = diagnose(planting, settings, report=lambda line: print(line, flush=True))
    block["seconds"] = round(time.time() - started, 1)
    write_block(args.out_dir, block)
    text = report(args.out_dir, truth, block)
    (Path(args.out_dir) / REPORT).write_text(text)
    print(text)
    return block


if __name__ == "__main__":
    main()
