"""The GLUE task table and its metrics (the official GLUE definitions, computed with scikit-learn/scipy).

The `evaluate` package fetches its GLUE metric script from the Hub at load time, which fails offline, so the
metrics are written out here.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalSplit:
    """A dev split and the suffix its metrics carry in all_results.json (HF run_glue.py: `_mm` for MNLI mismatched)."""

    name: str
    metric_suffix: str = ""


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_keys: tuple  # one or two text columns
    num_labels: int  # 1 = regression; 0 = a vector of K outputs per example (the planted control, K from its folder)
    main_metrics: tuple  # what a table ranks by (combined_score = their mean)
    eval_splits: tuple = (EvalSplit("validation"),)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_vector(self) -> bool:
        """A label of K numbers per example (or per token) and no class: the planted control (planted_task.py)."""
        return self.num_labels == 0

    @property
    def is_classification(self) -> bool:
        return self.num_labels >= 2

    @property
    def split_names(self) -> tuple:
        return tuple(split.name for split in self.eval_splits)

    def main_metric_keys(self) -> list:
        """Main metrics as all_results.json names them without `eval_`, every dev split: MNLI accuracy, accuracy_mm."""
        return [metric + split.metric_suffix for split in self.eval_splits for metric in self.main_metrics]

    def split_of(self, metric_key: str) -> tuple:
        """(dev split, plain metric name) of a main metric key: `accuracy_mm` -> (validation_mismatched, accuracy)."""
        for split in reversed(self.eval_splits):  # the suffixed split first: "" matches every key
            if metric_key.endswith(split.metric_suffix):
                return split.name, metric_key[: len(metric_key) - len(split.metric_suffix)]
        raise KeyError(metric_key)


_MNLI_SPLITS = (EvalSplit("validation_matched"), EvalSplit("validation_mismatched", "_mm"))
GLUE_TASKS = {
    task.name: task
    for task in (
        GlueTask("cola", ("sentence",), 2, ("matthews_correlation",)),
        GlueTask("mnli", ("premise", "hypothesis"), 3, ("accuracy",), _MNLI_SPLITS),
        GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("f1", "accuracy")),
        GlueTask("qnli", ("question", "sentence"), 2, ("accuracy",)),
        GlueTask("qqp", ("question1", "question2"), 2, ("f1", "accuracy")),
        GlueTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",)),
        GlueTask("sst2", ("sentence",), 2, ("accuracy",)),
        GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr")),
        GlueTask("wnli", ("sentence1", "sentence2"), 2, ("accuracy",)),
        # Not GLUE: the planted control of data/make_planted.py (--task planted --dataset_dir OUT), scored by the
        # share of the planted change recovered (R^2 and Pearson's r beside it).
        GlueTask("planted", ("sentence",), 0, ("recovered",)),
    )
}


def glue_metrics(task: str, predictions, labels, base_sq_error=None) -> dict:
    """GLUE metrics for one task. `predictions` are logits (classification) or scores (STS-B); a vector-label task
    also needs the base model's squared error of each example scored (`base_sq_error`, vector_metrics)."""
    from scipy.stats import pearsonr, spearmanr  # here, not at the top: every tool that reads GLUE_TASKS imports
    from sklearn.metrics import f1_score, matthews_corrcoef  # this module, and these two cost ~0.7 s of CPU

    spec = GLUE_TASKS[task]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if spec.is_vector:
        result = vector_metrics(predictions, labels, base_sq_error)
    elif spec.is_regression:
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
        if "f1" in spec.main_metrics:
            # F1 of the positive class (label 1), as GLUE defines it for MRPC and QQP.
            result["f1"] = float(f1_score(labels, classes, pos_label=1, average="binary", zero_division=0.0))
    result["combined_score"] = float(np.mean([result[m] for m in spec.main_metrics]))
    return result


def vector_metrics(predictions, labels, base_sq_error) -> dict:
    """The planted control's metrics on (rows, K) arrays, one row per example (target features) or per real token
    (token_features, pooled over every example's tokens): `recovered` = 1 - SSE / SSE_base, the share of the planted
    change the model recovered (SSE over every row and output; SSE_base the base model's, the sum of `base_sq_error`
    over the examples scored: 0 = no better than the base model, 1 = the teacher, negative = worse than the base
    model; 0 if the base model is exact on them); and the mean over the K outputs of R^2 = 1 - SSE_k / SST_k (about
    the output's own mean over the rows) and of Pearson's r. An output that is constant over the rows (SST 0, or
    constant predictions for r) counts 0, as GLUE's regression metric does, so that runs compare."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if predictions.shape != labels.shape or predictions.ndim != 2:
        raise ValueError(f"vector metrics need two (rows, K) arrays of one shape, got {predictions.shape} and "
                         f"{labels.shape}")
    base = np.sum(base_sq_error, dtype=np.float64)
    return {"recovered": float(recovered(((labels - predictions) ** 2).sum(), base)),
            **r2_and_pearson(predictions, labels)}


def recovered(sse, base_sse):
    """1 - sse / base_sse (arrays elementwise), 0 where base_sse is 0: nothing planted to recover on those rows."""
    base_sse = np.asarray(base_sse, dtype=np.float64)
    return np.where(base_sse > 0, 1 - np.asarray(sse) / np.where(base_sse > 0, base_sse, 1.0), 0.0)


def r2_and_pearson(predictions, labels) -> dict:
    """vector_metrics' mean R^2 and Pearson's r over the K outputs (float64 (rows, K) arrays)."""
    centred_y = labels - labels.mean(0)
    centred_p = predictions - predictions.mean(0)
    sst = (centred_y ** 2).sum(0)
    sse = ((labels - predictions) ** 2).sum(0)
    spread = np.sqrt(sst * (centred_p ** 2).sum(0))
    r2 = np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), 0.0)
    pearson = np.where(spread > 0, (centred_y * centred_p).sum(0) / np.where(spread > 0, spread, 1), 0.0)
    return {"r2": float(r2.mean()), "pearson": float(pearson.mean())}
