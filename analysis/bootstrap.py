"""Bootstrap tests of method A vs method B on dev predictions.

Both tests share one engine: every run's task score on the same B resamples of dev examples
(`resampled_scores`). From it
- `hierarchical_bootstrap`, the verdict: each replicate also resamples seeds, within each method,
  so the interval holds seed-to-seed variance as well as the finite dev set;
- `paired_bootstrap`, a per-seed diagnostic: seed-paired runs on resampled examples only, which
  treats the seeds at hand as the whole population of runs.
A vector-label task (the planted control) is resampled the same way, by example (with all its output rows): each
run's score (the share of the planted change recovered) on a resample is computed exactly from its per-example sums
(analysis.metrics.VECTOR_METRIC_FNS).
"""
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from analysis.metrics import BASE_ERROR, SUM_PARTS, VECTOR_METRIC_FNS, weighted_metric
from analysis.runs import MAIN_METRICS, metric_split
from harness.glue_tasks import GLUE_TASKS

NAN = float("nan")
BLOCK = 256  # resamples per matrix product: bounds memory to BLOCK x dev-set-size counts


class Misaligned(Exception):
    """Predictions whose rows cannot be matched to the same dev examples across runs."""


@dataclass
class DevSplit:
    """One dev split's labels and every run's predictions, matched by idx."""
    labels: np.ndarray  # (n,)
    predictions: np.ndarray  # (runs, n)

    @property
    def n(self):
        return len(self.labels)


@dataclass
class VectorSplit:
    """One dev split of a vector-label task: every run's per-example sums (analysis.metrics.example_sums), matched
    by idx; the label columns are the same in every run."""
    sums: list  # [DataFrame] per run

    @property
    def n(self):
        return len(self.sums[0])


def align(task, preds):
    """{split: DevSplit, or VectorSplit for a vector-label task} over the idx every run has. preds: [{split:
    DataFrame(idx, label, prediction)}], or [{split: example_sums}]."""
    data = {}
    for split in sorted({metric_split(task, m)[0] for m in MAIN_METRICS[task]}):
        frames = [p[split].drop_duplicates("idx").set_index("idx") for p in preds]
        idx = reduce(np.intersect1d, [f.index.to_numpy() for f in frames])
        frames = [f.loc[idx] for f in frames]
        if GLUE_TASKS[task].is_vector:
            data[split] = VectorSplit(vector_labels_agree(split, frames))
            continue
        y = frames[0]["label"].to_numpy()
        if any(not np.array_equal(f["label"].to_numpy(), y) for f in frames[1:]):
            # Rows are not matched to their examples (or the dev data differ): pairing them would test noise.
            raise Misaligned(f"{split}: labels differ between runs for the same idx (predictions not in idx order, "
                             "or different dev data): no paired bootstrap")
        P = np.stack([f["prediction"].to_numpy() for f in frames])
        if not GLUE_TASKS[task].is_regression:  # class ids index the confusion matrix
            y, P = y.astype(int), P.astype(int)
        data[split] = DevSplit(y, P)
    return data


def vector_labels_agree(split, frames):
    """frames, when every run's rows, label sums and base error per example are the first run's; else Misaligned."""
    labels = [c for c in frames[0].columns if c in ("rows", BASE_ERROR) or c.startswith(SUM_PARTS[:2])]
    if any(not np.array_equal(f[labels].to_numpy(), frames[0][labels].to_numpy()) for f in frames[1:]):
        raise Misaligned(f"{split}: labels differ between runs for the same idx (other dev data, or rows of another "
                         "tokenisation): no paired bootstrap")
    return frames


@dataclass
class ResampledScores:
    observed: np.ndarray  # (runs,) task score of each run on the whole dev set
    boot: np.ndarray  # (B, runs) on each resample of dev examples, the same resample for every run
    n_examples: dict  # split -> examples used


def task_scores(task, data, weights):
    """(B, runs) task scores (mean of the main metrics) under example-count weights {split: (B, n)}."""
    if GLUE_TASKS[task].is_vector:  # its one main metric (recovered)
        ((split, metric),) = {metric_split(task, m) for m in MAIN_METRICS[task]}
        return np.stack([VECTOR_METRIC_FNS[metric](weights[split], sums) for sums in data[split].sums], axis=1)
    num_classes = max(2, int(max(max(d.labels.max(), d.predictions.max()) for d in data.values())) + 1)
    entries = [metric_split(task, m) for m in MAIN_METRICS[task]]
    runs = len(next(iter(data.values())).predictions)
    scores = np.zeros((len(next(iter(weights.values()))), runs))
    for split, metric in entries:
        d, W = data[split], weights[split]
        for r in range(runs):
            scores[:, r] += weighted_metric(metric, W, d.labels, d.predictions[r], num_classes)
    return scores / len(entries)


def resampled_scores(task, preds, n_bootstrap, rng):
    """Every run's task score on the full dev set and on n_bootstrap resamples of its examples."""
    data = align(task, preds)
    observed = task_scores(task, data, {s: np.ones((1, d.n)) for s, d in data.items()})[0]
    blocks = []
    for start in range(0, n_bootstrap, BLOCK):
        b = min(BLOCK, n_bootstrap - start)
        weights = {}
        for split, d in data.items():
            n = d.n
            draws = rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]  # offset per row: one bincount
            weights[split] = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
        blocks.append(task_scores(task, data, weights))
    return ResampledScores(observed, np.concatenate(blocks), {s: d.n for s, d in data.items()})


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


def paired_from_scores(scores, pairs, alpha):
    """Per-seed diagnostic from resampled scores: pairs = [(column of A's run, column of B's run)] of one seed each."""
    ia, ib = (list(c) for c in zip(*pairs))
    observed = scores.observed[ia] - scores.observed[ib]
    boot = scores.boot[:, ia] - scores.boot[:, ib]
    pooled = boot.mean(1)
    lo, hi = np.quantile(pooled, [alpha / 2, 1 - alpha / 2])
    return PairedBootstrap(delta=float(observed.mean()), ci_low=float(lo), ci_high=float(hi), p=two_sided_p(pooled),
                           delta_per_seed=[float(x) for x in observed],
                           p_per_seed=[two_sided_p(boot[:, k]) for k in range(len(pairs))],
                           n_examples=scores.n_examples)


def paired_bootstrap(task, preds_a, preds_b, n_bootstrap=2000, seed=0, alpha=0.05):
    """Paired bootstrap over dev examples for method A vs method B (a per-seed diagnostic).

    preds_a[k], preds_b[k]: {split: DataFrame(idx, label, prediction)} of the runs with the k-th
    shared seed. Examples are matched by idx (only idx present in every run are used). Each
    resample draws the same examples for all runs; the statistic is the task score of A minus B,
    averaged over the seed pairs. Per-seed p-values come from the same resamples. Seeds are not
    resampled: this measures dev-set noise only.
    """
    try:
        scores = resampled_scores(task, preds_a + preds_b, n_bootstrap, np.random.default_rng(seed))
    except Misaligned as e:
        return PairedBootstrap(notes=[str(e)])
    K = len(preds_a)
    return paired_from_scores(scores, [(k, K + k) for k in range(K)], alpha)


@dataclass
class HierarchicalBootstrap:
    """Two-level bootstrap of A - B (seeds, then dev examples); nan (with notes) when it cannot be made."""
    delta: float = NAN  # mean over A's runs minus mean over B's runs, on the matched examples
    ci_low: float = NAN
    ci_high: float = NAN
    p: float = NAN
    notes: list = field(default_factory=list)


def hierarchical_from_scores(scores, n_a, seed, alpha):
    """Columns [0, n_a) of scores are A's runs, the rest B's. Each replicate draws n_a of A's runs and
    n_b of B's with replacement (the seeds) and scores them on that replicate's resample of dev
    examples, shared by all runs because all were evaluated on the same dev set."""
    A, B = scores.boot[:, :n_a], scores.boot[:, n_a:]
    rng = np.random.default_rng([seed, 1])  # its own stream: the seed draws do not depend on BLOCK
    pick_a = rng.integers(0, A.shape[1], A.shape)
    pick_b = rng.integers(0, B.shape[1], B.shape)
    d = np.take_along_axis(A, pick_a, 1).mean(1) - np.take_along_axis(B, pick_b, 1).mean(1)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    observed = scores.observed[:n_a].mean() - scores.observed[n_a:].mean()
    return HierarchicalBootstrap(delta=float(observed), ci_low=float(lo), ci_high=float(hi), p=two_sided_p(d))


def hierarchical_bootstrap(task, preds_a, preds_b, n_bootstrap=2000, seed=0, alpha=0.05):
    """Seeds-and-examples bootstrap of method A vs method B. preds_a, preds_b: one
    {split: DataFrame(idx, label, prediction)} per run (seed) of each method; seeds need not match."""
    try:
        scores = resampled_scores(task, preds_a + preds_b, n_bootstrap, np.random.default_rng(seed))
    except Misaligned as e:
        return HierarchicalBootstrap(notes=[str(e)])
    return hierarchical_from_scores(scores, len(preds_a), seed, alpha)
