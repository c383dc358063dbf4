"""GLUE metrics on (label, prediction) arrays, in plain numpy so bootstrap loops stay fast."""
import math

import numpy as np
from scipy import stats


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
