"""The comparison table (one output row per arm of each comparable group of a task × budget, plus GLUE averages)
and its Markdown.

Output rows are plain dicts: they are the CSV/JSON schema, column name -> value, with one pair of
mean/std columns per metric the task has."""
import math
from pathlib import Path

import numpy as np

from analysis.comparable import pick_references
from analysis.fairness import hpo_summary, unequal_capacity
from analysis.runs import MAIN_METRICS, arm_key, arm_name, blocks, place
from analysis.stats import MIN_SEEDS, min_usable_fraction, share_of_gain
from gradnorm_rank import MethodOverhead

SHORT = {"accuracy": "acc", "accuracy_mm": "acc_mm", "f1": "f1", "matthews_correlation": "mcc",
         "pearson": "pearson", "spearmanr": "spearman", "r2": "r2"}
# shown in the main metric's cell where it is not a main metric: the planted control's R^2 and r
BESIDE_MAIN = ("r2", "pearson")
GLUE_AVG = "GLUE avg"
NAN = float("nan")


def make_table(groups, sig=(), n_bootstrap=2000, seed=0, alpha=0.05):
    """One row per arm of each comparable group, measured against that group's references (pick_references),
    plus a GLUE-average row per (budget, arm) when there are >= 2 tasks to average (average_plan). Values on the
    metrics' own scale (0..1); overhead in %."""
    sig = {(s.task, s.budget, s.group, s.a, s.b): s for s in sig}
    boot = {"n_bootstrap": n_bootstrap, "seed": seed, "alpha": alpha}
    rows = []
    for gs in blocks(groups).values():
        refs = pick_references(gs)
        by_arm = {g.arm: g for g in gs}
        lora, ada = by_arm.get(refs.lora), by_arm.get(refs.adalora)
        rows += [group_row(g, lora, ada, sig, boot) for g in gs]
    for budget in dict.fromkeys(k.budget for k in groups):
        plan, _ = average_plan(groups, budget)
        if plan:
            rows += average_rows(budget, *plan, boot)
    return rows


def group_row(g, lora, ada, sig, boot):
    """The output row of one arm's group; lora, ada: its comparable group's reference groups (or None)."""
    row = {"task": g.task, "budget": g.budget, "method": g.method, "arm": g.arm, "group": g.group, "n_seeds": g.n,
           "seeds": " ".join(map(str, g.seeds)), "main_metrics": " ".join(MAIN_METRICS[g.task]),
           "score_mean": g.score.mean, "score_std": g.score.std}
    for m, ms in g.metrics.items():
        row[f"{m}_mean"], row[f"{m}_std"] = ms.mean, ms.std
    row.update(trainable_params=g.mean_of("params"), trainable_params_adapter=g.mean_of("params_adapter"),
               adapter_params_effective=g.mean_of("adapter_params_effective"), tuning=hpo_summary(g),
               total_rank=g.mean_of("total_rank"), train_time_mean=g.time.mean, train_time_std=g.time.std,
               train_cpu_time_mean=g.cpu_time.mean, train_cpu_time_std=g.cpu_time.std,
               **{f"{name}_mean": g.mean_of(name) for name in MethodOverhead().record()}, vs_lora_arm=lora.arm if lora else "")
    row["overhead_vs_lora_pct"] = overhead_pct(g.time.mean, lora.time.mean) if lora else NAN
    row["cpu_overhead_vs_lora_pct"] = overhead_pct(g.cpu_time.mean, lora.cpu_time.mean) if lora else NAN
    row["delta_vs_lora"] = g.score.mean - lora.score.mean if lora else NAN
    s = sig.get((g.task, g.budget, g.group, g.arm, lora.arm)) if lora else None
    row["p_boot_vs_lora"], row["p_welch_vs_lora"] = (s.p_boot, s.p_welch) if s else (NAN, NAN)
    row["p_hier_vs_lora"], row["verdict_vs_lora"] = (s.p_hier, s.verdict) if s else (NAN, "")
    row["p_paired_t_vs_lora"], row["n_paired_t_vs_lora"] = (s.p_paired_t, s.n_paired_t) if s else (NAN, 0)
    if g.method == "glora" and lora and ada:
        row.update(share_columns(share_of_gain(lora.scores, ada.scores, g.scores, **boot)),
                   share_capacity=unequal_capacity([lora, ada, g]), share_adalora_arm=ada.arm)
    return row


def overhead_pct(seconds, lora_seconds):
    """Training time over LoRA's, in % (nan where either is not recorded)."""
    return 100 * (seconds / lora_seconds - 1)


def average_plan(groups, budget):
    """((tasks, {arm: [its Group on each task]}, references) or None, notes) of the GLUE average at budget: over the
    tasks whose runs at budget form one comparable group and hold every arm found there (so the averages compare
    like with like), all of one model and trial mode; notes say what was left out, or why there is none."""
    at = [k for k in groups if k.budget == budget]
    split = list(dict.fromkeys(k.task for k in at if k.group))
    arms = sorted({k.arm: groups[k].method for k in at if not k.group}.items(), key=lambda am: arm_key(*am))
    tasks = [t for t in dict.fromkeys(k.task for k in at if not k.group)
             if all((t, budget, "", a) in groups for a, _ in arms)]
    notes = []
    if split and len(tasks) + len(split) >= 2:
        notes.append(f"GLUE avg at R_total = {budget} leaves out {', '.join(split)}: runs in several comparable groups")
    if len(tasks) < 2:
        return None, notes
    G = {a: [groups[(t, budget, "", a)] for t in tasks] for a, _ in arms}
    if len({(g.setting.model, g.setting.mode) for gs in G.values() for g in gs}) > 1:
        return None, notes + [f"no GLUE avg at R_total = {budget}: its tasks' runs differ in model or trial mode"]
    return (tasks, G, pick_references([gs[0] for gs in G.values()])), notes


def comparability_notes(groups):
    """Which reference arms each comparable group uses where the choice was not obvious (pick_references), and why a
    GLUE average leaves a task out or is not made."""
    out = [f"{place(task, group)} (R_total = {budget}): {n}"
           for (task, budget, group), gs in blocks(groups).items() for n in pick_references(gs).notes]
    return out + [n for budget in dict.fromkeys(k.budget for k in groups) for n in average_plan(groups, budget)[1]]


def average_rows(budget, tasks, G, refs, boot):
    avg = {a: float(np.mean([g.score.mean for g in gs])) for a, gs in G.items()}
    time = {a: float(np.mean([g.time.mean for g in gs])) for a, gs in G.items()}
    cpu = {a: float(np.mean([g.cpu_time.mean for g in gs])) for a, gs in G.items()}
    lora, ada = refs.lora, refs.adalora
    rows = []
    for a, gs in G.items():
        row = {"task": GLUE_AVG, "budget": budget, "method": gs[0].method, "arm": a, "group": "",
               "n_seeds": min(g.n for g in gs), "seeds": "", "main_metrics": "", "avg_over": " ".join(tasks),
               "score_mean": avg[a], "score_std": NAN, "train_time_mean": time[a], "train_time_std": NAN,
               "train_cpu_time_mean": cpu[a], "train_cpu_time_std": NAN, "vs_lora_arm": lora or "",
               "overhead_vs_lora_pct": overhead_pct(time[a], time[lora]) if lora else NAN,
               "cpu_overhead_vs_lora_pct": overhead_pct(cpu[a], cpu[lora]) if lora else NAN,
               "delta_vs_lora": avg[a] - avg[lora] if lora else NAN}
        if gs[0].method == "glora" and lora and ada:
            row.update(share_columns(share_of_gain(*([g.scores for g in G[k]] for k in (lora, ada, a)), **boot)))
            unequal = [t for t, trio in zip(tasks, zip(G[lora], G[ada], gs)) if unequal_capacity(list(trio))]
            row["share_capacity"] = f"unequal capacity on {', '.join(unequal)}" if unequal else ""
            row["share_adalora_arm"] = ada
        rows.append(row)
    return rows


def share_columns(s):
    return {"share_of_gain": s.share, "share_ci_low": s.ci_low, "share_ci_high": s.ci_high,
            "share_defined": s.defined, "share_estimable": s.estimable, "share_usable_resamples": s.n_usable,
            "share_resamples": s.n_resamples, "share_note": s.note, "share_too_few_seeds": s.too_few_seeds}


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
    if row.get("share_too_few_seeds"):
        return f"**{fmt(row['share_of_gain'], 100, 0)}%** [no interval: too few seeds]"
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
        shares = [r for r in rows if r["budget"] == budget and "share_defined" in r]
        for arm in dict.fromkeys(r["arm"] for r in shares):  # one GLoRA arm after another
            glora = [r for r in shares if r["arm"] == arm]
            out += share_lines([r for r in glora if r["task"] == GLUE_AVG] or glora, rows, alpha)
    return out


def share_lines(glora, rows, alpha):
    """The headline's lines of one GLoRA arm's share rows."""
    out = []
    for r in glora:
        budget, name = r["budget"], arm_name(r["arm"], r["method"])
        where = f"GLUE avg over {r['avg_over'].replace(' ', ', ')}" if r["task"] == GLUE_AVG else place(r["task"], r["group"])
        cost = overhead_line(r, rows)
        if not r["share_defined"]:
            out += [f"**Share of AdaLoRA's gain recovered by {name}: undefined** on {where}, R_total = {budget}: "
                    f"{r['share_note']}. {cost}.", ""]
            continue
        if r["share_too_few_seeds"]:
            ci = ""  # the note says why there is none
        elif r["share_estimable"]:
            ci = (f" (seed-bootstrap {1 - alpha:.0%} CI {fmt(r['share_ci_low'], 100, 0)}% to "
                  f"{fmt(r['share_ci_high'], 100, 0)}%)")
        else:
            ci = f" ({1 - alpha:.0%} interval not estimable)"
        out += [f"**{name} recovers {fmt(r['share_of_gain'], 100, 0)}% of AdaLoRA's gain over LoRA**{ci} "
                f"on {where}, R_total = {budget}. {cost}."
                + (f" ({r['share_note']})" if r["share_note"] else "")
                + (f" **{r['share_capacity']}.**" if r.get("share_capacity") else ""), ""]
    return out


def overhead_line(r, rows):
    """The headline's overhead of every arm of r's comparable group (or GLUE average) but LoRA: wall-clock, labelled
    noise-bound, and CPU time where every arm recorded it."""
    same = [x for x in rows if (x["task"], x["budget"], x["group"]) == (r["task"], r["budget"], r["group"])
            and x["arm"] != x["vs_lora_arm"]]
    parts = {kind: ", ".join(f"{arm_name(x['arm'], x['method'])} {x[key]:+.1f}%" for x in same if np.isfinite(x[key]))
             for kind, key in (("wall", "overhead_vs_lora_pct"), ("cpu", "cpu_overhead_vs_lora_pct"))}
    cpu = f"; CPU time: {parts['cpu']}" if parts["cpu"] else ""
    return f"Wall-clock overhead vs LoRA (noise-bound: runs not measured side by side): {parts['wall'] or 'n/a'}{cpu}"


OVERHEAD_NOTE = ("Overhead vs LoRA is noise-bound: it compares the training times of runs made one after another, not "
                 "side by side (wall-clock: train_runtime; CPU: the training process's CPU seconds, "
                 "train_process_cpu_seconds, — where a run did not record them, which leave out waiting for a busy CPU "
                 "but not threads spinning under contention); step costs measured side by side: docs/benchmarks.md.")


def results_table(rows, alpha):
    headers = ["task", "R_total", "method", "seeds", "main metric(s)", "score", "MCC", "trainable params",
               "adapter params (effective)",
               "total rank", "train time (s)", "CPU time (s)", "overhead vs LoRA", "CPU overhead vs LoRA",
               "Δ score vs LoRA", "share of AdaLoRA's gain",
               "p seeds+examples vs LoRA", "p Welch vs LoRA", f"verdict vs LoRA (α = {alpha})"]
    body = []
    for r in rows:
        if r["task"] == GLUE_AVG:
            main = f"mean over {r['avg_over'].replace(' ', ', ')}"
            mcc = params = adapter = rank = "—"
        else:
            main = " / ".join(f"{SHORT.get(m, m)} {fmt_pm(r[f'{m}_mean'], r[f'{m}_std'])}" for m in r["main_metrics"].split())
            beside = [m for m in BESIDE_MAIN if f"{m}_mean" in r and m not in r["main_metrics"].split()]
            main += "".join(f"; {SHORT[m]} {fmt_pm(r[f'{m}_mean'], r[f'{m}_std'])}" for m in beside)
            mccs = [(k, r[f"{k}_mean"], r[f"{k}_std"]) for k in ("matthews_correlation", "matthews_correlation_mm")
                    if f"{k}_mean" in r]
            mcc = " / ".join(("mm " if k.endswith("_mm") else "") + fmt_pm(mu, sd) for k, mu, sd in mccs) or "—"
            params, rank = f"{r['trainable_params']:,.0f}", fmt(r["total_rank"], 1, 0)
            adapter = f"{r['adapter_params_effective']:,.0f}" if np.isfinite(r["adapter_params_effective"]) else "—"
        baseline = r["arm"] == r["vs_lora_arm"] or (r["method"] == "lora" and not r["vs_lora_arm"])
        ovh = "" if baseline else fmt(r["overhead_vs_lora_pct"], 1, 1) + "%"
        cpu = r["cpu_overhead_vs_lora_pct"]
        cpu_ovh = "" if baseline else f"{cpu:.1f}%" if np.isfinite(cpu) else "—"
        delta = "" if baseline else f"{r['delta_vs_lora'] * 100:+.2f}" if np.isfinite(r["delta_vs_lora"]) else "—"
        p_h = p_w = verdict = ""
        if not baseline and r["task"] != GLUE_AVG:
            p_h, p_w, verdict = fmt_p(r["p_hier_vs_lora"], alpha), fmt_p(r["p_welch_vs_lora"], alpha), r["verdict_vs_lora"]
        body.append([place(r["task"], r["group"]), r["budget"], arm_name(r["arm"], r["method"]), r["n_seeds"], main,
                     fmt_pm(r["score_mean"], r["score_std"]), mcc, params, adapter, rank,
                     fmt_pm(r["train_time_mean"], r["train_time_std"], 1),
                     fmt_pm(r["train_cpu_time_mean"], r["train_cpu_time_std"], 1), ovh, cpu_ovh, delta, fmt_share(r),
                     p_h, p_w, verdict])
    return md_table(headers, body)


def fmt_ci(lo, hi):
    return "—" if not np.isfinite(lo) else f"[{lo * 100:+.2f}, {hi * 100:+.2f}]"


def significance_table(sig, alpha):
    level = f"{1 - alpha:.0%}"
    headers = ["task", "R_total", "A vs B", "seeds (A, B)", "Δ score A−B", f"seeds+examples bootstrap {level} CI",
               "p seeds+examples", "p Welch", "p paired t (seeds)", f"verdict at α = {alpha}", "capacity",
               "per-seed diagnostic: paired seeds", f"examples-only {level} CI", "p examples-only", "p per seed"]
    body = []
    for s in sig:
        per_seed = ", ".join(f"s{k}: {fmt_p(p, alpha)}" for k, p in zip(s.paired_seeds, s.p_boot_per_seed)) or "—"
        body.append([place(s.task, s.group), s.budget, pair_name(s), f"{s.n_a}, {s.n_b}",
                     f"{s.delta * 100:+.2f}", fmt_ci(s.hier_ci_low, s.hier_ci_high), fmt_p(s.p_hier, alpha),
                     fmt_p(s.p_welch, alpha), f"{fmt_p(s.p_paired_t, alpha)} ({s.n_paired_t})", s.verdict, s.capacity or "equal", len(s.paired_seeds), fmt_ci(s.boot_ci_low, s.boot_ci_high),
                     fmt_p(s.p_boot, alpha), per_seed])
    notes = [f"- {place(s.task, s.group)} {pair_name(s)}: {n}" for s in sig for n in s.notes]
    return md_table(headers, body), notes


def pair_name(s):
    return f"{arm_name(s.a, s.method_a)} vs {arm_name(s.b, s.method_b)}"


def tuning_section(rows, tuning_warn):
    """Trials per arm, when any run was tuned, and the warnings about unequal effort."""
    tuned = [r for r in rows if r.get("tuning", "not tuned") != "not tuned"]
    if not tuned and not tuning_warn:
        return []
    body = [[place(r["task"], r["group"]), r["budget"], arm_name(r["arm"], r["method"]), r["tuning"]]
            for r in rows if "tuning" in r]
    return (["## Tuning", "", md_table(["task", "R_total", "method", "hyper-parameter search"], body), ""]
            + [f"- **warning:** {w}" for w in tuning_warn] + [""])


def comparable_groups(groups):
    """[{task, budget, group, setting, differs, arms}] for each comparable group of a task and R_total whose runs fall
    in several: what sets it apart from the others, and its arms with their seed counts."""
    by_block = blocks(groups)
    out = []
    for (task, budget, group), gs in by_block.items():
        if not group:
            continue
        others = [o[0].setting for (t, b, g), o in by_block.items() if (t, b) == (task, budget) and g != group]
        out.append({"task": task, "budget": budget, "group": group, "setting": dict(vars(gs[0].setting)),
                    "differs": gs[0].setting.differences(others),
                    "arms": {arm_name(g.arm, g.method): g.n for g in gs}})
    return out


def comparability_section(split, notes):
    """'## Comparable groups': the groups a task and R_total were split into (comparable_groups) and the notes on
    references, GLUE averages and predictions left out of the bootstrap; [] when there is nothing to say."""
    if not split and not notes:
        return []
    out = ["## Comparable groups", ""]
    if split:
        out += ["Runs are compared and pooled only within one comparable group: same task, R_total, model, data "
                "selection, dev rows scored, trial mode and training length (run_args.json). These tasks' runs fall "
                "in several groups, each compared on its own:", ""]
        body = [[c["task"], c["budget"], c["group"], ", ".join(f"{a} {n}" for a, n in c["arms"].items()), c["differs"]]
                for c in split]
        out += [md_table(["task", "R_total", "group", "arms (seeds)", "what sets it apart"], body), ""]
    return out + [f"- {n}" for n in notes] + ([""] if notes else [])


def render_markdown(rows, sig, skipped, warn, alpha, n_bootstrap, seed, tuning_warn=(), comparability=()):
    out = ["# LoRA vs AdaLoRA vs GLoRA", ""] + headline(rows, alpha)
    out += [(f"Scores ×100, mean ± sample std over seeds (n = seeds). Score = mean of the task's main metrics. "
             f"Share of gain = (GLoRA − LoRA) / (AdaLoRA − LoRA) on the score, CI from {n_bootstrap} seed resamples, "
             f"only from resamples where AdaLoRA beats LoRA, and only when at least {min_usable_fraction(alpha):.1%} "
             f"of them do (else 'not estimable'). "
             f"**Significance threshold α = {alpha}: p-values below it are marked \\*** (two-sided, no multiple-comparison "
             f"correction). **Verdict:** the seeds+examples (hierarchical) bootstrap: {n_bootstrap} resamples, each "
             f"drawing each method's seeds with replacement and one resample of dev examples (matched by idx) for all "
             f"runs (bootstrap seed {seed}); with fewer than {MIN_SEEDS} seeds per method it reads 'too few seeds'. "
             f"Welch: t-test over per-seed scores, beside it; paired t: the t-test of the per-seed differences over the seeds "
             f"both arms ran (common random numbers: a seed's arms see the same batches and start from the same head), n/a "
             f"where they share fewer than 2 seeds or the differences do not vary. The examples-only paired bootstrap (seed-paired runs, "
             f"same example resamples, seeds not resampled) is a per-seed diagnostic: it ignores seed-to-seed "
             f"variance and is not a verdict. GLUE avg: mean task score over the tasks "
             f"every method has; its seeds = the fewest of any task, its train time = mean per task (so its overhead "
             f"compares total training time). Adapter params (effective): LoRA parameters of the non-zero components at "
             f"the end, task head excluded; a pair more than 2 % apart is marked 'unequal capacity'."), ""]
    out += [f"- **warning:** {w}" for w in tuning_warn] + ([""] if tuning_warn else [])
    out += list(comparability)
    out += ["## Results", "", results_table(rows, alpha), "", OVERHEAD_NOTE, ""] + tuning_section(rows, tuning_warn)
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
