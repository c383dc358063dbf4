#!/usr/bin/env python
"""Data pipeline: dynamic padding vs padding every input to 256 (the proposal's setting), on real GLUE lengths.

For each task: (1) the time to load the parquet file, tokenise it and write the datasets cache (as
run_glue_peft.main does, into a fresh cache directory), and to reload it from that cache; (2) the token-length
distribution and the mean padded batch length of each mode over one epoch; (3) training samples/s of a LoRA model
(the project's peft config, the Trainer's optimizer step) per mode: `padded` (--pad_to_max_length,
default_data_collator), `dynamic` (DataCollatorWithPadding, run_glue_peft's default) and `grouped` (dynamic
padding + the Trainer's --train_sampling_strategy group_by_length). The time counts collation + step.

    python -m benchmarks.data_pipeline                       # MiniLM, the shipped SST-2 sample (data/glue), CPU
    python -m benchmarks.data_pipeline --data_dir ../shared/data/glue --tasks rte sst2 --steps 8
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, build_method, load_base_model, minilm_path, train_step

DEFAULT_DATA_DIR = ROOT / "data" / "glue"  # the shipped SST-2 sample


def make_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="GLUE root holding <task>/train.parquet.")
    p.add_argument("--tasks", nargs="+", default=["sst2"], help="GLUE tasks to measure (each needs <task>/train.parquet).")
    p.add_argument("--model", default="minilm", help="minilm (packaged) or a local model directory with a tokenizer.")
    p.add_argument("--batch_size", type=int, default=32, help="Training batch size (the project default).")
    p.add_argument("--max_seq_length", type=int, default=256, help="Truncation length and the fixed padding length.")
    p.add_argument("--steps", type=int, default=6, help="Timed training steps per padding mode and task.")
    p.add_argument("--warmup_steps", type=int, default=1, help="Untimed steps per mode before timing.")
    p.add_argument("--max_train_samples", type=int, default=None, help="Tokenise only the first N training rows.")
    p.add_argument("--lora_r", type=int, default=8, help="LoRA rank per matrix.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the shuffled example order (the same for both modes).")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice; 1 is steadier on a shared CPU).")
    p.add_argument("--json_out", default=None, help="Also write the results here as JSON.")
    p.add_argument("--tiny", action="store_true",
                   help="Smoke mode defaults: 1 thread, batch 8, length 64, 1 + 2 steps, 64 rows "
                        "(use with a tiny --model).")
    return p


def parse_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    if args.tiny:  # tiny defaults; flags given explicitly still win
        p.set_defaults(batch_size=8, max_seq_length=64, steps=2, warmup_steps=1, max_train_samples=64, threads=1)
        args = p.parse_args(argv)
    return args


def tokenise_and_cache(args, task_name, tokenizer, cache_dir):
    """Load + tokenise with run_glue_peft.main's tokenize function, cold, then again from the cache."""
    from datasets import load_dataset

    from harness.glue_tasks import GLUE_TASKS

    task = GLUE_TASKS[task_name]
    timings = {}
    start = time.perf_counter()
    raw = load_dataset("parquet", data_files={"train": str(Path(args.data_dir, task_name, "train.parquet"))},
                       cache_dir=cache_dir)["train"]
    if args.max_train_samples is not None:
        raw = raw.select(range(min(args.max_train_samples, len(raw))))
    timings["load_s"] = time.perf_counter() - start

    def encode(pad):
        def tokenize(batch):
            texts = [batch[key] for key in task.text_keys]
            return tokenizer(*texts, truncation=True, max_length=args.max_seq_length,
                             padding="max_length" if pad else False)

        return raw.map(tokenize, batched=True, remove_columns=list(task.text_keys) + ["idx"], desc=None)

    for pad, key in ((False, "dynamic"), (True, "padded")):
        start = time.perf_counter()
        encoded = encode(pad)
        timings[f"tokenise_{key}_s"] = time.perf_counter() - start
        start = time.perf_counter()
        encoded = encode(pad)  # the same fingerprint: datasets reloads the cache file
        timings[f"reload_{key}_s"] = time.perf_counter() - start
        if pad:
            padded = encoded
        else:
            dynamic = encoded
    timings["rows"] = len(raw)
    return dynamic, padded, timings


MODES = ("padded", "dynamic", "grouped")


def epoch_batches(lengths, batch_size, seed):
    """One epoch of index batches per mode. padded / dynamic: the same shuffled order (RandomSampler). grouped:
    the Trainer's --train_sampling_strategy group_by_length order (get_length_grouped_indices, what its
    LengthGroupedSampler yields: shuffled, sorted by length within mega-batches of 50 batches)."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    grouped = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    chunks = lambda idx: [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]  # noqa: E731
    return {"padded": chunks(order), "dynamic": chunks(order), "grouped": chunks(grouped)}


def length_stats(lengths, batches, max_len):
    q = statistics.quantiles(lengths, n=100)
    stats = {"mean": statistics.fmean(lengths), "p50": q[49], "p90": q[89], "p99": q[98], "max": max(lengths),
             "at_cap_fraction": sum(n >= max_len for n in lengths) / len(lengths), "mean_batch_len": {}}
    for mode in MODES:
        stats["mean_batch_len"][mode] = max_len if mode == "padded" else statistics.fmean(
            max(lengths[i] for i in batch) for batch in batches[mode])
    stats["token_slot_ratio"] = {mode: max_len / stats["mean_batch_len"][mode] for mode in MODES}
    return stats


def measure_training(args, base, encoded, batches, tokenizer):
    """Samples/s per mode over a few batches that represent the epoch: each mode's batches sorted by padded length,
    one batch taken at each quantile (k + 0.5) / steps (a stratified sample; the first batches of the grouped order
    are its longest). padded and dynamic time the very same examples. Modes rotate step by step. A short untimed
    batch per model first pays the one-off costs (AdamW state, allocator)."""
    from transformers import DataCollatorWithPadding, default_data_collator

    collate = {"padded": default_data_collator, "dynamic": DataCollatorWithPadding(tokenizer),
               "grouped": DataCollatorWithPadding(tokenizer)}
    dataset = {"padded": encoded["padded"], "dynamic": encoded["dynamic"], "grouped": encoded["dynamic"]}
    models = {mode: build_method(base, "lora", args.lora_r) for mode in MODES}
    lengths_of = [len(ids) for ids in encoded["dynamic"]["input_ids"]]
    chosen = {}
    for mode in ("dynamic", "grouped"):
        by_length = sorted(batches[mode], key=lambda batch: max(lengths_of[i] for i in batch))
        chosen[mode] = [by_length[int((k + 0.5) * len(by_length) / args.steps)] for k in range(args.steps)]
    chosen["padded"] = chosen["dynamic"]
    seconds = {mode: [] for mode in MODES}
    lengths = {mode: [] for mode in MODES}
    for step in range(-args.warmup_steps, args.steps):
        for mode in MODES[step % 3:] + MODES[:step % 3]:
            indices = chosen[mode][step] if step >= 0 else chosen[mode][0][:2]
            start = time.perf_counter()
            batch = collate[mode](dataset[mode].__getitems__(indices))  # the DataLoader's work, num_workers=0
            train_step(models[mode], batch)
            if step >= 0:
                seconds[mode].append(time.perf_counter() - start)
                lengths[mode].append(batch["input_ids"].shape[1])
    out = {}
    for mode in MODES:
        out[mode] = {"samples_per_s": args.batch_size * len(seconds[mode]) / sum(seconds[mode]),
                     "median_step_s": statistics.median(seconds[mode]),
                     "mean_batch_len": statistics.fmean(lengths[mode])}
    for mode in ("dynamic", "grouped"):
        out[f"speedup_{mode}"] = out[mode]["samples_per_s"] / out["padded"]["samples_per_s"]
    out["paired_speedup_dynamic_median"] = statistics.median(
        p / d for p, d in zip(seconds["padded"], seconds["dynamic"]))
    return out


def main(argv=None):
    args = parse_args(argv)
    for task_name in args.tasks:
        if not Path(args.data_dir, task_name, "train.parquet").is_file():
            raise SystemExit(f"--data_dir {args.data_dir} has no {task_name}/train.parquet: give --data_dir a GLUE root "
                             f"that holds {task_name} (the shipped data/glue holds sst2 only), or other --tasks.")
    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    from harness.glue_tasks import GLUE_TASKS

    disable_progress_bar()
    path = minilm_path() if args.model == "minilm" else args.model
    tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model}, batch {args.batch_size}, "
          f"max_seq_length {args.max_seq_length}, {args.steps} timed steps per mode")
    results = {"args": vars(args), "threads": torch.get_num_threads(), "tasks": {}}
    for task_name in args.tasks:
        with tempfile.TemporaryDirectory() as cache_dir:
            dynamic, padded, timings = tokenise_and_cache(args, task_name, tokenizer, cache_dir)
            lengths = [len(ids) for ids in dynamic["input_ids"]]
            batches = epoch_batches(lengths, args.batch_size, args.seed)
            stats = length_stats(lengths, batches, args.max_seq_length)
            base, _ = load_base_model(path, "cpu", num_labels=GLUE_TASKS[task_name].num_labels)
            training = measure_training(args, base, {"dynamic": dynamic, "padded": padded}, batches, tokenizer)
        results["tasks"][task_name] = {"tokenise": timings, "lengths": stats, "training": training}
        t, s, tr = timings, stats, training
        print(f"\n== {task_name}: {t['rows']} training rows ==")
        print(f"load parquet {t['load_s']:.2f} s; tokenise + write cache: dynamic {t['tokenise_dynamic_s']:.2f} s "
              f"({t['rows'] / t['tokenise_dynamic_s']:.0f} rows/s), padded {t['tokenise_padded_s']:.2f} s; "
              f"reload from cache {t['reload_dynamic_s']:.2f} s / {t['reload_padded_s']:.2f} s")
        print(f"tokens per example: mean {s['mean']:.1f}, p50 {s['p50']:.0f}, p90 {s['p90']:.0f}, p99 {s['p99']:.0f}, "
              f"max {s['max']}; at the {args.max_seq_length} cap {100 * s['at_cap_fraction']:.2f} %")
        print(f"mean padded batch length over one epoch (batch {args.batch_size}): " + ", ".join(
            f"{mode} {s['mean_batch_len'][mode]:.1f} ({s['token_slot_ratio'][mode]:.2f}x fewer slots than padded)"
            for mode in MODES[1:]))
        for mode in MODES:
            r = tr[mode]
            print(f"train {mode:<8} {r['samples_per_s']:7.2f} samples/s (median step {r['median_step_s']:.3f} s, "
                  f"mean batch length {r['mean_batch_len']:.0f})")
        print(f"dynamic / padded samples/s: {tr['speedup_dynamic']:.2f}x (median of paired steps "
              f"{tr['paired_speedup_dynamic_median']:.2f}x); grouped (group_by_length) / padded: "
              f"{tr['speedup_grouped']:.2f}x -> goal >= 2x for dynamic padding "
              f"{'met' if tr['speedup_dynamic'] >= 2 else 'NOT met'}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
