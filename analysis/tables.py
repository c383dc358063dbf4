"""The comparison table (one output row per task × budget × method, plus GLUE averages) and its Markdown.

Output rows are plain dicts: they are the CSV/JSON schema, column name -> value, with one pair of
mean/std columns per metric the task has."""
import math
from pathlib import Path

import numpy as np

from analysis.fairness import hpo_summary, unequal_capacity
from analysis.runs import MAIN_METRICS, method_key, method_name
from analysis.stats import MIN_SEEDS, min_usable_fraction, share_of_gain

SHORT = {"accuracy": "acc", "accuracy_mm": "acc_mm", "f1": "f1", "matthews_correlation": "mcc",
         "pearson": "pearson", "spearmanr": "spearman"}
GLUE_AVG = "GLUE avg"
NAN = float("nan")


def make_table(groups, sig=(), n_bootstrap=2000, seed=0, alpha=0.05):
    """One row per (task, budget, method) plus a GLUE-average row per (budget, method) when there
    are >= 2 tasks. Values on the metrics' own scale (0..1); overhead in %."""
    sig = {(s.task, s.budget, s.a, s.b): s for s in sig}
    boot = {"n_bootstrap": n_bootstrap, "seed": seed, "alpha": alpha}
    rows = []
    for (task, budget, method), g in groups.items():
        row = {"task": task, "budget": budget, "method": method, "n_seeds": g.n,
               "seeds": " ".join(map(str, g.seeds)), "main_metrics": " ".join(MAIN_METRICS[task]),
               "score_mean": g.score.mean, "score_std": g.score.std}
        for m, ms in g.metrics.items():
            row[f"{m}_mean"], row[f"{m}_std"] = ms.mean, ms.std
        row.update(trainable_params=g.mean_of("params"), trainable_params_adapter=g.mean_of("params_adapter"),
                   adapter_params_effective=g.mean_of("adapter_params_effective"), tuning=hpo_summary(g),
                   total_rank=g.mean_of("total_rank"), train_time_mean=g.time.mean, train_time_std=g.time.std,
                   hook_seconds_mean=g.mean_of("hook_seconds"))
        lora = groups.get((task, budget, "lora"))
        row["overhead_vs_lora_pct"] = 100 * (g.time.mean / lora.time.mean - 1) if lora else NAN
        row["delta_vs_lora"] = g.score.mean - lora.score.mean if lora else NAN
        s = sig.get((task, budget, method, "lora"))
        row["p_boot_vs_lora"], row["p_welch_vs_lora"] = (s.p_boot, s.p_welch) if s else (NAN, NAN)
        row["p_hier_vs_lora"], row["verdict_vs_lora"] = (s.p_hier, s.verdict) if s else (NAN, "")
        ada = groups.get((task, budget, "adalora"))
        if method == "glora" and lora and ada:
            row.update(share_columns(share_of_gain(lora.scores, ada.scores, g.scores, **boot)),
                       share_capacity=unequal_capacity([lora, ada, g]))
        rows.append(row)

    for budget in dict.fromkeys(b for _, b, _ in groups):
        methods = sorted({m for _, b, m in groups if b == budget}, key=method_key)
        # average only over tasks every method has, so the averages compare like with like
        tasks = [t for t in dict.fromkeys(t for t, _, _ in groups) if all((t, budget, m) in groups for m in methods)]
        if len(tasks) < 2:
            continue
        G = {m: [groups[(t, budget, m)] for t in tasks] for m in methods}
        avg = {m: float(np.mean([g.score.mean for g in G[m]])) for m in methods}
        time = {m: float(np.mean([g.time.mean for g in G[m]])) for m in methods}
        for m in methods:
            row = {"task": GLUE_AVG, "budget": budget, "method": m, "n_seeds": min(g.n for g in G[m]),
                   "seeds": "", "main_metrics": "", "avg_over": " ".join(tasks), "score_mean": avg[m], "score_std": NAN,
                   "train_time_mean": time[m], "train_time_std": NAN,
                   "overhead_vs_lora_pct": 100 * (time[m] / time["lora"] - 1) if "lora" in avg else NAN,
                   "delta_vs_lora": avg[m] - avg["lora"] if "lora" in avg else NAN}
            if m == "glora" and "lora" in G and "adalora" in G:
                row.update(share_columns(share_of_gain(*([g.scores for g in G[k]] for k in ("lora", "adalora", "glora")),
                                                       **boot)))
                unequal = [t for t in tasks if unequal_capacity([groups[(t, budget, k)] for k in ("lora", "adalora", "glora")])]
                row["share_capacity"] = f"unequal capacity on {', '.join(unequal)}" if unequal else ""
            rows.append(row)
    return rows


def share_columns(s):
    return {"share_of_gain": s.share, "share_ci_low": s.ci_low, "share_ci_high": s.ci_high,
            "share_defined": s.defined, "share_estimable": s.estimable, "share_usable_resamples": s.n_usable,
            "share_resamples": s.n_resamples, "share_note": s.note}


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
    if row.get("share_capacity"):
        return fmt_share({**row, "share_capacity": ""}) + "; " + row["share_capacity"]
    if not row["share_defined"]:
        return "undefined (AdaLoRA does not beat LoRA)"
    usable = f"{row['share_usable_resamples']}/{row['share_resamples']} resamples usable"
    if not row["share_estimable"]:
        return f"**{fmt(row['share_of_gain'], 100, 0)}%** [interval not estimable: {usable}]"
    return (f"**{fmt(row['share_of_gain'], 100, 0)}%** [{fmt(row['share_ci_low'], 100, 0)}, "
            f"{fmt(row['share_ci_high'], 100, 0)}] ({usable})")


def md_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def headline(rows, alpha):
    """The share of AdaLoRA's gain recovered: one line on the GLUE average if there is one, else one per task."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        glora = [r for r in rows if r["budget"] == budget and r["method"] == "glora" and "share_defined" in r]
        glora = [r for r in glora if r["task"] == GLUE_AVG] or glora
        for r in glora:
            where = f"GLUE avg over {r['avg_over'].replace(' ', ', ')}" if r["task"] == GLUE_AVG else r["task"]
            ovh = {x["method"]: x["overhead_vs_lora_pct"] for x in rows if (x["task"], x["budget"]) == (r["task"], budget)}
            cost = ", ".join(f"{method_name(m)} {v:+.1f}%" for m, v in ovh.items() if m != "lora" and np.isfinite(v))
            if r["share_defined"]:
                ci = (f" (seed-bootstrap {1 - alpha:.0%} CI {fmt(r['share_ci_low'], 100, 0)}% to "
                      f"{fmt(r['share_ci_high'], 100, 0)}%)" if r["share_estimable"] else
                      f" ({1 - alpha:.0%} interval not estimable)")
                out.append(f"**GLoRA recovers {fmt(r['share_of_gain'], 100, 0)}% of AdaLoRA's gain over LoRA**{ci} "
                           f"on {where}, R_total = {budget}. Training-time overhead vs LoRA: {cost or 'n/a'}."
                           + (f" ({r['share_note']})" if r["share_note"] else "")
                           + (f" **{r['share_capacity']}.**" if r.get("share_capacity") else ""))
            else:
                out.append(f"**Share of AdaLoRA's gain recovered by GLoRA: undefined** on {where}, R_total = {budget}: "
                           f"{r['share_note']}. Training-time overhead vs LoRA: {cost or 'n/a'}.")
            out.append("")
    return out


def results_table(rows, alpha):
    headers = ["task", "R_total", "method", "seeds", "main metric(s)", "score", "MCC", "trainable params",
               "adapter params (effective)",
               "total rank", "train time (s)", "overhead vs LoRA", "Δ score vs LoRA", "share of AdaLoRA's gain",
               "p seeds+examples vs LoRA", "p Welch vs LoRA", f"verdict vs LoRA (α = {alpha})"]
    body = []
    for r in rows:
        if r["task"] == GLUE_AVG:
            main = f"mean over {r['avg_over'].replace(' ', ', ')}"
            mcc = params = adapter = rank = "—"
        else:
            main = " / ".join(f"{SHORT.get(m, m)} {fmt_pm(r[f'{m}_mean'], r[f'{m}_std'])}" for m in r["main_metrics"].split())
            mccs = [(k, r[f"{k}_mean"], r[f"{k}_std"]) for k in ("matthews_correlation", "matthews_correlation_mm")
                    if f"{k}_mean" in r]
            mcc = " / ".join(("mm " if k.endswith("_mm") else "") + fmt_pm(mu, sd) for k, mu, sd in mccs) or "—"
            params, rank = f"{r['trainable_params']:,.0f}", fmt(r["total_rank"], 1, 0)
            adapter = f"{r['adapter_params_effective']:,.0f}" if np.isfinite(r["adapter_params_effective"]) else "—"
        ovh = "" if r["method"] == "lora" else fmt(r["overhead_vs_lora_pct"], 1, 1) + "%"
        delta = "" if r["method"] == "lora" else f"{r['delta_vs_lora'] * 100:+.2f}" if np.isfinite(r["delta_vs_lora"]) else "—"
        p_h = p_w = verdict = ""
        if r["method"] != "lora" and r["task"] != GLUE_AVG:
            p_h, p_w, verdict = fmt_p(r["p_hier_vs_lora"], alpha), fmt_p(r["p_welch_vs_lora"], alpha), r["verdict_vs_lora"]
        body.append([r["task"], r["budget"], method_name(r["method"]), r["n_seeds"], main,
                     fmt_pm(r["score_mean"], r["score_std"]), mcc, params, adapter, rank,
                     fmt_pm(r["train_time_mean"], r["train_time_std"], 1), ovh, delta, fmt_share(r), p_h, p_w, verdict])
    return md_table(headers, body)


def fmt_ci(lo, hi):
    return "—" if not np.isfinite(lo) else f"[{lo * 100:+.2f}, {hi * 100:+.2f}]"


def significance_table(sig, alpha):
    level = f"{1 - alpha:.0%}"
    headers = ["task", "R_total", "A vs B", "seeds (A, B)", "Δ score A−B", f"seeds+examples bootstrap {level} CI",
               "p seeds+examples", "p Welch", f"verdict at α = {alpha}", "capacity",
               "per-seed diagnostic: paired seeds", f"examples-only {level} CI", "p examples-only", "p per seed"]
    body = []
    for s in sig:
        per_seed = ", ".join(f"s{k}: {fmt_p(p, alpha)}" for k, p in zip(s.paired_seeds, s.p_boot_per_seed)) or "—"
        body.append([s.task, s.budget, f"{method_name(s.a)} vs {method_name(s.b)}", f"{s.n_a}, {s.n_b}",
                     f"{s.delta * 100:+.2f}", fmt_ci(s.hier_ci_low, s.hier_ci_high), fmt_p(s.p_hier, alpha),
                     fmt_p(s.p_welch, alpha), s.verdict, s.capacity or "equal", len(s.paired_seeds), fmt_ci(s.boot_ci_low, s.boot_ci_high),
                     fmt_p(s.p_boot, alpha), per_seed])
    notes = [f"- {s.task} {method_name(s.a)} vs {method_name(s.b)}: {n}" for s in sig for n in s.notes]
    return md_table(headers, body), notes


def tuning_section(rows, tuning_warn):
    """Trials per method, when any run was tuned, and the warnings about unequal effort."""
    tuned = [r for r in rows if r.get("tuning", "not tuned") != "not tuned"]
    if not tuned and not tuning_warn:
        return []
    body = [[r["task"], r["budget"], method_name(r["method"]), r["tuning"]] for r in rows if "tuning" in r]
    return (["## Tuning", "", md_table(["task", "R_total", "method", "hyper-parameter search"], body), ""]
            + [f"- **warning:** {w}" for w in tuning_warn] + [""])


def render_markdown(rows, sig, skipped, warn, alpha, n_bootstrap, seed, tuning_warn=()):
    out = ["# LoRA vs AdaLoRA vs GLoRA", ""] + headline(rows, alpha)
    out += [(f"Scores ×100, mean ± sample std over seeds (n = seeds). Score = mean of the task's main metrics. "
             f"Share of gain = (GLoRA − LoRA) / (AdaLoRA − LoRA) on the score, CI from {n_bootstrap} seed resamples, "
             f"only from resamples where AdaLoRA beats LoRA, and only when at least {min_usable_fraction(alpha):.1%} "
             f"of them do (else 'not estimable'). "
             f"**Significance threshold α = {alpha}: p-values below it are marked \\*** (two-sided, no multiple-comparison "
             f"correction). **Verdict:** the seeds+examples (hierarchical) bootstrap: {n_bootstrap} resamples, each "
             f"drawing each method's seeds with replacement and one resample of dev examples (matched by idx) for all "
             f"runs (bootstrap seed {seed}); with fewer than {MIN_SEEDS} seeds per method it reads 'too few seeds'. "
             f"Welch: t-test over per-seed scores, beside it. The examples-only paired bootstrap (seed-paired runs, "
             f"same example resamples, seeds not resampled) is a per-seed diagnostic: it ignores seed-to-seed "
             f"variance and is not a verdict. GLUE avg: mean task score over the tasks "
             f"every method has; its seeds = the fewest of any task, its train time = mean per task (so its overhead "
             f"compares total training time). Adapter params (effective): LoRA parameters of the non-zero components at "
             f"the end, task head excluded; a pair more than 2 % apart is marked 'unequal capacity'."), ""]
    out += [f"- **warning:** {w}" for w in tuning_warn] + ([""] if tuning_warn else [])
    out += ["## Results", "", results_table(rows, alpha), ""] + tuning_section(rows, tuning_warn)
    if sig:
        table, notes = significance_table(sig, alpha)
        out += ["## Significance", "", table, ""]
        if notes:
            out += notes + [""]
    if skipped:
        out += ["## Skipped runs", ""] + [f"- `{p}`: {reason}" for p, reason in skipped] + [""]
    if warn:
        out += ["## Warnings", ""] + [f"- {w}" for w in warn] + [""]
    return "\n".join(out)


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
