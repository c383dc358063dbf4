"""Statistics of the comparison: share of AdaLoRA's gain recovered by GLoRA, and the A-vs-B verdicts between the arms
of each comparable group."""
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.bootstrap import (
    HierarchicalBootstrap,
    Misaligned,
    PairedBootstrap,
    hierarchical_from_scores,
    paired_from_scores,
    resampled_scores,
)
from analysis.comparable import pick_references
from analysis.fairness import unequal_capacity
from analysis.runs import METHOD_ORDER, blocks, predictions_file, predictions_mismatch, read_predictions

NAN = float("nan")
MIN_SEEDS = 3  # per arm, for a verdict or a share interval: with fewer, seed-to-seed variance is not estimated at all


@dataclass
class ShareOfGain:
    """(GLoRA - LoRA) / (AdaLoRA - LoRA) with its bootstrap CI; None where not defined."""
    share: float | None
    ci_low: float | None
    ci_high: float | None
    defined: bool
    adalora_gain: float
    glora_gain: float
    frac_undefined: float | None
    note: str
    n_usable: int | None = None  # resamples where AdaLoRA beats LoRA: the only ones the ratio exists on
    n_resamples: int | None = None
    estimable: bool = False  # enough usable resamples for an interval (min_usable_fraction)
    too_few_seeds: bool = False  # an arm has fewer than MIN_SEEDS seeds: no interval, as the verdict reads


def min_usable_fraction(alpha):
    """The share's interval is reported only when AdaLoRA beats LoRA in at least 1 - alpha/2 of the
    resamples, i.e. when the gain's own percentile interval excludes 0. Otherwise the denominator
    can be 0 inside the interval and the ratio's interval is unbounded (Fieller's problem): an
    interval from the remaining resamples alone would look finite only because they were selected."""
    return 1 - alpha / 2


def share_of_gain(lora, adalora, glora, n_bootstrap=2000, seed=0, alpha=0.05):
    """(GLoRA - LoRA) / (AdaLoRA - LoRA) on mean scores, with a bootstrap CI at level 1 - alpha.

    Each argument is the per-seed scores of one method, or a list of such arrays (one per task:
    the statistic then uses the average of the task means, like the GLUE average). The CI resamples
    seeds with replacement within each method (and task) independently. Undefined when AdaLoRA does
    not beat LoRA on mean; resamples where it does not are left out of the CI and counted. No CI when a method
    has fewer than MIN_SEEDS seeds (in any task): where the verdict reads "too few seeds", an interval from the
    same seeds would claim what the verdict does not.
    """
    def tasks(x):
        return [np.asarray(x, float)] if np.ndim(x[0]) == 0 else [np.asarray(t, float) for t in x]

    def mean(ts):
        return float(np.mean([t.mean() for t in ts]))

    L, A, G = tasks(lora), tasks(adalora), tasks(glora)
    ada_gain, glora_gain = mean(A) - mean(L), mean(G) - mean(L)
    out = ShareOfGain(share=None, ci_low=None, ci_high=None, defined=False, adalora_gain=ada_gain,
                      glora_gain=glora_gain, frac_undefined=None, note="")
    if not ada_gain > 0:
        out.note = f"undefined: AdaLoRA does not beat LoRA on mean (AdaLoRA - LoRA = {ada_gain:+.4f})"
        return out
    if min(len(t) for t in L + A + G) < MIN_SEEDS:
        out.share, out.defined, out.too_few_seeds = glora_gain / ada_gain, True, True
        out.note = f"no interval: too few seeds (< {MIN_SEEDS} per arm)"
        return out
    rng = np.random.default_rng(seed)

    def boot(ts):  # (n_bootstrap,) resampled statistic
        return np.mean([t[rng.integers(0, len(t), (n_bootstrap, len(t)))].mean(1) for t in ts], axis=0)

    bl, ba, bg = boot(L), boot(A), boot(G)
    ok = ba - bl > 0
    out.share, out.defined, out.frac_undefined = glora_gain / ada_gain, True, float(1 - ok.mean())
    out.n_usable, out.n_resamples = int(ok.sum()), n_bootstrap
    needed = math.ceil(min_usable_fraction(alpha) * n_bootstrap)
    out.estimable = out.n_usable >= needed
    notes = [f"{out.n_usable} of {n_bootstrap} resamples usable: AdaLoRA > LoRA in them"]
    if out.estimable:
        ratios = (bg[ok] - bl[ok]) / (ba[ok] - bl[ok])
        out.ci_low, out.ci_high = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    else:
        notes.append(f"interval not estimable: needs >= {needed} ({min_usable_fraction(alpha):.1%})")
    out.note = "; ".join(notes)
    return out


@dataclass
class Welch:
    t: float
    p: float
    note: str = ""


def welch(a, b):
    """Welch's t-test (two-sided, unequal variances) over per-seed scores; nan if not computable."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return Welch(NAN, NAN, "Welch needs >= 2 seeds per method")
    with warnings.catch_warnings():  # zero variance in both groups -> nan, reported as n/a
        warnings.simplefilter("ignore")
        r = stats.ttest_ind(a, b, equal_var=False)
    return Welch(float(r.statistic), float(r.pvalue))


@dataclass
class PairedT:
    n: int  # seeds both arms ran
    t: float
    p: float


def paired_t(a, b, seeds_a, seeds_b):
    """The paired t-test (two-sided) on the per-seed differences A - B over the seeds both arms ran: with common
    random numbers (the same data order and head per seed) a seed's runs share their luck, which the difference
    removes; nan (the tables' header says why) if fewer than 2 seeds are shared or the differences do not vary."""
    by_seed_b = dict(zip(seeds_b, b))
    diffs = np.array([x - by_seed_b[s] for s, x in zip(seeds_a, a) if s in by_seed_b], float)
    if len(diffs) < 2 or np.ptp(diffs) <= 1e-12 * max(1.0, float(np.abs(diffs).max())):  # equal up to rounding
        return PairedT(len(diffs), NAN, NAN)
    r = stats.ttest_1samp(diffs, 0.0)
    return PairedT(len(diffs), float(r.statistic), float(r.pvalue))


@dataclass
class Comparison:
    """Arm A vs arm B in one comparable group of a task and rank budget (A - B). Field order = the output columns."""
    task: str
    budget: int
    a: str  # arm labels
    b: str
    delta: float  # difference of the groups' mean scores
    n_a: int
    n_b: int
    notes: list
    p_welch: float
    t_welch: float
    # per-seed diagnostic: seed-paired runs, dev examples resampled, seeds not
    paired_seeds: list
    delta_boot: float
    boot_ci_low: float
    boot_ci_high: float
    p_boot: float
    p_boot_per_seed: list
    delta_per_seed: list
    n_examples: dict
    sig_boot: bool
    sig_welch: bool
    # the verdict's test: seeds and dev examples resampled (every run with predictions, seeds need not match)
    hier_n_a: int
    hier_n_b: int
    delta_hier: float
    hier_ci_low: float
    hier_ci_high: float
    p_hier: float
    sig_hier: bool
    verdict: str
    capacity: str  # "" or "unequal capacity (...)": adapter parameters more than 2 % apart
    group: str = ""  # the comparable group's tag (GroupKey.group)
    method_a: str = ""
    method_b: str = ""
    # beside Welch: the paired t-test on the per-seed differences over the seeds both arms ran (paired_t)
    n_paired_t: int = 0
    t_paired_t: float = NAN
    p_paired_t: float = NAN
    sig_paired_t: bool = False


def verdict(n_a, n_b, hier, w, alpha):
    """'significant' / 'not significant' from the hierarchical bootstrap (Welch where no predictions),
    or why there is none. Never from the examples-only bootstrap."""
    if min(n_a, n_b) < MIN_SEEDS:
        return f"too few seeds (< {MIN_SEEDS} per method)"
    if math.isfinite(hier.p):
        return "significant" if hier.p < alpha else "not significant"
    if math.isfinite(w.p):
        return ("significant" if w.p < alpha else "not significant") + " (Welch only: no predictions)"
    return "n/a"


def arm_pairs(groups):
    """The (A, B) arm pairs of one comparable group (its Groups in arm order): every arm of a known method vs the
    uniform LoRA arm, every GLoRA arm vs the AdaLoRA arm (References picks both), then arms of other methods vs
    LoRA. With the three default arms: AdaLoRA vs LoRA, GLoRA vs LoRA, GLoRA vs AdaLoRA."""
    refs = pick_references(groups)
    lora, ada = refs.lora, refs.adalora
    pairs = [(g.arm, lora) for g in groups if lora and g.arm != lora and g.method in METHOD_ORDER]
    pairs += [(g.arm, ada) for g in groups if ada and g.method == "glora"]
    return pairs + [(g.arm, lora) for g in groups if lora and g.method not in METHOD_ORDER]


def same_dev_rows(with_preds, task):
    """(kept keys, notes): a run whose predictions cover fewer dev rows than the runs beside it (a file cut short,
    or another dev subset) is left out, so that every run left is scored on the same rows as its recorded score
    and the bootstrap's Δ is the Δ of those scores. with_preds: {(arm, seed): {split: DataFrame}}."""
    rows = {k: {s: frozenset(df["idx"]) for s, df in p.items()} for k, p in with_preds.items()}
    if not rows:
        return [], []
    splits = next(iter(rows.values()))
    full = {s: frozenset().union(*(r[s] for r in rows.values())) for s in splits}
    kept, notes = [], []
    for (arm, seed), r in rows.items():
        short = [s for s in splits if r[s] != full[s]]
        if short:
            s = short[0]
            notes.append(f"{arm} seed {seed}: {predictions_file(task, s)} covers {len(r[s])} of the {len(full[s])} dev rows "
                         "the runs beside it cover: left out of the bootstrap")
        else:
            kept.append((arm, seed))
    return kept, notes


def compare(ga, gb, preds, n_bootstrap, seed, alpha):
    """One Comparison of group A vs group B. preds(run) -> (predictions or None, why not)."""
    notes = []
    w = welch(ga.scores, gb.scores)
    pt = paired_t(ga.scores, gb.scores, ga.seeds, gb.seeds)
    if w.note:
        notes.append(w.note)
    with_preds = {}
    for g in (ga, gb):
        for r in g.runs:
            p, why = preds(r)
            if p is None:
                notes.append(f"{g.arm} seed {r.seed}: {why}")
            else:
                with_preds[(g.arm, r.seed)] = p
    kept, row_notes = same_dev_rows(with_preds, ga.task)
    notes += row_notes
    runs_a = [r.seed for r in ga.runs if (ga.arm, r.seed) in kept]
    runs_b = [r.seed for r in gb.runs if (gb.arm, r.seed) in kept]
    paired = [s for s in runs_a if s in runs_b]
    boot, hier = PairedBootstrap(), HierarchicalBootstrap()
    if runs_a and runs_b:
        try:
            scores = resampled_scores(ga.task, [with_preds[(ga.arm, s)] for s in runs_a] +
                                      [with_preds[(gb.arm, s)] for s in runs_b],
                                      n_bootstrap, np.random.default_rng(seed))
            hier = hierarchical_from_scores(scores, len(runs_a), seed, alpha)
            if paired:
                boot = paired_from_scores(scores, [(runs_a.index(s), len(runs_a) + runs_b.index(s)) for s in paired],
                                          alpha)
            else:
                notes.append("no seed-paired runs with predictions: no per-seed bootstrap")
        except Misaligned as e:
            notes.append(str(e))
            paired = []
    else:
        notes.append("no runs with predictions for one method: no paired bootstrap, no hierarchical bootstrap")
    n_a, n_b = (len(runs_a), len(runs_b)) if math.isfinite(hier.p) else (ga.n, gb.n)
    return Comparison(
        task=ga.task, budget=ga.budget, a=ga.arm, b=gb.arm, delta=ga.score.mean - gb.score.mean,
        n_a=ga.n, n_b=gb.n, notes=notes, p_welch=w.p, t_welch=w.t, paired_seeds=paired if math.isfinite(boot.p) else [],
        delta_boot=boot.delta, boot_ci_low=boot.ci_low, boot_ci_high=boot.ci_high, p_boot=boot.p,
        p_boot_per_seed=boot.p_per_seed, delta_per_seed=boot.delta_per_seed, n_examples=boot.n_examples,
        sig_boot=bool(boot.p < alpha), sig_welch=bool(w.p < alpha),  # nan < alpha is False
        hier_n_a=len(runs_a), hier_n_b=len(runs_b), delta_hier=hier.delta, hier_ci_low=hier.ci_low,
        hier_ci_high=hier.ci_high, p_hier=hier.p, sig_hier=bool(hier.p < alpha),
        verdict=verdict(n_a, n_b, hier, w, alpha), capacity=unequal_capacity([ga, gb]),
        group=ga.group, method_a=ga.method, method_b=gb.method,
        n_paired_t=pt.n, t_paired_t=pt.t, p_paired_t=pt.p, sig_paired_t=bool(pt.p < alpha))


def significance(groups, n_bootstrap=2000, seed=0, alpha=0.05):
    """Every arm pair (arm_pairs) in every comparable group: [Comparison]. Arms of different groups are never
    compared."""
    cache = {}

    def preds(run):
        if run.path not in cache:
            found, err = read_predictions(run)
            why = f"no predictions ({err})" if found is None else predictions_mismatch(run, found)
            cache[run.path] = (None, why) if why else (found, "")
        return cache[run.path]

    rows = []
    for gs in blocks(groups).values():
        by_arm = {g.arm: g for g in gs}
        for a, b in arm_pairs(gs):
            rows.append(compare(by_arm[a], by_arm[b], preds, n_bootstrap, seed, alpha))
    return rows
