#!/usr/bin/env python
"""Step time of LoRA, AdaLoRA and GLoRA, measured side by side in one process.

Every method is a peft model (adapters.build_peft_config + peft.get_peft_model) on a deep copy of the same base
weights, with the same rank budget on the same matrices, and takes the optimizer step the Trainer takes
(common.train_step). After untimed warm-up rounds the methods run interleaved on the same batches, the order
rotating round by round (A B C, B C A, C A B, ...) so that no method always runs first. Every round gives one
paired ratio t_method / t_lora. Reported per method: median step time, the median and interquartile range of the
paired ratios, the ratio of means (amortises AdaLoRA's masking every deltaT steps), resident memory (model,
optimizer and method state) and, on CUDA, the measured peak of a step.

Methods: lora; adalora (orthogonality loss in its forward, update_and_allocate every step); glora_<signal> in the
warm-up phase (observe_gradients every step; `delta` also has its forward/backward hooks); glora_after: a GLoRA
model reallocated by its real code (GradNormRank.reallocate) after the warm-up rounds. The seconds of each
reallocation (allocation + resize + optimizer rebuild) are reported in units of a LoRA step.

    python -m benchmarks.step_time --model minilm --seq_len 64 --iters 25        # CPU, packaged MiniLM
    python -m benchmarks.step_time --model deberta-v3-base --device cuda --bf16 --seq_len 128 256
    python -m benchmarks.step_time --tiny                                        # seconds, for tests
"""

import argparse
import importlib.metadata
import json
import platform
import statistics
import time

import torch

from benchmarks.common import (
    MODELS,
    HookTimer,
    adapter_size,
    autocast_context,
    build_method,
    load_base_model,
    reallocate,
    resident_bytes,
    sync,
    train_step,
)
from gradnorm_rank import choices

GOALS = {"glora_lora_b": 1.02, "glora_after": 1.01}  # GLoRA/LoRA goals of the issue (default signal lora_b)


def make_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm",
                   help=f"One of {', '.join(MODELS)} (deberta-v3-base: random weights, architecture only), "
                        "or a local model directory.")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i].")
    p.add_argument("--bf16", action="store_true", help="Autocast the forward to bfloat16, as the Trainer's --bf16.")
    p.add_argument("--batch_size", type=int, default=32, help="Sequences per step.")
    p.add_argument("--seq_len", type=int, nargs="+", default=[64], help="Sequence length(s); each gets its own table.")
    p.add_argument("--lora_r", type=int, default=8, help="LoRA rank per matrix; the budget is r x matrices for all.")
    p.add_argument("--signals", nargs="+", default=["lora_b", "lora_ab", "delta"], choices=choices("signal"),
                   help="GLoRA signals timed in the warm-up phase (default: the proposal's three; every signal's "
                        "cost over a calibration or warm-up is in benchmarks.allocation_bench).")
    p.add_argument("--methods", nargs="+", default=None,
                   help="Subset of methods to time (lora is always included): adalora glora_<signal> glora_after.")
    p.add_argument("--warmup_iters", type=int, default=3,
                   help="Untimed interleaved rounds per sequence length; glora_after reallocates after the first ones.")
    p.add_argument("--iters", type=int, default=20, help="Timed interleaved rounds per sequence length.")
    p.add_argument("--num_batches", type=int, default=4,
                   help="Distinct random batches, cycled; all methods see the same ones.")
    p.add_argument("--deltaT", type=int, default=10, help="AdaLoRA steps between two maskings (the project default).")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice). On a shared CPU use 1: two OpenMP threads "
                        "competing with other processes made steps up to 100x slower and erratic.")
    p.add_argument("--json_out", default=None, help="Also write the results here as JSON.")
    p.add_argument("--tiny", action="store_true",
                   help="Smoke mode defaults: tiny random DeBERTa on CPU, 1 thread, batch 4, length 32, r 4, "
                        "2 + 3 rounds.")
    return p


def parse_args(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    if args.tiny:  # tiny defaults; flags given explicitly still win
        p.set_defaults(model="tiny-deberta", device="cpu", batch_size=4, seq_len=[32], warmup_iters=2, iters=3,
                       lora_r=4, threads=1)
        args = p.parse_args(argv)
    if args.warmup_iters < 1 or args.iters < 1:
        p.error("--warmup_iters and --iters must be >= 1 (GLoRA needs warm-up steps to reallocate).")
    return args


def method_names(args):
    names = ["lora", "adalora"] + [f"glora_{s}" for s in args.signals] + ["glora_after"]
    if args.methods:
        unknown = set(args.methods) - set(names)
        if unknown:
            raise SystemExit(f"Unknown --methods {sorted(unknown)}; choose from {names[1:]}.")
        names = ["lora"] + [n for n in names[1:] if n in args.methods]
    return names


def make_batches(args, vocab_size, seq_len, device):
    g = torch.Generator().manual_seed(seq_len)
    batches = []
    for _ in range(args.num_batches):
        ids = torch.randint(5, vocab_size, (args.batch_size, seq_len), generator=g)
        labels = torch.randint(0, 2, (args.batch_size,), generator=g)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def timed_step(m, batch, args, cuda):
    """(step seconds, seconds in the method's own hook, transient peak bytes above what was allocated before the
    step or None off CUDA). On CPU the GLoRA hook time also holds `delta`'s backward-hook matmuls (GLoRA's own
    overhead.signal_seconds); on CUDA only observe_gradients is timed, and `delta`'s cost shows in the step time alone."""
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device)
    timer = HookTimer(args.device)
    glora_hook_before = m.glora.overhead.signal_seconds if m.glora is not None else 0.0
    sync(args.device)
    start = time.perf_counter()
    train_step(m, batch, autocast_context(args.device, args.bf16), hook_timer=timer)
    sync(args.device)
    seconds = time.perf_counter() - start
    hook = timer.collect()
    if m.glora is not None and not cuda:
        hook = m.glora.overhead.signal_seconds - glora_hook_before
    peak = torch.cuda.max_memory_allocated(args.device) - before if cuda else None
    return seconds, hook, peak


def quantile(values, q):
    values = sorted(values)
    position = q * (len(values) - 1)
    low, high = int(position), min(int(position) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def summarise(times, hooks, peaks, methods):
    lora = times["lora"]
    rows = {}
    for name, m in methods.items():
        paired = [t / t_lora for t, t_lora in zip(times[name], lora)]
        mem = resident_bytes(m)
        rows[name] = {
            "median_ms": 1e3 * statistics.median(times[name]),
            "mean_ms": 1e3 * statistics.fmean(times[name]),
            "ratio_median": statistics.median(paired),
            "ratio_p25": quantile(paired, 0.25),
            "ratio_p75": quantile(paired, 0.75),
            # Standard error of the median from the IQR (normal approximation): the resolution of the ratio.
            "ratio_se": 1.2533 * (quantile(paired, 0.75) - quantile(paired, 0.25)) / 1.349 / len(paired) ** 0.5,
            "ratio_of_means": statistics.fmean(times[name]) / statistics.fmean(lora),
            "hook_median_ms": 1e3 * statistics.median(hooks[name]),
            "hook_mean_ms": 1e3 * statistics.fmean(hooks[name]),
            "hook_share_of_lora_step": statistics.fmean(hooks[name]) / statistics.median(lora),
            "resident_mb": {k: v / 2**20 for k, v in mem.items()},
            "step_peak_mb": None if peaks[name] is None else max(peaks[name]) / 2**20,
            "adapter_params": adapter_size(m),
            "steps_timed": len(times[name]),
        }
    return rows


def print_table(rows, seq_len, args):
    mode = f"{args.device}{' bf16 autocast' if args.bf16 else ' fp32'}"
    print(f"\n== {args.model}, batch {args.batch_size}, length {seq_len}, {mode}: "
          f"{rows['lora']['steps_timed']} interleaved timed rounds ==")
    header = (f"{'method':<16}{'median ms':>10}{'mean ms':>10}{'ratio':>8}{'[p25':>7}{'p75]':>7}{'mean/mean':>10}"
              f"{'hook ms':>9}{'hook %':>8}{'adapter':>10}{'opt MiB':>8}{'stateMiB':>9}{'peak MiB':>9}")
    print(header)
    for name, r in rows.items():
        mb = r["resident_mb"]
        peak = "-" if r["step_peak_mb"] is None else f"{sum(mb.values()) - mb['trainable'] + r['step_peak_mb']:.0f}"
        print(f"{name:<16}{r['median_ms']:>10.1f}{r['mean_ms']:>10.1f}{r['ratio_median']:>8.3f}{r['ratio_p25']:>7.3f}"
              f"{r['ratio_p75']:>7.3f}{r['ratio_of_means']:>10.3f}{r['hook_mean_ms']:>9.2f}"
              f"{100 * r['hook_share_of_lora_step']:>8.2f}{r['adapter_params']:>10d}"
              f"{r['resident_mb']['optimizer']:>8.1f}{r['resident_mb']['method']:>9.1f}{peak:>9}")
    print("ratio = median over rounds of t_method / t_lora in the same round; mean/mean = ratio of mean step times.")
    print("hook ms = mean time in the method's own per-step hook (GLoRA observe_gradients, on CPU plus delta's "
          "backward hooks; AdaLoRA update_and_allocate), hook % = that over the median LoRA step.")
    print("adapter = LoRA matrix parameters; opt MiB = AdamW state; stateMiB = the method's own buffers; "
          "peak MiB = model + optimizer + method state + measured step peak (CUDA only; '-' = not measured on CPU).")
    for name, goal in GOALS.items():
        if name in rows:
            r = rows[name]
            print(f"goal {name}/lora <= {goal}: {r['ratio_median']:.3f} +- {2 * r['ratio_se']:.3f} (2 SE) -> "
                  f"{verdict(r['ratio_median'], r['ratio_se'], goal)}; its own hook: "
                  f"{100 * r['hook_share_of_lora_step']:.2f} % of a LoRA step")


def verdict(ratio, se, goal):
    """Met / not met only where the timing noise allows telling; otherwise say so."""
    if ratio + 2 * se <= goal:
        return "met"
    if ratio - 2 * se > goal:
        return "NOT met"
    return "not resolved at this noise level"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(args.device) if cuda else platform.processor() or platform.machine()
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformers", "peft", "accelerate")}
    print(" ".join(f"{k} {v}" for k, v in versions.items()) + f"; device {args.device} ({device_name}), "
          f"threads {torch.get_num_threads()}")

    base, vocab_size = load_base_model(args.model, args.device)
    names = method_names(args)
    # AdaLoRA's schedule: total_step far enough that every timed step is in its budget-decreasing phase.
    total_step = 10 * len(args.seq_len) * (args.warmup_iters + args.iters) + 100
    methods = {}
    for name in names:
        kind = "lora" if name == "lora" else "adalora" if name == "adalora" else "glora"
        signal = name.removeprefix("glora_") if name.startswith("glora_") and name != "glora_after" else "lora_b"
        methods[name] = build_method(base, kind, args.lora_r, signal, total_step=total_step, deltaT=args.deltaT)
    del base
    print(f"{len(names)} methods on {methods['lora'].num_targets} adapted matrices, rank budget "
          f"{methods['lora'].rank_budget}: {' '.join(names)}")

    results = {"args": vars(args), "device_name": device_name, "versions": versions,
               "threads": torch.get_num_threads(), "by_seq_len": {}, "reallocation": []}
    for seq_len in args.seq_len:
        batches = make_batches(args, vocab_size, seq_len, args.device)
        times = {name: [] for name in names}
        hooks = {name: [] for name in names}
        peaks = {name: [] if cuda else None for name in names}
        for round_index in range(args.warmup_iters + args.iters):
            if round_index == args.warmup_iters and "glora_after" in methods and not methods["glora_after"].glora.done:
                # End of GLoRA's warm-up: the real reallocation, timed (item 2), then its steps are timed as the rest.
                seconds = reallocate(methods["glora_after"], args.device)
                results["reallocation"].append({"model": "glora_after", "signal": "lora_b", "seconds": seconds})
            batch = batches[round_index % len(batches)]
            shift = round_index % len(names)  # rotate the order: every method takes every position equally often
            for name in names[shift:] + names[:shift]:
                seconds, hook, peak = timed_step(methods[name], batch, args, cuda)
                if round_index >= args.warmup_iters:
                    times[name].append(seconds)
                    hooks[name].append(hook)
                    if cuda:
                        peaks[name].append(peak)
        rows = summarise(times, hooks, peaks, methods)
        results["by_seq_len"][seq_len] = rows
        print_table(rows, seq_len, args)

    # Reallocation of the warm-up models too: more samples of item 2, one per signal (delta also drops its hooks).
    for name, m in methods.items():
        if m.glora is not None and not m.glora.done:
            seconds = reallocate(m, args.device)
            results["reallocation"].append({"model": name, "signal": m.glora.config.signal, "seconds": seconds})
    print("\n== GLoRA reallocation (allocate + resize + AdamW rebuild with state carried over), once per model ==")
    for item in results["reallocation"]:
        units = {L: item["seconds"] / (rows["lora"]["median_ms"] / 1e3) for L, rows in results["by_seq_len"].items()}
        item["lora_steps"] = units
        print(f"{item['model']:<16} {1e3 * item['seconds']:8.1f} ms = "
              + ", ".join(f"{u:.2f} LoRA steps at length {L}" for L, u in units.items()))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
