"""GLUE task definitions and metrics (the official GLUE definitions, computed with scikit-learn/scipy).

The `evaluate` package fetches its GLUE metric script from the Hub at load time, which fails offline, so the
metrics are written out here.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef


@dataclass(frozen=True)
class GlueTask:
    text_keys: tuple  # one or two text columns
    num_labels: int  # 1 = regression
    main_metrics: tuple  # what a table ranks by (combined_score = their mean)
    eval_splits: tuple = ("validation",)


task_to_keys = {
    "cola": GlueTask(("sentence",), 2, ("matthews_correlation",)),
    "mnli": GlueTask(("premise", "hypothesis"), 3, ("accuracy",), ("validation_matched", "validation_mismatched")),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2, ("f1", "accuracy")),
    "qnli": GlueTask(("question", "sentence"), 2, ("accuracy",)),
    "qqp": GlueTask(("question1", "question2"), 2, ("f1", "accuracy")),
    "rte": GlueTask(("sentence1", "sentence2"), 2, ("accuracy",)),
    "sst2": GlueTask(("sentence",), 2, ("accuracy",)),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, ("pearson", "spearmanr")),
    "wnli": GlueTask(("sentence1", "sentence2"), 2, ("accuracy",)),
}

# Metric-name suffix per evaluation split (HF run_glue.py's convention for MNLI mismatched).
split_suffix = {"validation": "", "validation_matched": "", "validation_mismatched": "_mm"}


def glue_metrics(task: str, predictions, labels) -> dict:
    """GLUE metrics for one task. `predictions` are logits (classification) or scores (STS-B)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if task_to_keys[task].num_labels == 1:
        scores = predictions.reshape(-1).astype(np.float64)
        labels = labels.reshape(-1).astype(np.float64)
        if np.ptp(scores) == 0 or np.ptp(labels) == 0:
            # Correlation is undefined for a constant vector; report 0 rather than NaN so runs compare.
            result = {"pearson": 0.0, "spearmanr": 0.0}
        else:
            result = {"pearson": float(pearsonr(scores, labels)[0]), "spearmanr": float(spearmanr(scores, labels)[0])}
    else:
        classes = predictions.argmax(-1) if predictions.ndim == 2 else predictions
        result = {
            "accuracy": float((classes == labels).mean()),
            # sklearn returns 0.0 when a row or column of the confusion matrix is empty (constant predictions).
            "matthews_correlation": float(matthews_corrcoef(labels, classes)),
        }
        if "f1" in task_to_keys[task].main_metrics:
            # F1 of the positive class (label 1), as GLUE defines it for MRPC and QQP.
            result["f1"] = float(f1_score(labels, classes, pos_label=1, average="binary", zero_division=0.0))
    result["combined_score"] = float(np.mean([result[m] for m in task_to_keys[task].main_metrics]))
    return result
