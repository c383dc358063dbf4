"""
Turn a folder of finished GLUE runs (LoRA / AdaLoRA / GLoRA) into one comparison:
a table with honest statistics and paper figures. The question it answers:

    does GLoRA get most of AdaLoRA's gain at LoRA's cost?
    share of gain = (GLoRA - LoRA) / (AdaLoRA - LoRA)   on the task score

The task score is the mean of the task's main metrics (docs/outputs.md), e.g. MNLI
(acc + acc_mm) / 2, STS-B (pearson + spearman) / 2, MRPC/QQP (f1 + acc) / 2, CoLA MCC.
Run layout: docs/outputs.md. Usage:

    python compare_runs.py runs/sweep [more run dirs or roots] [--out_dir DIR] [--alpha 0.05]
"""
import argparse
import json
import math
import sys
import warnings
from functools import reduce
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from glue_tasks import GLUE_TASKS

# -----------------------------------------------------------------------------
# what the runs contain (docs/outputs.md)

# task -> main metrics, in all_results.json as eval_<metric>; the task score is their mean.
# From the task table the runs were made with; MNLI's mismatched split adds the `_mm` metrics.
MAIN_METRICS = {
    task: spec.main_metric_keys()
    for task, spec in GLUE_TASKS.items()
}
TASK_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]  # the usual GLUE order
METHOD_ORDER = ["lora", "adalora", "glora"]
METHOD_NAMES = {"lora": "LoRA", "adalora": "AdaLoRA", "glora": "GLoRA"}
METHOD_COLORS = {"lora": "#4c72b0", "adalora": "#dd8452", "glora": "#55a868"}
MATRIX_ORDER = ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]
SHORT = {"accuracy": "acc", "accuracy_mm": "acc_mm", "f1": "f1", "matthews_correlation": "mcc",
         "pearson": "pearson", "spearmanr": "spearman"}
REQUIRED_KEYS = ["task", "method", "seed", "rank_budget", "train_runtime", "trainable_params"]
# comparisons for the significance table: (A, B) means A - B
PAIRS = [("adalora", "lora"), ("glora", "lora"), ("glora", "adalora")]


def note(msg):
    print(f"note: {msg}", file=sys.stderr)


def method_name(m):
    return METHOD_NAMES.get(m, m)


def method_key(m):  # sort key: lora, adalora, glora, then anything else alphabetically
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def task_key(t):
    return TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER)


def metric_split(task, metric):
    """Which predictions_<split>.csv a main metric is computed on, and the plain metric name."""
    return GLUE_TASKS[task].split_of(metric)

# -----------------------------------------------------------------------------
# metrics on (label, prediction) arrays; plain numpy so the bootstrap loop stays fast


def accuracy(y, p):
    return float(np.mean(y == p))


def f1(y, p):
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    tp = np.sum((p == 1) & (y == 1))
    fp = np.sum((p == 1) & (y != 1))
    fn = np.sum((p != 1) & (y == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def matthews(y, p):
    """Multiclass Matthews correlation (same definition as sklearn); 0 when undefined."""
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    cm = np.bincount(inv[:n] * k + inv[n:], minlength=k * k).reshape(k, k).astype(float)
    t, q = cm.sum(1), cm.sum(0)  # true and predicted class counts
    num = np.trace(cm) * n - t @ q
    den = math.sqrt(n * n - q @ q) * math.sqrt(n * n - t @ t)
    return float(num / den) if den else 0.0


def pearson(y, p):
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.std() == 0 or p.std() == 0:  # undefined; 0 as the training script reports it, so runs compare
        return 0.0
    return float(np.corrcoef(y, p)[0, 1])


def spearman(y, p):
    return pearson(stats.rankdata(y), stats.rankdata(p))


METRIC_FNS = {"accuracy": accuracy, "f1": f1, "matthews_correlation": matthews,
              "pearson": pearson, "spearmanr": spearman}

# -----------------------------------------------------------------------------
# loading


def read_json(path):
    """(object, None) or (None, reason)."""
    try:
        with open(path) as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError) as e:
        return None, f"unreadable {path.name} ({type(e).__name__}: {e})"


def find_run_dirs(paths):
    """Run dirs (dirs holding run_args.json) at or below each path, first-seen order, no repeats."""
    seen, dirs = set(), []
    for p in map(Path, paths):
        for d in sorted(q.parent for q in p.rglob("run_args.json")):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                dirs.append(d)
    return dirs


def load_run(d):
    """(run, None) for a finished, readable run; (None, reason) otherwise."""
    d = Path(d)
    run_args, err = read_json(d / "run_args.json")
    if err:
        return None, err
    if not (d / "all_results.json").is_file():
        return None, "unfinished: no all_results.json"
    res, err = read_json(d / "all_results.json")
    if err:
        return None, err
    if not isinstance(res, dict):
        return None, "all_results.json is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in res]
    if missing:
        return None, f"missing keys in all_results.json: {', '.join(missing)}"
    task = str(res["task"]).lower().replace("-", "")
    if task not in MAIN_METRICS:
        return None, f"unknown task {res['task']!r}"
    main = MAIN_METRICS[task]
    missing = [f"eval_{m}" for m in main if f"eval_{m}" not in res]
    if missing:
        return None, f"missing keys in all_results.json: {', '.join(missing)}"
    try:
        metrics = {m: float(res[f"eval_{m}"]) for m in main}
        for k in ("matthews_correlation", "matthews_correlation_mm"):  # reported, not ranked by
            if f"eval_{k}" in res and k not in metrics:
                metrics[k] = float(res[f"eval_{k}"])
        run = {
            "name": d.name, "path": d, "task": task, "method": str(res["method"]).lower(),
            "seed": int(res["seed"]), "budget": int(res["rank_budget"]), "results": res, "args": run_args,
            "metrics": metrics, "score": float(np.mean([metrics[m] for m in main])),
            "time": float(res["train_runtime"]),
            "hook_seconds": float(res.get("method_hook_seconds", 0.0)),
            "params": float(res["trainable_params"]),
            "params_adapter": float(res.get("trainable_params_adapter", "nan")),
        }
    except (TypeError, ValueError) as e:
        return None, f"non-numeric value in all_results.json ({e})"
    bad = [k for k in ("score", "time") if not math.isfinite(run[k])]
    if bad:
        return None, f"non-finite {', '.join(bad)} in all_results.json"
    # the rank record is optional for the table: a missing one only costs the rank columns/figures
    ranks, err = read_json(d / "ranks.json")
    run["ranks"] = ranks if isinstance(ranks, dict) else None
    run["warnings"] = [f"{d}: {err}"] if err else []
    modules = (run["ranks"] or {}).get("modules") or {}
    try:
        run["total_rank"] = float(sum(m["final_rank"] for m in modules.values())) if modules else float("nan")
    except (KeyError, TypeError):
        run["total_rank"] = float("nan")
        run["warnings"].append(f"{d}: ranks.json modules lack final_rank")
    return run, None


def load_runs(paths):
    """Load every run below paths. Returns (runs, skipped) with skipped = [(path, reason)]."""
    runs, skipped, by_key = [], [], {}
    for d in find_run_dirs(paths):
        run, reason = load_run(d)
        if run is None:
            skipped.append((str(d), reason))
            continue
        by_key.setdefault((run["task"], run["budget"], run["method"], run["seed"]), []).append(run)
    for group in by_key.values():
        if len(group) == 1:
            runs.append(group[0])
            continue
        # The same seed twice (say a trial run beside the real one): which one is meant cannot be known, and
        # keeping both would double-count the seed. Keep neither and say so.
        for run in group:
            others = ", ".join(str(r["path"]) for r in group if r is not run)
            skipped.append((str(run["path"]), f"ambiguous: same task/budget/method/seed as {others}; keep one"))
    # run name = directory name; only where two runs share one, add parent dirs to tell them apart
    names = [r["name"] for r in runs]
    for r in runs:
        if names.count(r["name"]) > 1:
            r["name"] = "__".join(r["path"].resolve().parts[-3:])
    return runs, skipped

# -----------------------------------------------------------------------------
# statistics


def mean_std(values):
    """Mean and sample std (ddof=1; nan for a single value)."""
    v = np.asarray(values, float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan"))


def aggregate(runs):
    """Group runs by (task, budget, method) and aggregate over seeds."""
    by_key = {}
    for r in runs:
        by_key.setdefault((r["task"], r["budget"], r["method"]), []).append(r)
    groups = {}
    for (task, budget, method), rs in by_key.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        metric_names = [m for m in rs[0]["metrics"] if all(m in r["metrics"] for r in rs)]
        groups[(task, budget, method)] = {
            "task": task, "budget": budget, "method": method, "runs": rs, "n": len(rs),
            "seeds": [r["seed"] for r in rs],
            "scores": np.array([r["score"] for r in rs]),
            "score": mean_std([r["score"] for r in rs]),
            "metrics": {m: mean_std([r["metrics"][m] for r in rs]) for m in metric_names},
            "time": mean_std([r["time"] for r in rs]),
            "hook_seconds": float(np.mean([r["hook_seconds"] for r in rs])),
            "params": float(np.mean([r["params"] for r in rs])),
            "params_adapter": float(np.mean([r["params_adapter"] for r in rs])),
            "total_rank": float(np.mean([r["total_rank"] for r in rs])),
        }
    return dict(sorted(groups.items(), key=lambda kv: (task_key(kv[0][0]), kv[0][0], kv[0][1], method_key(kv[0][2]))))


def share_of_gain(lora, adalora, glora, n_bootstrap=2000, seed=0, alpha=0.05):
    """(GLoRA - LoRA) / (AdaLoRA - LoRA) on mean scores, with a bootstrap CI at level 1 - alpha.

    Each argument is the per-seed scores of one method, or a list of such arrays (one per task:
    the statistic then uses the average of the task means, like the GLUE average). The CI resamples
    seeds with replacement within each method (and task) independently. Undefined when AdaLoRA does
    not beat LoRA on mean; resamples where it does not are left out of the CI and counted.
    """
    def tasks(x):
        return [np.asarray(x, float)] if np.ndim(x[0]) == 0 else [np.asarray(t, float) for t in x]

    def mean(ts):
        return float(np.mean([t.mean() for t in ts]))

    L, A, G = tasks(lora), tasks(adalora), tasks(glora)
    ada_gain, glora_gain = mean(A) - mean(L), mean(G) - mean(L)
    out = {"share": None, "ci_low": None, "ci_high": None, "defined": False, "adalora_gain": ada_gain,
           "glora_gain": glora_gain, "frac_undefined": None, "note": ""}
    if not ada_gain > 0:
        out["note"] = f"undefined: AdaLoRA does not beat LoRA on mean (AdaLoRA - LoRA = {ada_gain:+.4f})"
        return out
    rng = np.random.default_rng(seed)

    def boot(ts):  # (n_bootstrap,) resampled statistic
        return np.mean([t[rng.integers(0, len(t), (n_bootstrap, len(t)))].mean(1) for t in ts], axis=0)

    bl, ba, bg = boot(L), boot(A), boot(G)
    ok = ba - bl > 0
    out.update(share=glora_gain / ada_gain, defined=True, frac_undefined=float(1 - ok.mean()))
    if ok.any():
        ratios = (bg[ok] - bl[ok]) / (ba[ok] - bl[ok])
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    if out["frac_undefined"] > 0:
        out["note"] = f"{out['frac_undefined']:.0%} of resamples had AdaLoRA <= LoRA (left out of the CI)"
    if min(len(t) for t in L + A + G) < 2:
        out["note"] = (out["note"] + "; " if out["note"] else "") + "a method has 1 seed: CI ignores its seed noise"
    return out


def two_sided_p(d):
    """Two-sided bootstrap p-value that the difference is 0: twice the smaller tail mass at 0,
    with the +1 correction so a finite bootstrap never claims p = 0."""
    B = len(d)
    lo, hi = (np.sum(d <= 0) + 1) / (B + 1), (np.sum(d >= 0) + 1) / (B + 1)
    return float(min(1.0, 2 * min(lo, hi)))


def no_bootstrap(*notes):
    """paired_bootstrap's result when no paired test can be made, with the reasons."""
    nan = float("nan")
    return {"delta": nan, "ci_low": nan, "ci_high": nan, "p": nan, "delta_per_seed": [], "p_per_seed": [],
            "n_examples": {}, "notes": list(notes)}


def paired_bootstrap(task, preds_a, preds_b, n_bootstrap=2000, seed=0, alpha=0.05):
    """Paired bootstrap over dev examples for method A vs method B.

    preds_a[k], preds_b[k]: {split: DataFrame(idx, label, prediction)} of the runs with the k-th
    shared seed. Examples are matched by idx (only idx present in every run are used). Each
    resample draws the same examples for all runs, so every seed pair sees the same resample; the
    statistic is the task score (metrics recomputed on the resample) of A minus B, averaged over
    the seed pairs. Per-seed p-values come from the same resamples.
    """
    entries = [(m, *metric_split(task, m)) for m in MAIN_METRICS[task]]  # (key, split, metric)
    K = len(preds_a)
    data = {}
    for split in sorted({s for _, s, _ in entries}):
        frames = [p[split].drop_duplicates("idx").set_index("idx") for p in preds_a + preds_b]
        idx = reduce(np.intersect1d, [f.index.to_numpy() for f in frames])
        frames = [f.loc[idx] for f in frames]
        y = frames[0]["label"].to_numpy()
        if any(not np.array_equal(f["label"].to_numpy(), y) for f in frames[1:]):
            # Rows are not matched to their examples (or the dev data differ): pairing them would test noise.
            return no_bootstrap(f"{split}: labels differ between runs for the same idx (predictions not in idx "
                                "order, or different dev data): no paired bootstrap")
        data[split] = (y, np.stack([f["prediction"].to_numpy() for f in frames]))

    def deltas(sample):  # (K,) score(A) - score(B) per seed pair on one resample
        scores = np.zeros(2 * K)
        for split, (y, P) in data.items():
            y, P = y[sample[split]], P[:, sample[split]]  # index once per split, not per metric and run
            for metric in [metric for _, s, metric in entries if s == split]:
                scores += [METRIC_FNS[metric](y, row) for row in P]
        scores /= len(entries)
        return scores[:K] - scores[K:]

    observed = deltas({s: slice(None) for s in data})
    rng = np.random.default_rng(seed)
    boot = np.empty((n_bootstrap, K))
    for b in range(n_bootstrap):
        boot[b] = deltas({s: rng.integers(0, len(y), len(y)) for s, (y, _) in data.items()})
    pooled = boot.mean(1)
    lo, hi = np.quantile(pooled, [alpha / 2, 1 - alpha / 2])
    return {"delta": float(observed.mean()), "ci_low": float(lo), "ci_high": float(hi), "p": two_sided_p(pooled),
            "delta_per_seed": [float(x) for x in observed],
            "p_per_seed": [two_sided_p(boot[:, k]) for k in range(K)],
            "n_examples": {s: len(y) for s, (y, _) in data.items()}, "notes": []}


def welch(a, b):
    """Welch's t-test (two-sided, unequal variances) over per-seed scores; nan if not computable."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return {"t": float("nan"), "p": float("nan"), "note": "Welch needs >= 2 seeds per method"}
    with warnings.catch_warnings():  # zero variance in both groups -> nan, reported as n/a
        warnings.simplefilter("ignore")
        r = stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(r.statistic), "p": float(r.pvalue), "note": ""}


def load_predictions(run):
    """{split: DataFrame(idx, label, prediction)} for every split the task's metrics need, or a reason."""
    out = {}
    for split in sorted({metric_split(run["task"], m)[0] for m in MAIN_METRICS[run["task"]]}):
        path = run["path"] / f"predictions_{split}.csv"
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as e:
            return None, f"{path}: {type(e).__name__}"
        if not {"idx", "label", "prediction"} <= set(df.columns) or len(df) == 0:
            return None, f"{path}: needs columns idx,label,prediction and at least one row"
        out[split] = df
    return out, None


def significance(groups, n_bootstrap=2000, seed=0, alpha=0.05):
    """Per (task, budget) and method pair A vs B: paired bootstrap over dev examples (seed-paired
    runs) and Welch's t-test over per-seed scores."""
    pred_cache, rows = {}, []

    def preds(run):
        if run["path"] not in pred_cache:
            pred_cache[run["path"]] = load_predictions(run)
        return pred_cache[run["path"]]

    for (task, budget) in dict.fromkeys((t, b) for t, b, _ in groups):
        methods = [m for t, b, m in groups if (t, b) == (task, budget)]
        pairs = PAIRS + [(m, "lora") for m in methods if m not in METHOD_ORDER]
        for a, b in pairs:
            if a not in methods or b not in methods:
                continue
            ga, gb = groups[(task, budget, a)], groups[(task, budget, b)]
            row = {"task": task, "budget": budget, "a": a, "b": b, "delta": ga["score"][0] - gb["score"][0],
                   "n_a": ga["n"], "n_b": gb["n"], "notes": []}
            w = welch(ga["scores"], gb["scores"])
            row.update(p_welch=w["p"], t_welch=w["t"])
            if w["note"]:
                row["notes"].append(w["note"])
            # pair runs with the same seed, and only those whose predictions load
            ra = {r["seed"]: r for r in ga["runs"]}
            rb = {r["seed"]: r for r in gb["runs"]}
            seeds = []
            for s in sorted(set(ra) & set(rb)):
                (pa, ea), (pb, eb) = preds(ra[s]), preds(rb[s])
                if pa is None or pb is None:
                    row["notes"].append(f"seed {s}: no predictions ({ea or eb})")
                else:
                    seeds.append(s)
            row["paired_seeds"] = seeds
            if seeds:
                boot = paired_bootstrap(task, [preds(ra[s])[0] for s in seeds], [preds(rb[s])[0] for s in seeds],
                                        n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
            else:
                boot = no_bootstrap("no seed-paired runs with predictions: no paired bootstrap")
            row.update(delta_boot=boot["delta"], boot_ci_low=boot["ci_low"], boot_ci_high=boot["ci_high"],
                       p_boot=boot["p"], p_boot_per_seed=boot["p_per_seed"],
                       delta_per_seed=boot["delta_per_seed"], n_examples=boot["n_examples"])
            row["notes"] += boot["notes"]
            row["sig_boot"] = bool(row["p_boot"] < alpha)  # nan < alpha is False
            row["sig_welch"] = bool(row["p_welch"] < alpha)
            rows.append(row)
    return rows

# -----------------------------------------------------------------------------
# the table


def make_table(groups, sig=(), n_bootstrap=2000, seed=0, alpha=0.05):
    """One row per (task, budget, method) plus a GLUE-average row per (budget, method) when there
    are >= 2 tasks. Values on the metrics' own scale (0..1); overhead in %."""
    sig = {(s["task"], s["budget"], s["a"], s["b"]): s for s in sig}
    nan = float("nan")
    rows = []
    for (task, budget, method), g in groups.items():
        row = {"task": task, "budget": budget, "method": method, "n_seeds": g["n"],
               "seeds": " ".join(map(str, g["seeds"])), "main_metrics": " ".join(MAIN_METRICS[task]),
               "score_mean": g["score"][0], "score_std": g["score"][1]}
        for m, (mu, sd) in g["metrics"].items():
            row[f"{m}_mean"], row[f"{m}_std"] = mu, sd
        row.update(trainable_params=g["params"], trainable_params_adapter=g["params_adapter"],
                   total_rank=g["total_rank"], train_time_mean=g["time"][0], train_time_std=g["time"][1],
                   hook_seconds_mean=g["hook_seconds"])
        lora = groups.get((task, budget, "lora"))
        row["overhead_vs_lora_pct"] = 100 * (g["time"][0] / lora["time"][0] - 1) if lora else nan
        row["delta_vs_lora"] = g["score"][0] - lora["score"][0] if lora else nan
        s = sig.get((task, budget, method, "lora"), {})
        row["p_boot_vs_lora"], row["p_welch_vs_lora"] = s.get("p_boot", nan), s.get("p_welch", nan)
        ada = groups.get((task, budget, "adalora"))
        if method == "glora" and lora and ada:
            row.update(share_columns(share_of_gain(lora["scores"], ada["scores"], g["scores"],
                                                 n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)))
        rows.append(row)

    for budget in dict.fromkeys(b for _, b, _ in groups):
        methods = sorted({m for _, b, m in groups if b == budget}, key=method_key)
        # average only over tasks every method has, so the averages compare like with like
        tasks = [t for t in dict.fromkeys(t for t, _, _ in groups) if all((t, budget, m) in groups for m in methods)]
        if len(tasks) < 2:
            continue
        G = {m: [groups[(t, budget, m)] for t in tasks] for m in methods}
        avg = {m: float(np.mean([g["score"][0] for g in G[m]])) for m in methods}
        time = {m: float(np.mean([g["time"][0] for g in G[m]])) for m in methods}
        for m in methods:
            row = {"task": "GLUE avg", "budget": budget, "method": m, "n_seeds": min(g["n"] for g in G[m]),
                   "seeds": "", "main_metrics": "", "avg_over": " ".join(tasks), "score_mean": avg[m], "score_std": nan,
                   "train_time_mean": time[m], "train_time_std": nan,
                   "overhead_vs_lora_pct": 100 * (time[m] / time["lora"] - 1) if "lora" in avg else nan,
                   "delta_vs_lora": avg[m] - avg["lora"] if "lora" in avg else nan}
            if m == "glora" and "lora" in G and "adalora" in G:
                row.update(share_columns(share_of_gain([g["scores"] for g in G["lora"]],
                                                     [g["scores"] for g in G["adalora"]],
                                                     [g["scores"] for g in G["glora"]],
                                                     n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)))
            rows.append(row)
    return rows


def share_columns(s):
    return {"share_of_gain": s["share"], "share_ci_low": s["ci_low"], "share_ci_high": s["ci_high"],
            "share_defined": s["defined"], "share_note": s["note"]}


def fmt(x, scale=100.0, digits=2):
    return "—" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"


def fmt_pm(mu, sd, scale=100.0):
    return fmt(mu, scale) if not np.isfinite(sd) else f"{fmt(mu, scale)} ± {fmt(sd, scale)}"


def fmt_p(p, alpha):
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.3g}{'*' if p < alpha else ''}"


def fmt_share(row):
    if "share_defined" not in row:
        return ""
    if not row["share_defined"]:
        return "undefined (AdaLoRA does not beat LoRA)"
    ci = (f" [{fmt(row['share_ci_low'], 100, 0)}, {fmt(row['share_ci_high'], 100, 0)}]"
          if row["share_ci_low"] is not None else " [CI n/a]")
    return f"**{fmt(row['share_of_gain'], 100, 0)}%**{ci}"


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(rows, sig, skipped, warn, alpha, n_bootstrap, seed):
    out = ["# LoRA vs AdaLoRA vs GLoRA", ""]
    # the headline: share of AdaLoRA's gain recovered, on the GLUE average if there is one
    for budget in dict.fromkeys(r["budget"] for r in rows):
        glora = [r for r in rows if r["budget"] == budget and r["method"] == "glora" and "share_defined" in r]
        # one line on the GLUE average if there is one, else one per task
        glora = [r for r in glora if r["task"] == "GLUE avg"] or glora
        for r in glora:
            where = f"GLUE avg over {r['avg_over'].replace(' ', ', ')}" if r["task"] == "GLUE avg" else r["task"]
            ovh = {x["method"]: x["overhead_vs_lora_pct"] for x in rows if (x["task"], x["budget"]) == (r["task"], budget)}
            cost = ", ".join(f"{method_name(m)} {v:+.1f}%" for m, v in ovh.items() if m != "lora" and np.isfinite(v))
            if r["share_defined"]:
                ci = ("" if r["share_ci_low"] is None else
                      f" (seed-bootstrap {1 - alpha:.0%} CI {fmt(r['share_ci_low'], 100, 0)}% to "
                      f"{fmt(r['share_ci_high'], 100, 0)}%)")
                out.append(f"**GLoRA recovers {fmt(r['share_of_gain'], 100, 0)}% of AdaLoRA's gain over LoRA**{ci} "
                           f"on {where}, R_total = {budget}. Training-time overhead vs LoRA: {cost or 'n/a'}."
                           + (f" ({r['share_note']})" if r["share_note"] else ""))
            else:
                out.append(f"**Share of AdaLoRA's gain recovered by GLoRA: undefined** on {where}, R_total = {budget}: "
                           f"{r['share_note']}. Training-time overhead vs LoRA: {cost or 'n/a'}.")
            out.append("")
    out += [(f"Scores ×100, mean ± sample std over seeds (n = seeds). Score = mean of the task's main metrics. "
             f"Share of gain = (GLoRA − LoRA) / (AdaLoRA − LoRA) on the score, CI from {n_bootstrap} seed resamples. "
             f"**Significance threshold α = {alpha}: p-values below it are marked \\*** (two-sided, no multiple-comparison "
             f"correction). Paired bootstrap: {n_bootstrap} resamples of dev examples (matched by idx, seed-paired runs, "
             f"bootstrap seed {seed}); Welch: t-test over per-seed scores. GLUE avg: mean task score over the tasks "
             f"every method has; its seeds = the fewest of any task, its train time = mean per task (so its overhead "
             f"compares total training time)."), ""]

    headers = ["task", "R_total", "method", "seeds", "main metric(s)", "score", "MCC", "trainable params",
               "total rank", "train time (s)", "overhead vs LoRA", "Δ score vs LoRA", "share of AdaLoRA's gain",
               "p boot vs LoRA", "p Welch vs LoRA"]
    body = []
    for r in rows:
        if r["task"] == "GLUE avg":
            main = f"mean over {r['avg_over'].replace(' ', ', ')}"
            mcc = params = rank = "—"
        else:
            main = " / ".join(f"{SHORT.get(m, m)} {fmt_pm(r[f'{m}_mean'], r[f'{m}_std'])}" for m in r["main_metrics"].split())
            mccs = [(k, r[f"{k}_mean"], r[f"{k}_std"]) for k in ("matthews_correlation", "matthews_correlation_mm")
                    if f"{k}_mean" in r]
            mcc = " / ".join(("mm " if k.endswith("_mm") else "") + fmt_pm(mu, sd) for k, mu, sd in mccs) or "—"
            params, rank = f"{r['trainable_params']:,.0f}", fmt(r["total_rank"], 1, 0)
        ovh = "" if r["method"] == "lora" else fmt(r["overhead_vs_lora_pct"], 1, 1) + "%"
        delta = "" if r["method"] == "lora" else f"{r['delta_vs_lora'] * 100:+.2f}" if np.isfinite(r["delta_vs_lora"]) else "—"
        p_b = p_w = ""
        if r["method"] != "lora" and r["task"] != "GLUE avg":
            p_b, p_w = fmt_p(r["p_boot_vs_lora"], alpha), fmt_p(r["p_welch_vs_lora"], alpha)
        body.append([r["task"], r["budget"], method_name(r["method"]), r["n_seeds"], main,
                     fmt_pm(r["score_mean"], r["score_std"]), mcc, params, rank,
                     fmt_pm(r["train_time_mean"], r["train_time_std"], 1), ovh, delta, fmt_share(r), p_b, p_w])
    out += ["## Results", "", md_table(headers, body), ""]

    if sig:
        headers = ["task", "R_total", "A vs B", "seeds (A, B, paired)", "Δ score A−B", f"bootstrap {1 - alpha:.0%} CI",
                   "p paired bootstrap", "p per seed", "p Welch", f"significant at α = {alpha}"]
        body = []
        for s in sig:
            verdict = " + ".join(n for n, ok in (("bootstrap", s["sig_boot"]), ("Welch", s["sig_welch"])) if ok) or "no"
            ci = "—" if not np.isfinite(s["boot_ci_low"]) else f"[{s['boot_ci_low'] * 100:+.2f}, {s['boot_ci_high'] * 100:+.2f}]"
            per_seed = ", ".join(f"s{k}: {fmt_p(p, alpha)}" for k, p in zip(s["paired_seeds"], s["p_boot_per_seed"])) or "—"
            body.append([s["task"], s["budget"], f"{method_name(s['a'])} vs {method_name(s['b'])}",
                         f"{s['n_a']}, {s['n_b']}, {len(s['paired_seeds'])}", f"{s['delta'] * 100:+.2f}", ci,
                         fmt_p(s["p_boot"], alpha), per_seed, fmt_p(s["p_welch"], alpha), verdict])
        out += ["## Significance", "", md_table(headers, body), ""]
        sig_notes = [f"- {s['task']} {method_name(s['a'])} vs {method_name(s['b'])}: {n}" for s in sig for n in s["notes"]]
        if sig_notes:
            out += sig_notes + [""]

    if skipped:
        out += ["## Skipped runs", ""] + [f"- `{p}`: {reason}" for p, reason in skipped] + [""]
    if warn:
        out += ["## Warnings", ""] + [f"- {w}" for w in warn] + [""]
    return "\n".join(out)

# -----------------------------------------------------------------------------
# figures


def save(fig, out_dir, stem):
    for ext in ("png", "pdf"):
        fig.savefig(Path(out_dir) / f"{stem}.{ext}", dpi=150)  # margins come from tight/constrained layout
    plt.close(fig)
    return [Path(out_dir) / f"{stem}.{ext}" for ext in ("png", "pdf")]


def series_of(groups):
    """(budget, method) series with their legend labels; the budget is named only if there are several."""
    series = sorted({(b, m) for _, b, m in groups}, key=lambda s: (s[0], method_key(s[1])))
    several = len({b for b, _ in series}) > 1
    return [(b, m, method_name(m) + (f" (R={b})" if several else "")) for b, m in series]


def color(method):
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return plt.get_cmap("tab10")(3 + sum(map(ord, method)) % 7)  # stable, away from the three above


def fig_bars(groups, rows, out_dir):
    """One bar chart per main metric name (tasks on x), plus one of the task score with the GLUE average."""
    tasks = list(dict.fromkeys(t for t, _, _ in groups))
    panels = {}  # metric name -> [(x label, task, metric key)]
    for t in tasks:
        for m in MAIN_METRICS[t]:
            base = "accuracy" if m == "accuracy_mm" else m
            label = ("mnli-mm" if m.endswith("_mm") else "mnli-m") if t == "mnli" else t
            panels.setdefault(base, []).append((label, t, m))
    panels["score"] = [(t, t, "score") for t in tasks]
    avg = {(r["budget"], r["method"]): r["score_mean"] for r in rows if r["task"] == "GLUE avg"}
    if avg:
        panels["score"].append(("GLUE avg", "GLUE avg", "score"))
    series = series_of(groups)
    written = []
    for metric, xs in panels.items():
        fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.45 * len(xs) * len(series)), 3.6))
        width = 0.8 / len(series)
        pos = np.arange(len(xs))
        lows = []
        for i, (budget, method, label) in enumerate(series):
            mu, sd = [], []  # nan std (GLUE avg, one seed) draws no error bar
            for _, t, m in xs:
                g = groups.get((t, budget, method))
                if t == "GLUE avg":
                    mu.append(avg.get((budget, method), np.nan))
                    sd.append(np.nan)
                elif g is None:
                    mu.append(np.nan)
                    sd.append(np.nan)
                else:
                    mu.append((g["score"] if m == "score" else g["metrics"][m])[0])
                    sd.append((g["score"] if m == "score" else g["metrics"][m])[1])
            mu, sd = 100 * np.array(mu), 100 * np.array(sd)
            ax.bar(pos + (i - (len(series) - 1) / 2) * width, mu, width, yerr=sd, capsize=3, label=label,
                   color=color(method), edgecolor="black", linewidth=0.5)
            lows.append(np.nanmin(mu - np.nan_to_num(sd)) if np.isfinite(mu).any() else 0)
        # bars from 0 would hide differences of a point or two: start the axis a little below the lowest bar
        ax.set_ylim(bottom=max(0.0, math.floor(min(lows)) - 5))
        ax.set_xticks(pos, [x for x, _, _ in xs])
        name = "task score (mean of main metrics)" if metric == "score" else metric.replace("_", " ")
        ax.set_xlabel("task")
        ax.set_ylabel(f"{metric.replace('_', ' ')} ×100")
        ax.set_title(f"{name}\nmean ± std over seeds", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written += save(fig, out_dir, f"comparison_{metric}_bar")
    return written


def fig_metric_vs_time(groups, out_dir):
    tasks = list(dict.fromkeys(t for t, _, _ in groups))
    ncol = min(3, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    labels = {(b, m): lab for b, m, lab in series_of(groups)}
    for ax, task in zip(axes.flat, tasks):
        for (t, budget, method), g in groups.items():
            if t != task:
                continue
            c = color(method)
            ax.scatter([r["time"] for r in g["runs"]], [100 * r["score"] for r in g["runs"]], color=c, alpha=0.4, s=18)
            ax.errorbar(g["time"][0], 100 * g["score"][0], xerr=np.nan_to_num(g["time"][1]),
                        yerr=100 * np.nan_to_num(g["score"][1]), fmt="o", ms=8, color=c, mec="black", capsize=3,
                        label=labels[(budget, method)])
        ax.set_title(task)
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("task score ×100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle("Task score vs training time (small: runs, large: mean ± std)")
    fig.tight_layout()
    return save(fig, out_dir, "comparison_metric_vs_time")


def fig_learning_curve(run, out_dir):
    state, err = read_json(run["path"] / "trainer_state.json")
    log = state.get("log_history") if isinstance(state, dict) else None
    if not log:
        note(f"no learning curve for {run['name']}: {err or 'empty log_history'}")
        return []
    loss = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    keys = [f"eval_{m}" for m in MAIN_METRICS[run["task"]] if any(f"eval_{m}" in e for e in log)]
    keys = keys or [k for k in ("eval_loss",) if any(k in e for e in log)]
    if not loss and not keys:
        note(f"no learning curve for {run['name']}: log_history has neither loss nor eval metrics")
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    if loss:
        a1.plot(*zip(*loss), color="black", lw=1, label="training loss")
    for k in keys:
        pts = [(e["step"], e[k]) for e in log if k in e and "step" in e]
        a2.plot(*zip(*pts), marker="o", ms=3, label=k.removeprefix("eval_"))
    # the method's own schedule: when the ranks change
    ranks = run["ranks"] or {}
    marks = []
    if isinstance(ranks.get("glora"), dict) and ranks["glora"].get("reallocation_step") is not None:
        marks.append((ranks["glora"]["reallocation_step"], "GLoRA reallocation", "tab:green", "--"))
    ada = ranks.get("adalora") if isinstance(ranks.get("adalora"), dict) else {}
    if ada.get("tinit") is not None:
        marks.append((ada["tinit"], "AdaLoRA tinit (pruning starts)", "tab:orange", "--"))
    if ada.get("total_step") is not None and ada.get("tfinal") is not None:
        marks.append((ada["total_step"] - ada["tfinal"], "AdaLoRA total_step − tfinal (ranks fixed)", "tab:red", ":"))
    for ax in (a1, a2):
        for step, label, c, ls in marks:
            ax.axvline(step, color=c, ls=ls, lw=1.2, label=label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no eval during training: the right panel may be empty
            ax.legend(fontsize=7)
    a1.set_ylabel("training loss")
    a1.set_title("training loss")
    a2.set_ylabel("eval metric")
    a2.set_title("evaluation")
    if not keys:
        a2.text(0.5, 0.5, "no evaluation during training\n(--eval_strategy no)", ha="center", va="center",
                transform=a2.transAxes, color="gray")
    fig.suptitle(f"{run['name']}: {run['task']}, {method_name(run['method'])}, seed {run['seed']}, R_total={run['budget']}")
    fig.tight_layout()
    return save(fig, out_dir, f"{run['name']}_learning_curve")


def rank_grid(runs):
    """Mean final rank over runs as a {(layer, matrix): rank} dict; number of runs used."""
    cells, used = {}, 0
    for r in runs:
        modules = (r["ranks"] or {}).get("modules") or {}
        if not modules:
            continue
        used += 1
        for m in modules.values():
            if "layer" in m and "matrix" in m and "final_rank" in m:
                cells.setdefault((int(m["layer"]), m["matrix"]), []).append(float(m["final_rank"]))
    return {k: float(np.mean(v)) for k, v in cells.items()}, used


def fig_rank_heatmaps(groups, out_dir):
    written = []
    keys = list(dict.fromkeys((t, b) for t, b, _ in groups))
    for task, budget in keys:
        grids = []
        for method in ("glora", "adalora"):
            g = groups.get((task, budget, method))
            if g:
                grid, used = rank_grid(g["runs"])
                if grid:
                    grids.append((method, grid, used))
        several_budgets = sum(t == task for t, _ in keys) > 1
        stem = f"{task}_r{budget}_rank_heatmap" if several_budgets else f"{task}_rank_heatmap"
        if not grids:
            note(f"no {stem}: no GLoRA/AdaLoRA runs with ranks.json modules for {task}, R_total={budget}")
            continue
        layers = sorted({k[0] for _, grid, _ in grids for k in grid})
        found = {k[1] for _, grid, _ in grids for k in grid}
        mats = [m for m in MATRIX_ORDER if m in found] + sorted(found - set(MATRIX_ORDER))
        arrays = [np.array([[grid.get((ly, mt), np.nan) for mt in mats] for ly in layers]) for _, grid, _ in grids]
        vmin, vmax = min(np.nanmin(a) for a in arrays), max(np.nanmax(a) for a in arrays)  # one shared scale
        fig, axes = plt.subplots(1, len(grids), figsize=(0.75 * len(mats) * len(grids) + 2.5, 0.32 * len(layers) + 2.2),
                                 squeeze=False, layout="constrained")
        for ax, (method, grid, used), A in zip(axes[0], grids, arrays):
            im = ax.imshow(A, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
            for i in range(A.shape[0]):
                for j in range(A.shape[1]):
                    if np.isfinite(A[i, j]):
                        dark = (A[i, j] - vmin) / ((vmax - vmin) or 1) < 0.5
                        ax.text(j, i, f"{A[i, j]:.0f}" if used == 1 else f"{A[i, j]:.1f}", ha="center",
                                va="center", fontsize=6, color="white" if dark else "black")
            ax.set_xticks(range(len(mats)), mats, rotation=45, ha="right")
            ax.set_yticks(range(len(layers)), layers)
            ax.set_xlabel("matrix type")
            ax.set_ylabel("layer")
            ax.set_title(f"{method_name(method)} final rank\n(mean over {used} seed{'s' * (used > 1)})", fontsize=9)
        fig.colorbar(im, ax=list(axes[0]), label="final rank")
        fig.suptitle(f"{task}: rank allocation, R_total={budget}")
        written += save(fig, out_dir, stem)
    return written


def fig_score_vs_rank(groups, out_dir):
    written = []
    for (task, budget, method), g in groups.items():
        if method != "glora":
            continue
        modules = [m for r in g["runs"] for m in ((r["ranks"] or {}).get("modules") or {}).values()]
        pts = [(m["score"], m["final_rank"], m.get("matrix", "?"), m.get("initial_rank"))
               for m in modules if m.get("score") is not None and m.get("final_rank") is not None]
        several_budgets = sum(t == task for t, _, m in groups if m == "glora") > 1
        stem = f"{task}_r{budget}_glora_score_vs_rank" if several_budgets else f"{task}_glora_score_vs_rank"
        if not pts:
            note(f"no {stem}: GLoRA runs have no per-module scores in ranks.json")
            continue
        score = np.array([p[0] for p in pts], float)
        rank = np.array([p[1] for p in pts], float)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        found = {p[2] for p in pts}
        for i, mt in enumerate([m for m in MATRIX_ORDER if m in found] + sorted(found - set(MATRIX_ORDER))):
            sel = np.array([p[2] == mt for p in pts])
            ax.scatter(score[sel], rank[sel], s=18, alpha=0.7, color=plt.get_cmap("tab10")(i), label=mt)
        init = {p[3] for p in pts if p[3] is not None}
        if len(init) == 1:
            ax.axhline(init.pop(), color="gray", ls="--", lw=1, label="initial (uniform) rank")
        if (score > 0).all() and score.max() > 100 * score.min():
            ax.set_xscale("log")
        rho = spearman(score, rank)
        ax.set_xlabel("GLoRA score (EMA of gradient norm)")
        ax.set_ylabel("assigned (final) rank")
        ax.set_title(f"{task}: GLoRA score vs assigned rank, R_total={budget}\n"
                     f"{len(pts)} modules over {g['n']} seed{'s' * (g['n'] > 1)}, Spearman ρ = {rho:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="matrix", title_fontsize=7)
        fig.tight_layout()
        written += save(fig, out_dir, stem)
    return written


def figures(runs, groups, rows, out_dir, learning_curves=True):
    """Write every figure the data allows; return the paths written."""
    written = fig_bars(groups, rows, out_dir) + fig_metric_vs_time(groups, out_dir)
    if learning_curves:
        for r in runs:
            written += fig_learning_curve(r, out_dir)
    written += fig_rank_heatmaps(groups, out_dir)
    if not any(m == "glora" for _, _, m in groups):
        note("no GLoRA score-vs-rank figures: no GLoRA runs")
    written += fig_score_vs_rank(groups, out_dir)
    return written

# -----------------------------------------------------------------------------


def to_json(x):
    """JSON-safe copy: nan/inf -> null, numpy -> python, paths -> str."""
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, Path):
        return str(x)
    return x


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Compare finished LoRA / AdaLoRA / GLoRA GLUE runs: table, statistics, figures.")
    p.add_argument("inputs", nargs="+", help="run directories or sweep roots (searched recursively for dirs with run_args.json)")
    p.add_argument("--out_dir", default=None, help="where to write tables and figures (default: <first input>/comparison)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance threshold; CIs are at level 1 - alpha (default 0.05)")
    p.add_argument("--n_bootstrap", type=int, default=2000, help="bootstrap resamples for p-values and CIs (default 2000)")
    p.add_argument("--bootstrap_seed", type=int, default=0, help="RNG seed of every bootstrap, for reproducible numbers (default 0)")
    p.add_argument("--no_figures", action="store_true", help="write the tables only")
    p.add_argument("--no_learning_curves", action="store_true", help="skip the per-run learning-curve figures (one per run)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for p in args.inputs:
        if not Path(p).is_dir():
            print(f"error: {p} is not a directory", file=sys.stderr)
            return 2
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.inputs[0]) / "comparison"
    runs, skipped = load_runs(args.inputs)
    for path, reason in skipped:
        note(f"skipped {path}: {reason}")
    if not runs:
        print(f"error: no finished runs under {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    kw = {"n_bootstrap": args.n_bootstrap, "seed": args.bootstrap_seed, "alpha": args.alpha}
    groups = aggregate(runs)
    sig = significance(groups, **kw)
    rows = make_table(groups, sig, **kw)
    warn = [w for r in runs for w in r["warnings"]]
    md = render_markdown(rows, sig, skipped, warn, args.alpha, args.n_bootstrap, args.bootstrap_seed)
    print(md)
    (out_dir / "comparison.md").write_text(md + "\n")
    pd.DataFrame(rows).to_csv(out_dir / "comparison.csv", index=False)
    pd.DataFrame([{k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in s.items() if k != "n_examples"}
                  for s in sig]).to_csv(out_dir / "comparison_significance.csv", index=False)
    settings = {"inputs": args.inputs, "alpha": args.alpha, "n_bootstrap": args.n_bootstrap,
                "bootstrap_seed": args.bootstrap_seed, "ci_level": 1 - args.alpha,
                "runs": [str(r["path"]) for r in runs]}
    with open(out_dir / "comparison.json", "w") as f:
        json.dump(to_json({"settings": settings, "table": rows, "significance": sig,
                           "skipped": [{"path": p, "reason": r} for p, r in skipped], "warnings": warn}), f, indent=2)
    if not args.no_figures:
        written = figures(runs, groups, rows, out_dir, learning_curves=not args.no_learning_curves)
        note(f"{len(written)} figure files written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
