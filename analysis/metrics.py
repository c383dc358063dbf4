"""GLUE metrics on (label, prediction) arrays, in plain numpy so bootstrap loops stay fast; the planted control's
recovered share and R^2 from per-example sums."""
import math

import numpy as np
import pandas as pd
from scipy import stats

from harness.glue_tasks import recovered


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
# the same metrics on many bootstrap resamples at once. A resample of n examples is a row of counts
# W[b, i] (how often example i was drawn); every metric here depends on the resample only through
# those counts, so B resamples are a few matrix products instead of B Python loops.


def confusion_matrix(y, p, num_classes):
    """(num_classes, num_classes) counts, rows = true label, columns = prediction."""
    return np.bincount(np.asarray(y, int) * num_classes + np.asarray(p, int),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def weighted_confusion(W, y, p, num_classes):
    """(B, k, k) confusion counts of each resample (rows of W)."""
    cell = np.asarray(y, int) * num_classes + np.asarray(p, int)
    onehot = np.zeros((len(cell), num_classes * num_classes))
    onehot[np.arange(len(cell)), cell] = 1.0
    return (W @ onehot).reshape(len(W), num_classes, num_classes)


def accuracy_from_confusion(cm):
    return np.trace(cm, axis1=1, axis2=2) / cm.sum((1, 2))


def f1_from_confusion(cm):
    tp = cm[:, 1, 1]
    fp, fn = cm[:, :, 1].sum(1) - tp, cm[:, 1, :].sum(1) - tp
    return np.where(tp > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)


def matthews_from_confusion(cm):
    t, q, n = cm.sum(2), cm.sum(1), cm.sum((1, 2))  # true and predicted class counts, examples
    num = np.trace(cm, axis1=1, axis2=2) * n - (t * q).sum(1)
    den = np.sqrt(n * n - (q * q).sum(1)) * np.sqrt(n * n - (t * t).sum(1))
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def weighted_pearson(x, y, W):
    """Pearson correlation of x and y (each (n,) or (B, n)) under count weights W (B, n); 0 where undefined."""
    x, y = x - np.mean(x), y - np.mean(y)  # centre first: fewer digits lost in E[xy] - E[x]E[y]
    n = W.sum(1)
    mx, my = (W * x).sum(1) / n, (W * y).sum(1) / n
    vx, vy = (W * x * x).sum(1) / n - mx**2, (W * y * y).sum(1) / n - my**2
    cov = (W * x * y).sum(1) / n - mx * my
    tiny = 1e-12 * np.maximum((W * x * x).sum(1) / n, (W * y * y).sum(1) / n) + 1e-300
    ok = (vx > tiny) & (vy > tiny)
    return np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), 0.0)


def weighted_ranks(x, W):
    """(B, n) mid-ranks of x within each resample: what scipy's rankdata gives on the drawn sample,
    for every drawn copy of an example (undrawn examples get a rank too, with weight 0)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_value = np.r_[True, xs[1:] != xs[:-1]]
    tie_group = np.cumsum(new_value) - 1
    counts = np.add.reduceat(W[:, order], np.flatnonzero(new_value), axis=1)  # draws per distinct value
    mid = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
    ranks = np.empty(W.shape)
    ranks[:, order] = mid[:, tie_group]
    return ranks


def weighted_metric(metric, W, y, p, num_classes):
    """(B,) values of one GLUE metric on the resamples W of (labels y, predictions p)."""
    if metric == "pearson":
        return weighted_pearson(np.asarray(y, float), np.asarray(p, float), W)
    if metric == "spearmanr":
        return weighted_pearson(weighted_ranks(np.asarray(y, float), W), weighted_ranks(np.asarray(p, float), W), W)
    cm = weighted_confusion(W, y, p, num_classes)
    return {"accuracy": accuracy_from_confusion, "f1": f1_from_confusion,
            "matthews_correlation": matthews_from_confusion}[metric](cm)


# -----------------------------------------------------------------------------
# the planted control (vector labels, glue_tasks.vector_metrics): its score, the share of the planted change recovered,
# and R^2 on resamples of examples. An example is drawn with all its output rows (1, or one per real token).
# recovered on a resample is 1 - SSE / SSE_base over the drawn examples: both are sums over examples, of each example's
# (y - prediction)^2 over its rows and outputs and of its base model's squared error (predictions_<split>.npz's
# base_sq_error), so recovered = 1 - sum_e w_e S_ee[e] / sum_e w_e base[e] exactly.
# R^2 of output k on a resample is 1 - SSE_k / SST_k over the
# drawn rows, with SST_k about the resample's own mean; both are sums over rows, so each example's contribution is
# its row count and, per output, its sums of y, y^2 and (y - prediction)^2, and a resample's R^2 is exact from the
# count-weighted sums: N = sum_e w_e n_e, SST_k = sum_e w_e S_yy[e,k] - (sum_e w_e S_y[e,k])^2 / N,
# SSE_k = sum_e w_e S_ee[e,k]. The mean is over k (an output with SST 0 counts 0, as in
# vector_metrics). The labels are centred on their mean over the file's rows first (which changes neither SST nor
# SSE) so that the difference of sums keeps its digits.

SUM_PARTS = ("label_sum", "label_sq", "error_sq")  # the per-output sums of an example's rows: y, y^2, (y - p)^2
BASE_ERROR = "base_sq_error"  # an example's base model's squared error (data.make_planted), a column of example_sums


def example_sums(idx, example, label, prediction, base_sq_error) -> pd.DataFrame:
    """One line per example of predictions_<split>.npz (idx; example: each output row's position in idx; label,
    prediction: rows x K; base_sq_error: per example): idx, rows (its output rows), per output k `label_sum_k`,
    `label_sq_k`, `error_sq_k`, and base_sq_error."""
    label, prediction = np.asarray(label, np.float64), np.asarray(prediction, np.float64)
    centred = label - label.mean(0)
    n, k = len(idx), label.shape[1]
    out = {"idx": np.asarray(idx), "rows": np.bincount(example, minlength=n)}
    for part, values in zip(SUM_PARTS, (centred, centred**2, (label - prediction) ** 2)):
        summed = np.zeros((n, k))
        np.add.at(summed, example, values)
        out.update({f"{part}_{j}": summed[:, j] for j in range(k)})
    base = np.asarray(base_sq_error, np.float64)
    if base.shape != (n,):
        raise ValueError(f"{BASE_ERROR} holds {base.shape} values, expected one per example ({n})")
    out[BASE_ERROR] = base
    return pd.DataFrame(out)


def sum_columns(sums: pd.DataFrame, part: str) -> np.ndarray:
    """(examples, K) of one of SUM_PARTS."""
    return sums[[c for c in sums.columns if c.startswith(part + "_")]].to_numpy(np.float64)


def weighted_recovered(W, sums: pd.DataFrame):
    """(B,) share of the planted change recovered on each resample (glue_tasks.recovered): W (B, n) draws of each
    example (a row of ones: the whole file), sums the example_sums of those n examples."""
    return recovered(W @ sum_columns(sums, "error_sq").sum(1), W @ sums[BASE_ERROR].to_numpy(np.float64))


def weighted_r2(W, sums: pd.DataFrame):
    """(B,) mean R^2 over the K outputs on each resample: W (B, n) draws of each example (a row of ones: the whole
    file), sums the example_sums of those n examples."""
    drawn = W @ sums["rows"].to_numpy(np.float64)
    y, yy, sse = (W @ sum_columns(sums, part) for part in SUM_PARTS)
    sst = yy - y**2 / drawn[:, None]
    defined = sst > 1e-12 * yy + 1e-300  # constant over the drawn rows (up to rounding): 0, as vector_metrics
    return np.where(defined, 1 - sse / np.where(defined, sst, 1.0), 0.0).mean(1)


VECTOR_METRIC_FNS = {"recovered": weighted_recovered, "r2": weighted_r2}  # metric -> fn(W, example_sums)
