"""Statistics of the comparison: share of AdaLoRA's gain recovered by GLoRA, and A-vs-B tests."""
import warnings
from dataclasses import dataclass, field
from functools import reduce

import numpy as np
from scipy import stats

from analysis.metrics import METRIC_FNS
from analysis.runs import MAIN_METRICS, METHOD_ORDER, load_predictions, metric_split

# comparisons for the significance table: (A, B) means A - B
PAIRS = [("adalora", "lora"), ("glora", "lora"), ("glora", "adalora")]
NAN = float("nan")


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
    out = ShareOfGain(share=None, ci_low=None, ci_high=None, defined=False, adalora_gain=ada_gain,
                      glora_gain=glora_gain, frac_undefined=None, note="")
    if not ada_gain > 0:
        out.note = f"undefined: AdaLoRA does not beat LoRA on mean (AdaLoRA - LoRA = {ada_gain:+.4f})"
        return out
    rng = np.random.default_rng(seed)

    def boot(ts):  # (n_bootstrap,) resampled statistic
        return np.mean([t[rng.integers(0, len(t), (n_bootstrap, len(t)))].mean(1) for t in ts], axis=0)

    bl, ba, bg = boot(L), boot(A), boot(G)
    ok = ba - bl > 0
    out.share, out.defined, out.frac_undefined = glora_gain / ada_gain, True, float(1 - ok.mean())
    if ok.any():
        ratios = (bg[ok] - bl[ok]) / (ba[ok] - bl[ok])
        out.ci_low, out.ci_high = (float(q) for q in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    if out.frac_undefined > 0:
        out.note = f"{out.frac_undefined:.0%} of resamples had AdaLoRA <= LoRA (left out of the CI)"
    if min(len(t) for t in L + A + G) < 2:
        out.note = (out.note + "; " if out.note else "") + "a method has 1 seed: CI ignores its seed noise"
    return out


def two_sided_p(d):
    """Two-sided bootstrap p-value that the difference is 0: twice the smaller tail mass at 0,
    with the +1 correction so a finite bootstrap never claims p = 0."""
    B = len(d)
    lo, hi = (np.sum(d <= 0) + 1) / (B + 1), (np.sum(d >= 0) + 1) / (B + 1)
    return float(min(1.0, 2 * min(lo, hi)))


@dataclass
class PairedBootstrap:
    """Paired bootstrap over dev examples of A - B; nan (with notes) when no paired test can be made."""
    delta: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    p: float = NAN
    delta_per_seed: list = field(default_factory=list)
    p_per_seed: list = field(default_factory=list)
    n_examples: dict = field(default_factory=dict)  # split -> examples used
    notes: list = field(default_factory=list)


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
            return PairedBootstrap(notes=[f"{split}: labels differ between runs for the same idx (predictions not "
                                          "in idx order, or different dev data): no paired bootstrap"])
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
    return PairedBootstrap(delta=float(observed.mean()), ci_low=float(lo), ci_high=float(hi), p=two_sided_p(pooled),
                           delta_per_seed=[float(x) for x in observed],
                           p_per_seed=[two_sided_p(boot[:, k]) for k in range(K)],
                           n_examples={s: len(y) for s, (y, _) in data.items()})


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
class Comparison:
    """Method A vs method B on one task and rank budget (A - B). Field order = the output columns."""
    task: str
    budget: int
    a: str
    b: str
    delta: float  # difference of the groups' mean scores
    n_a: int
    n_b: int
    notes: list
    p_welch: float
    t_welch: float
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


def method_pairs(methods):
    """The (A, B) pairs present among methods: the three fixed ones, then any extra method vs LoRA."""
    pairs = PAIRS + [(m, "lora") for m in methods if m not in METHOD_ORDER]
    return [(a, b) for a, b in pairs if a in methods and b in methods]


def significance(groups, n_bootstrap=2000, seed=0, alpha=0.05):
    """Per (task, budget) and method pair A vs B: paired bootstrap over dev examples (seed-paired
    runs) and Welch's t-test over per-seed scores. Returns [Comparison]."""
    pred_cache, rows = {}, []

    def preds(run):
        if run.path not in pred_cache:
            pred_cache[run.path] = load_predictions(run)
        return pred_cache[run.path]

    for (task, budget) in dict.fromkeys((t, b) for t, b, _ in groups):
        methods = [m for t, b, m in groups if (t, b) == (task, budget)]
        for a, b in method_pairs(methods):
            ga, gb = groups[(task, budget, a)], groups[(task, budget, b)]
            notes = []
            w = welch(ga.scores, gb.scores)
            if w.note:
                notes.append(w.note)
            # pair runs with the same seed, and only those whose predictions load
            ra = {r.seed: r for r in ga.runs}
            rb = {r.seed: r for r in gb.runs}
            seeds = []
            for s in sorted(set(ra) & set(rb)):
                (pa, ea), (pb, eb) = preds(ra[s]), preds(rb[s])
                if pa is None or pb is None:
                    notes.append(f"seed {s}: no predictions ({ea or eb})")
                else:
                    seeds.append(s)
            if seeds:
                boot = paired_bootstrap(task, [preds(ra[s])[0] for s in seeds], [preds(rb[s])[0] for s in seeds],
                                        n_bootstrap=n_bootstrap, seed=seed, alpha=alpha)
            else:
                boot = PairedBootstrap(notes=["no seed-paired runs with predictions: no paired bootstrap"])
            rows.append(Comparison(
                task=task, budget=budget, a=a, b=b, delta=ga.score.mean - gb.score.mean, n_a=ga.n, n_b=gb.n,
                notes=notes + boot.notes, p_welch=w.p, t_welch=w.t, paired_seeds=seeds, delta_boot=boot.delta,
                boot_ci_low=boot.ci_low, boot_ci_high=boot.ci_high, p_boot=boot.p, p_boot_per_seed=boot.p_per_seed,
                delta_per_seed=boot.delta_per_seed, n_examples=boot.n_examples,
                sig_boot=bool(boot.p < alpha), sig_welch=bool(w.p < alpha)))  # nan < alpha is False
    return rows
