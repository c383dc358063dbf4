"""How many seeds a question needs: the minimum detectable difference (MDD) of a two-sample,
two-sided comparison of per-seed scores, and the seeds per method needed for a given gap.

    MDD(n) = (q_{1-α/2} + q_{1-β}) · σ · sqrt(2/n)

n seeds per method, σ the seed standard deviation of the task score (both methods alike),
q the Student-t quantile with 2n - 2 degrees of freedom (the normal quantile with --normal).
The t quantile is the honest one at a handful of seeds; it gives a few more seeds than the normal.

    python -m analysis.power --sd sst2=0.93,0.57,0.23 --sd rte=0.83,1.16,0.55 --n 3 --gap 2.9 --gap 0.1

--sd takes one or more per-method seed stds of a task (points); they are pooled as sqrt(mean variance).

With --paired the design is seed-paired (common random numbers, the paired t of compare_runs.py): --sd is then the
standard deviation of the per-seed DIFFERENCE between the two arms, and

    MDD(n) = (q_{1-α/2} + q_{1-β}) · σ_d / sqrt(n),   q with n - 1 degrees of freedom;

`--largest_sd_for GAP` prints the largest σ (σ_d when paired) at which n seeds detect GAP.

    python -m analysis.power --paired --sd planted=1.5 --n 6 --gap 3 --alpha 0.01 --largest_sd_for 3
"""
import argparse
import math
from dataclasses import dataclass

from scipy import stats


def quantile_sum(n, alpha, power, normal, paired=False):
    if normal:
        return stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    df = n - 1 if paired else 2 * n - 2
    return stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)


def spread(n, paired) -> float:
    """The standard error of the mean difference per unit σ: sqrt(2/n) for two samples, sqrt(1/n) for the mean of n
    paired differences (σ then being the differences' own sd)."""
    return math.sqrt((1 if paired else 2) / n)


def minimum_detectable_difference(sd, n, alpha=0.05, power=0.8, normal=False, paired=False):
    """Smallest true difference a two-sided test at alpha detects with the given power, n seeds per method."""
    return quantile_sum(n, alpha, power, normal, paired) * sd * spread(n, paired)


def largest_sd(gap, n, alpha=0.05, power=0.8, normal=False, paired=False):
    """The largest σ (the paired differences' σ_d when paired) at which n seeds per method detect gap."""
    return gap / (quantile_sum(n, alpha, power, normal, paired) * spread(n, paired))


def seeds_needed(gap, sd, alpha=0.05, power=0.8, normal=False, paired=False):
    """Fewest seeds per method (>= 2) whose MDD is at most gap."""
    lower = (1 if paired else 2) * (quantile_sum(10**9, alpha, power, True) * sd / gap) ** 2  # normal: a lower bound
    n = max(2, math.ceil(lower))
    while n > 2 and minimum_detectable_difference(sd, n - 1, alpha, power, normal, paired) <= gap:
        n -= 1
    while minimum_detectable_difference(sd, n, alpha, power, normal, paired) > gap:
        n += 1
    return n


def pooled_sd(sds):
    """Seed std of a task from per-method stds: sqrt of the mean variance (equal seeds per method)."""
    return math.sqrt(sum(s * s for s in sds) / len(sds))


@dataclass
class TaskNoise:
    task: str
    sds: list  # per-method seed stds, points

    @property
    def sd(self):
        return pooled_sd(self.sds)


def parse_sd(text):
    task, values = text.split("=")
    return TaskNoise(task, [float(v) for v in values.split(",")])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sd", type=parse_sd, action="append", required=True, help="task=std[,std...] in points")
    p.add_argument("--n", type=int, default=3, help="seeds per method for the MDD column (default 3)")
    p.add_argument("--gap", type=float, action="append", default=[], help="a difference in points to size seeds for")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--power", type=float, default=0.8)
    p.add_argument("--normal", action="store_true", help="normal instead of Student-t quantiles")
    p.add_argument("--paired", action="store_true",
                   help="seed-paired design: --sd is the sd of the per-seed difference between the arms (df = n - 1)")
    p.add_argument("--largest_sd_for", type=float, action="append", default=[],
                   help="a difference in points: print the largest σ at which --n seeds detect it")
    args = p.parse_args(argv)
    q = "normal" if args.normal else f"Student-t (df = {'n - 1' if args.paired else '2n - 2'})"
    design = "seed-paired (σ: sd of the per-seed difference)" if args.paired else "two-sample"
    print(f"{design}, two-sided, alpha = {args.alpha}, power = {args.power}, {q} quantiles\n")
    headers = ["task", "per-method seed std" if not args.paired else "sd of the difference", "pooled σ",
               f"MDD at n = {args.n}"]
    headers += [f"seeds per method for {g:g}" for g in args.gap]
    headers += [f"largest σ for {g:g} at n = {args.n}" for g in args.largest_sd_for]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for t in args.sd:
        test = dict(alpha=args.alpha, power=args.power, normal=args.normal, paired=args.paired)
        mdd = minimum_detectable_difference(t.sd, args.n, **test)
        cells = [t.task, ", ".join(f"{s:g}" for s in t.sds), f"{t.sd:.3f}", f"{mdd:.2f}"]
        cells += [str(seeds_needed(g, t.sd, **test)) for g in args.gap]
        cells += [f"{largest_sd(g, args.n, **test):.2f}" for g in args.largest_sd_for]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
