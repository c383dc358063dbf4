"""Paper figures of the comparison: bars per metric with the seeds on them, score per seed (box plots),
score vs time, confusion matrices, learning curves, rank heatmaps, GLoRA's score vs assigned rank. One series per
arm; a task whose runs fall in several comparable groups gets one place per group (`sst2 (g2)`)."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.metrics import confusion_matrix, spearman  # noqa: E402
from analysis.runs import (  # noqa: E402
    MAIN_METRICS,
    arm_key,
    arm_name,
    blocks,
    load_predictions,
    note,
    place,
    read_json,
)
from analysis.tables import GLUE_AVG  # noqa: E402
from harness.glue_tasks import GLUE_TASKS  # noqa: E402

METHOD_COLORS = {"lora": "#4c72b0", "adalora": "#dd8452", "glora": "#55a868"}
MATRIX_ORDER = ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]


def save(fig, out_dir, stem):
    for ext in ("png", "pdf"):
        fig.savefig(Path(out_dir) / f"{stem}.{ext}", dpi=150)  # margins come from tight/constrained layout
    plt.close(fig)
    return [Path(out_dir) / f"{stem}.{ext}" for ext in ("png", "pdf")]


def series_of(groups):
    """(budget, arm) series with their legend labels; the budget is named only if there are several."""
    series = sorted({(k.budget, k.arm, g.method) for k, g in groups.items()}, key=lambda s: (s[0], arm_key(s[1], s[2])))
    several = len({b for b, _, _ in series}) > 1
    return [(b, a, arm_name(a, m) + (f" (R={b})" if several else "")) for b, a, m in series]


def places_of(groups):
    """(task, group) in table order: one place on a figure per comparable group of a task."""
    return list(dict.fromkeys((k.task, k.group) for k in groups))


def slug(task, group):
    return f"{task}_{group}" if group else task


def color(arm):
    if arm in METHOD_COLORS:
        return METHOD_COLORS[arm]
    return plt.get_cmap("tab10")(3 + sum(map(ord, arm)) % 7)  # stable, away from the three above


def seed_values(group, metric):
    """×100 per-seed values of metric ("score" = task score) in a group; none for a missing group / GLUE avg."""
    if group is None:
        return []
    return [100 * (r.score if metric == "score" else r.metrics[metric]) for r in group.runs if metric == "score"
            or metric in r.metrics]


def fig_bars(groups, rows, out_dir):
    """One bar chart per main metric name (tasks on x), plus one of the task score with the GLUE average."""
    panels = {}  # metric name -> [(x label, (task, group), metric key)]
    for t, grp in places_of(groups):
        for m in MAIN_METRICS[t]:
            base = "accuracy" if m == "accuracy_mm" else m
            label = ("mnli-mm" if m.endswith("_mm") else "mnli-m") if t == "mnli" else t
            panels.setdefault(base, []).append((place(label, grp), (t, grp), m))
    panels["score"] = [(place(t, grp), (t, grp), "score") for t, grp in places_of(groups)]
    avg = {(r["budget"], r["arm"]): r["score_mean"] for r in rows if r["task"] == GLUE_AVG}
    if avg:
        panels["score"].append((GLUE_AVG, (GLUE_AVG, ""), "score"))
    series = series_of(groups)
    written = []
    for metric, xs in panels.items():
        fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.45 * len(xs) * len(series)), 3.6))
        width = 0.8 / len(series)
        pos = np.arange(len(xs))
        lows = []
        for i, (budget, arm, label) in enumerate(series):
            mu, sd = [], []  # nan std (GLUE avg, one seed) draws no error bar
            for _, (t, grp), m in xs:
                g = groups.get((t, budget, grp, arm))
                if t == GLUE_AVG:
                    mu.append(avg.get((budget, arm), np.nan))
                    sd.append(np.nan)
                elif g is None:
                    mu.append(np.nan)
                    sd.append(np.nan)
                else:
                    mu.append((g.score if m == "score" else g.metrics[m]).mean)
                    sd.append((g.score if m == "score" else g.metrics[m]).std)
            mu, sd = 100 * np.array(mu), 100 * np.array(sd)
            x = pos + (i - (len(series) - 1) / 2) * width
            ax.bar(x, mu, width, yerr=sd, capsize=3, label=label, color=color(arm), edgecolor="black", linewidth=0.5)
            # the seeds themselves on each bar: a mean of three can hide one outlier seed
            seeds = [seed_values(groups.get((t, budget, grp, arm)), m) for _, (t, grp), m in xs]
            for xj, vals in zip(x, seeds):
                ax.scatter(xj + np.linspace(-0.2, 0.2, len(vals)) * width, vals, s=10, color="black", zorder=3)
            lows.append(min([np.nanmin(mu - np.nan_to_num(sd)) if np.isfinite(mu).any() else 0]
                            + [v for vals in seeds for v in vals]))
        # bars from 0 would hide differences of a point or two: start the axis a little below the lowest bar
        ax.set_ylim(bottom=max(0.0, math.floor(min(lows)) - 5))
        ax.set_xticks(pos, [x for x, _, _ in xs])
        name = "task score (mean of main metrics)" if metric == "score" else metric.replace("_", " ")
        ax.set_xlabel("task")
        ax.set_ylabel(f"{metric.replace('_', ' ')} ×100")
        ax.set_title(f"{name}\nmean ± std over seeds, dots: seeds", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written += save(fig, out_dir, f"comparison_{metric}_bar")
    return written


def fig_metric_vs_time(groups, out_dir):
    tasks = places_of(groups)
    ncol = min(3, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    labels = {(b, a): lab for b, a, lab in series_of(groups)}
    for ax, (task, group) in zip(axes.flat, tasks):
        for key, g in groups.items():
            if (key.task, key.group) != (task, group):
                continue
            c = color(key.arm)
            ax.scatter([r.time for r in g.runs], [100 * r.score for r in g.runs], color=c, alpha=0.4, s=18)
            ax.errorbar(g.time.mean, 100 * g.score.mean, xerr=np.nan_to_num(g.time.std),
                        yerr=100 * np.nan_to_num(g.score.std), fmt="o", ms=8, color=c, mec="black", capsize=3,
                        label=labels[(key.budget, key.arm)])
        ax.set_title(place(task, group))
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
    state, err = read_json(run.path / "trainer_state.json")
    log = state.get("log_history") if isinstance(state, dict) else None
    if not log:
        note(f"no learning curve for {run.name}: {err or 'empty log_history'}")
        return []
    loss = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    keys = [f"eval_{m}" for m in MAIN_METRICS[run.task] if any(f"eval_{m}" in e for e in log)]
    keys = keys or [k for k in ("eval_loss",) if any(k in e for e in log)]
    if not loss and not keys:
        note(f"no learning curve for {run.name}: log_history has neither loss nor eval metrics")
        return []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    if loss:
        a1.plot(*zip(*loss), color="black", lw=1, label="training loss")
    for k in keys:
        pts = [(e["step"], e[k]) for e in log if k in e and "step" in e]
        a2.plot(*zip(*pts), marker="o", ms=3, label=k.removeprefix("eval_"))
    # the method's own schedule: when the ranks change
    glora = (run.ranks.glora if run.ranks else None) or {}
    marks = []
    if glora.get("reallocation_step") is not None:
        marks.append((glora["reallocation_step"], "GLoRA reallocation", "tab:green", "--"))
    ada = (run.ranks.adalora if run.ranks else None) or {}
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
    fig.suptitle(f"{run.name}: {run.task}, {arm_name(run.arm, run.method)}, seed {run.seed}, R_total={run.budget}")
    fig.tight_layout()
    return save(fig, out_dir, f"{run.name}_learning_curve")


def rank_grid(runs):
    """Mean final rank over runs as a {(layer, matrix): rank} dict; number of runs used."""
    cells, used = {}, 0
    for r in runs:
        modules = r.ranks.modules if r.ranks else {}
        if not modules:
            continue
        used += 1
        for m in modules.values():
            cells.setdefault((m.layer, m.matrix), []).append(float(m.final_rank))
    return {k: float(np.mean(v)) for k, v in cells.items()}, used


def fig_rank_heatmaps(groups, out_dir):
    """One sheet per comparable group: the final ranks of each arm that moves or fixes them per matrix (GLoRA,
    AdaLoRA, LoRA with a rank pattern), mean over seeds."""
    written = []
    keys = list(blocks(groups))
    for (task, budget, group), gs in blocks(groups).items():
        grids = []
        for g in sorted(gs, key=lambda g: (g.method != "glora", g.method != "adalora", arm_key(g.arm, g.method))):
            if g.method in ("glora", "adalora") or (g.method == "lora" and not g.uniform_lora):
                grid, used = rank_grid(g.runs)
                if grid:
                    grids.append((arm_name(g.arm, g.method), grid, used))
        several_budgets = len({b for t, b, _ in keys if t == task}) > 1
        stem = f"{slug(task, group)}_r{budget}_rank_heatmap" if several_budgets else f"{slug(task, group)}_rank_heatmap"
        if not grids:
            note(f"no {stem}: no GLoRA/AdaLoRA runs with ranks.json modules for {place(task, group)}, R_total={budget}")
            continue
        layers = sorted({k[0] for _, grid, _ in grids for k in grid})
        found = {k[1] for _, grid, _ in grids for k in grid}
        mats = [m for m in MATRIX_ORDER if m in found] + sorted(found - set(MATRIX_ORDER))
        arrays = [np.array([[grid.get((ly, mt), np.nan) for mt in mats] for ly in layers]) for _, grid, _ in grids]
        vmin, vmax = min(np.nanmin(a) for a in arrays), max(np.nanmax(a) for a in arrays)  # one shared scale
        fig, axes = plt.subplots(1, len(grids), figsize=(0.75 * len(mats) * len(grids) + 2.5, 0.32 * len(layers) + 2.2),
                                 squeeze=False, layout="constrained")
        for ax, (name, grid, used), A in zip(axes[0], grids, arrays):
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
            ax.set_title(f"{name} final rank\n(mean over {used} seed{'s' * (used > 1)})", fontsize=9)
        fig.colorbar(im, ax=list(axes[0]), label="final rank")
        fig.suptitle(f"{place(task, group)}: rank allocation, R_total={budget}")
        written += save(fig, out_dir, stem)
    return written


def fig_score_vs_rank(groups, out_dir):
    written = []
    for (task, budget, group, arm), g in groups.items():
        if g.method != "glora":
            continue
        modules = [m for r in g.runs if r.ranks for m in r.ranks.modules.values()]
        pts = [(m.score, m.final_rank, m.matrix, m.initial_rank) for m in modules if m.score is not None]
        several_budgets = len({k.budget for k, o in groups.items() if k.task == task and o.method == "glora"}) > 1
        stem = f"{slug(task, group)}{f'_r{budget}' if several_budgets else ''}_{arm}_score_vs_rank"
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
        ax.set_title(f"{place(task, group)}: {arm_name(arm, g.method)} score vs assigned rank, R_total={budget}\n"
                     f"{len(pts)} modules over {g.n} seed{'s' * (g.n > 1)}, Spearman ρ = {rho:.2f}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="matrix", title_fontsize=7)
        fig.tight_layout()
        written += save(fig, out_dir, stem)
    return written


def fig_seed_boxes(groups, out_dir):
    """Task score per seed: one panel per comparable group of a task (and budget), a box and the seeds per arm."""
    panels = blocks(groups)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), squeeze=False)
    several_budgets = len({b for _, b, _ in panels}) > 1
    for ax, ((task, budget, group), gs) in zip(axes.flat, panels.items()):
        values = [seed_values(g, "score") for g in gs]
        box = ax.boxplot(values, widths=0.5, patch_artist=True, medianprops={"color": "black"})
        for patch, g in zip(box["boxes"], gs):
            patch.set_facecolor(color(g.arm))
            patch.set_alpha(0.5)
        for j, (g, vals) in enumerate(zip(gs, values), start=1):
            ax.scatter(j + np.linspace(-0.12, 0.12, len(vals)), vals, s=16, color=color(g.arm), edgecolor="black",
                       zorder=3)
        ax.set_xticks(range(1, len(gs) + 1), [arm_name(g.arm, g.method) for g in gs])
        ax.set_title(place(task, group) + (f", R_total={budget}" if several_budgets else ""))
        ax.set_ylabel("task score ×100")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Task score per seed (box: quartiles over seeds, dots: seeds)")
    fig.tight_layout()
    return save(fig, out_dir, "comparison_score_seeds")


def summed_confusion(group):
    """{split: (k, k) counts} summed over the group's runs that have predictions (rows = true label), and
    the number of runs summed. Classification tasks only."""
    task = GLUE_TASKS[group.task]
    sheets, used = {}, 0
    for r in group.runs:
        preds, err = load_predictions(r)
        if preds is None:
            note(f"{r.name} left out of the confusion matrix: {err}")
            continue
        used += 1
        for split in task.split_names:
            df = preds[split]
            cm = confusion_matrix(df["label"].to_numpy(int), df["prediction"].to_numpy(int), task.num_labels)
            sheets[split] = sheets.get(split, 0) + cm
    return sheets, used


def fig_confusion(groups, out_dir):
    """One sheet per arm of each comparable group: counts (seeds summed) and row-normalised, per dev split."""
    written = []
    for (task, budget, group, arm), g in groups.items():
        if not GLUE_TASKS[task].is_classification:
            continue
        sheets, used = summed_confusion(g)
        several_budgets = len({k.budget for k in groups if (k.task, k.arm) == (task, arm)}) > 1
        stem = f"{slug(task, group)}{f'_r{budget}' if several_budgets else ''}_{arm}_confusion"
        if not sheets:
            note(f"no {stem}: no runs with predictions")
            continue
        fig, axes = plt.subplots(len(sheets), 2, figsize=(7.5, 3.3 * len(sheets)), squeeze=False, layout="constrained")
        for row, (split, cm) in zip(axes, sheets.items()):
            norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
            for ax, values, what in ((row[0], cm, "counts"), (row[1], norm, "row-normalised")):
                ax.imshow(values, cmap="Blues", vmin=0)
                for i, j in np.ndindex(values.shape):
                    text = f"{values[i, j]:,}" if what == "counts" else f"{values[i, j]:.2f}"
                    dark = values[i, j] > 0.6 * values.max()
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
                k = len(values)
                ax.set_xticks(range(k), range(k))
                ax.set_yticks(range(k), range(k))
                ax.set_xlabel("predicted class")
                ax.set_ylabel("true class")
                ax.set_title(f"{split}: {what}", fontsize=9)
        fig.suptitle(f"{place(task, group)}, {arm_name(arm, g.method)}, R_total={budget}: confusion, "
                     f"{used} seed{'s' * (used > 1)} summed")
        written += save(fig, out_dir, stem)
    return written


def figures(runs, groups, rows, out_dir, learning_curves=True):
    """Write every figure the data allows; return the paths written."""
    written = fig_bars(groups, rows, out_dir) + fig_seed_boxes(groups, out_dir) + fig_metric_vs_time(groups, out_dir)
    written += fig_confusion(groups, out_dir)
    if learning_curves:
        for r in runs:
            written += fig_learning_curve(r, out_dir)
    written += fig_rank_heatmaps(groups, out_dir)
    if not any(g.method == "glora" for g in groups.values()):
        note("no GLoRA score-vs-rank figures: no GLoRA runs")
    written += fig_score_vs_rank(groups, out_dir)
    return written

# -----------------------------------------------------------------------------
