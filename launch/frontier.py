"""The accuracy-cost frontier of a study (issue 27): each arm's score against its adapter parameters and against its
training time, with uniform LoRA at several ranks (arms `lora`, `lora_r1`, `lora_r3`, ...) as the frontier, and
each tuned arm's score against the learning rate (its tuning runs: does allocation survive learning-rate tuning?).

    python -m launch.frontier COMPARISON_CSV [...] --out_dir DIR [--tuning ROOT [...] --metric recovered]

COMPARISON_CSV: compare_runs.py's comparison.csv (one row per task and arm; the rows of several files are joined,
an arm in two files refused). ROOT: a study root whose tuning/<arm>/lr<rate>/ runs launch/choose_rates.py read.
Writes DIR/frontier.md (per arm: params, time, score, and the score minus the uniform frontier's at the arm's
parameters, linear between the two uniform ranks around it; blank outside their range; with 2 standard errors of
that difference, seeds taken as independent), DIR/frontier.png and, with
--tuning, DIR/lr_curves.md and DIR/lr_curves.png.
"""

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.tables import md_table
from launch.choose_rates import tuning_scores

UNIFORM = re.compile(r"^lora(_r\d+)?$")  # the uniform-rank arms of the launchers


def read_comparisons(paths) -> pd.DataFrame:
    frames = [pd.read_csv(p).assign(source=str(p)) for p in paths]
    table = pd.concat(frames, ignore_index=True)
    twice = table[table.duplicated(["task", "arm"], keep=False)]
    if len(twice):
        task, arm = twice.iloc[0][["task", "arm"]]
        raise SystemExit(f"arm {arm!r} of task {task!r} is in more than one comparison: "
                         f"{', '.join(sorted(set(twice['source'])))}; give each arm once.")
    return table


def time_column(table: pd.DataFrame) -> str:
    """CPU seconds of the training process where every row has them (they leave out waiting for a busy CPU)."""
    cpu = "train_cpu_time_mean"
    return cpu if cpu in table and table[cpu].notna().all() else "train_time_mean"


def above_frontier(table: pd.DataFrame) -> pd.DataFrame:
    """Each arm's score minus the uniform frontier's at its adapter parameters, and that difference's standard error
    with the arm's and the two interpolated ranks' seeds taken as independent (runs of one seed share their data order,
    so this overstates the noise of a paired difference). NaN outside the uniform range; the SE is NaN on the uniform
    arms themselves (their difference is 0 by construction) and where an arm has one seed."""
    out = pd.DataFrame(np.nan, index=table.index, columns=["diff", "se"])
    for _, rows in table.groupby("task"):
        uniform = rows[rows["arm"].map(lambda a: bool(UNIFORM.match(a)))].sort_values("adapter_params_effective")
        if len(uniform) < 2:
            continue
        x, y = uniform["adapter_params_effective"].to_numpy(float), uniform["score_mean"].to_numpy(float)
        var = (uniform["score_std"] ** 2 / uniform["n_seeds"]).to_numpy(float)  # of each uniform rank's mean
        for i, r in rows[rows["adapter_params_effective"].between(x[0], x[-1])].iterrows():
            p = float(r["adapter_params_effective"])
            b = min(int(np.searchsorted(x, p, side="right")), len(x) - 1)  # interpolate between ranks b-1 and b
            t = (p - x[b - 1]) / (x[b] - x[b - 1])
            out.loc[i, "diff"] = r["score_mean"] - ((1 - t) * y[b - 1] + t * y[b])
            if not UNIFORM.match(r["arm"]):
                out.loc[i, "se"] = np.sqrt(r["score_std"] ** 2 / r["n_seeds"] + (1 - t) ** 2 * var[b - 1]
                                           + t ** 2 * var[b])
    return out


def frontier_table(table: pd.DataFrame) -> pd.DataFrame:
    time = time_column(table)
    out = pd.DataFrame({
        "task": table["task"], "arm": table["arm"], "seeds": table["n_seeds"],
        "adapter params": table["adapter_params_effective"].astype(int),
        time: table[time].round(1),
        "score x100": (100 * table["score_mean"]).round(2), "sd x100": (100 * table["score_std"]).round(2),
        "minus uniform frontier x100": (100 * (above := above_frontier(table))["diff"]).round(2),
        "2 SE x100": (200 * above["se"]).round(2),
    })
    return out.sort_values(["task", "adapter params", "arm"])


def plot_frontier(table: pd.DataFrame, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    time = time_column(table)
    tasks = sorted(table["task"].unique())
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        rows = table[table["task"] == task]
        uniform = rows["arm"].map(lambda a: bool(UNIFORM.match(a)))
        for ax, x, label in ((row[0], "adapter_params_effective", "adapter parameters"),
                             (row[1], time, ("train CPU seconds" if time.startswith("train_cpu") else "train seconds")
                              + " (runs one after another: noise-bound)")):
            u = rows[uniform].sort_values("adapter_params_effective")  # joined in rank order on both axes
            ax.errorbar(u[x], 100 * u["score_mean"], yerr=100 * u["score_std"], fmt="-o", color="black", alpha=0.5,
                        label="uniform LoRA, by rank")
            for _, r in u.iterrows():
                ax.annotate(r["arm"], (r[x], 100 * r["score_mean"]), fontsize=7, color="black", alpha=0.6)
            for i, (_, r) in enumerate(rows[~uniform].iterrows()):
                ax.errorbar(r[x], 100 * r["score_mean"], yerr=100 * r["score_std"], fmt="sD^v<>p*hX"[i % 10],
                            color=f"C{i % 10}", label=r["arm"])
            ax.set_xlabel(label)
            ax.set_ylabel(f"{task}: score x100 (mean ± sd over seeds)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def lr_curves(roots, metric) -> pd.DataFrame:
    rows = []
    for root in roots:
        for arm_dir in sorted((Path(root) / "tuning").iterdir()):
            for lr, score in tuning_scores(root, arm_dir.name, metric):
                rows.append({"study": "/".join(Path(root).resolve().parts[-2:]), "arm": arm_dir.name,
                             "learning rate": lr, f"tuning {metric}": score})
    return pd.DataFrame(rows)


def plot_lr_curves(curves: pd.DataFrame, metric: str, out: Path):
    """One panel, a line per arm (labelled with its study where two studies tuned one arm)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shared = curves.groupby("arm")["study"].nunique() > 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (study, arm), rows in curves.groupby(["study", "arm"], sort=False):
        ax.plot(rows["learning rate"], rows[f"tuning {metric}"], "-o", label=f"{study}: {arm}" if shared[arm] else arm)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"tuning-split {metric} (seed 1, end of training)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(frame: pd.DataFrame) -> str:
    return md_table(list(frame.columns), [["" if pd.isna(v) else v for v in row] for row in frame.itertuples(index=False)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comparisons", nargs="+", type=Path, help="compare_runs.py's comparison.csv files")
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--tuning", nargs="*", default=[], type=Path, help="study roots with tuning/<arm>/lr*/ runs")
    parser.add_argument("--metric", default="recovered", help="the tuning metric choose_rates used (default recovered)")
    args = parser.parse_args(argv)
    for path in args.comparisons:
        if not path.is_file():
            raise SystemExit(f"{path}: no such comparison.csv (compare_runs.py writes it in its --out_dir).")
    table = read_comparisons(args.comparisons)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(frontier_table(table))
    (args.out_dir / "frontier.md").write_text(text + "\n")
    print(text)
    plot_frontier(table, args.out_dir / "frontier.png")
    if args.tuning:
        curves = lr_curves(args.tuning, args.metric)
        wide = curves.pivot_table(index=["study", "arm"], columns="learning rate", values=f"tuning {args.metric}")
        text = markdown(wide.round(4).rename(columns="lr {:g}".format).reset_index())
        (args.out_dir / "lr_curves.md").write_text(text + "\n")
        print("\n" + text)
        plot_lr_curves(curves, args.metric, args.out_dir / "lr_curves.png")


if __name__ == "__main__":
    sys.exit(main())
