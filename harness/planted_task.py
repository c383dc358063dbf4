"""The planted control as a task of the harness: `--task planted --dataset_dir OUT`, OUT a folder written by
`data.make_planted` (the format: docs/planted.md). Labels are vectors: K read-outs of the teacher's last hidden
state at [CLS] (target `features`) or at every token (`token_features`).

The model is the base encoder with no trainable head: its prediction is the planting's FROZEN affine read-out
(readout.weight, readout.bias) applied to its own last hidden state, so that only the adapted matrices can move it.
The loss is the mean squared error over the K outputs (and the real tokens); the metrics (glue_tasks.vector_metrics)
the share of the planted change recovered (1 - the squared error over the base model's, whose per-row squared error
is the data's `base_sq_error` column and travels with each example through the model to the metrics) and the mean
R^2 and Pearson r over the outputs.

run_glue_peft.py calls, in order: `read_planting` (before anything is loaded), `check_labels` (after the data),
`ReadoutModel.load` (the model), `check_planting` (the model against the folder), `check_token_counts` (the labels against
the tokenizer), `VectorLabelCollator` (the Trainer's batches), `real_outputs` (every evaluation) and
`write_predictions` (the final one).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoModel, DataCollatorWithPadding
from transformers.utils import ModelOutput

GROUND_TRUTH_FILE = "ground_truth.json"
BASE_ERROR = "base_sq_error"  # per row: the base model's squared error under the read-out (data.make_planted)
UPDATE_FILE = "planted_update.safetensors"
TARGETS = ("features", "token_features")  # data/make_planted.py --target of a vector-label planting


@dataclass(frozen=True)
class Planting:
    """What the harness reads from a planting folder (ground_truth.json and the read-out of
    planted_update.safetensors)."""

    folder: str
    target: str  # features | token_features
    num_outputs: int  # K
    max_seq_length: int  # the teacher's tokenisation, which token labels follow
    weight: torch.Tensor  # (K, hidden) float64
    bias: torch.Tensor  # (K,) float64
    planted: tuple  # module paths of the planted matrices

    @property
    def per_token(self) -> bool:
        return self.target == "token_features"


def read_planting(dataset_dir) -> Planting:
    """The planting in --dataset_dir, checked: one line naming the file and what was expected, before anything is
    loaded."""
    if not dataset_dir:
        raise ValueError("--task planted reads a planting folder: give --dataset_dir OUT (written by data.make_planted).")
    folder = Path(dataset_dir)
    truth_path, update_path = folder / GROUND_TRUTH_FILE, folder / UPDATE_FILE
    if not truth_path.is_file():
        raise FileNotFoundError(f"--dataset_dir {folder}: no {GROUND_TRUTH_FILE}; --task planted reads a folder written "
                                "by data.make_planted --target features|token_features.")
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{truth_path}: not readable JSON ({error}).") from None
    if not isinstance(truth, dict):
        raise ValueError(f"{truth_path}: expected a JSON object, got a {type(truth).__name__}.")
    if truth.get("task") != "planted" or truth.get("target") not in TARGETS:
        raise ValueError(f"{truth_path}: task {truth.get('task')!r}, target {truth.get('target')!r}; --task planted needs "
                         f"task 'planted' and a target of {', '.join(TARGETS)} (a scalar planting is run as its "
                         "GLUE-schema task: --task sst2 or stsb).")
    for key in ("num_outputs", "max_seq_length"):
        if not isinstance(truth.get(key), int) or isinstance(truth[key], bool) or truth[key] < 1:
            raise ValueError(f"{truth_path}: {key} must be a whole number >= 1, got {truth.get(key)!r}.")
    if not isinstance(truth.get("planted"), dict):
        raise ValueError(f"{truth_path}: no `planted` object (module path -> its planted update).")
    weight, bias = read_readout(update_path, truth["num_outputs"])
    return Planting(folder=str(folder), target=truth["target"], num_outputs=truth["num_outputs"],
                    max_seq_length=truth["max_seq_length"], weight=weight, bias=bias, planted=tuple(truth["planted"]))


def read_readout(path: Path, num_outputs: int) -> tuple:
    """readout.weight (K, hidden) and readout.bias (K,) of planted_update.safetensors, finite, K = num_outputs."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no {path.name}; the planting's read-out (readout.weight, readout.bias) "
                                "is in it.")
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error}).") from None
    missing = [key for key in ("readout.weight", "readout.bias") if key not in tensors]
    if missing:
        raise ValueError(f"{path}: lacks {', '.join(missing)} (the affine read-out of a vector-label planting).")
    weight, bias = tensors["readout.weight"].double(), tensors["readout.bias"].double()
    if weight.ndim != 2 or weight.shape[0] != num_outputs or tuple(bias.shape) != (num_outputs,):
        raise ValueError(f"{path}: readout.weight {tuple(weight.shape)} and readout.bias {tuple(bias.shape)} do not fit "
                         f"num_outputs {num_outputs}: expected ({num_outputs}, hidden) and ({num_outputs},).")
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ValueError(f"{path}: the read-out holds non-finite values.")
    return weight, bias


def check_labels(raw, planting: Planting):
    """Every split's `label` is a list of finite numbers: K of them (features), or a positive multiple of K (one K per
    token; the count is checked against the tokens by `check_token_counts`); and every row has its base model's
    squared error (`check_base_errors`)."""
    k = planting.num_outputs
    for split, ds in raw.items():
        check_base_errors(ds, split, planting)
        for row, label in enumerate(ds["label"]):
            if not isinstance(label, (list, tuple)) or not all(isinstance(v, (int, float)) for v in label):
                raise ValueError(f"{planting.folder} {split} row {row}: label {str(label)[:40]} is not a list of "
                                 "numbers (a vector-label planting).")
            if not all(math.isfinite(v) for v in label):
                raise ValueError(f"{planting.folder} {split} row {row}: label holds a non-finite value.")
            wrong = len(label) != k if not planting.per_token else (len(label) == 0 or len(label) % k)
            if wrong:
                expected = f"num_outputs {k}" if not planting.per_token else f"a positive multiple of num_outputs {k}"
                raise ValueError(f"{planting.folder} {split} row {row}: label has {len(label)} values, expected "
                                 f"{expected} (target {planting.target}, {GROUND_TRUTH_FILE}).")


def check_base_errors(ds, split, planting: Planting):
    """The split has the `base_sq_error` column eval_recovered divides by, a finite number >= 0 in every row; a
    planting written before it had the column is to be regenerated (same flags, same labels)."""
    if BASE_ERROR not in ds.column_names:
        raise ValueError(f"{planting.folder} {split} split: no `{BASE_ERROR}` column (the base model's squared error of "
                         "each row, which eval_recovered divides by); the planting predates it: regenerate it with "
                         "python3 -m data.make_planted and the flags in its ground_truth.json `args` (the labels come "
                         "out the same).")
    values = np.asarray(ds[BASE_ERROR], dtype=np.float64)
    bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
    if len(bad):
        raise ValueError(f"{planting.folder} {split} row {bad[0]}: {BASE_ERROR} {float(values[bad[0]])!r} is not a finite "
                         "number >= 0 (a squared error).")


def check_planting(planting: Planting, model, max_seq_length: int):
    """The model and the run's tokenisation are those the planting was made with: its hidden size is the read-out's,
    every planted matrix is one of its modules, and --max_seq_length is the teacher's."""
    hidden = model.config.hidden_size
    if planting.weight.shape[1] != hidden:
        raise ValueError(f"{planting.folder}/{UPDATE_FILE}: readout.weight reads {planting.weight.shape[1]} features, "
                         f"the model's hidden size is {hidden}: the planting was made on another model.")
    modules = {name for name, _ in model.named_modules()}
    unknown = [name for name in planting.planted if name not in modules]
    if unknown:
        raise ValueError(f"{planting.folder}/{GROUND_TRUTH_FILE}: planted matrix {unknown[0]} is no module of this model "
                         "(the planting was made on another model).")
    if max_seq_length != planting.max_seq_length:
        raise ValueError(f"--max_seq_length {max_seq_length}: the planting's labels were computed at max_seq_length "
                         f"{planting.max_seq_length} ({GROUND_TRUTH_FILE}); give --max_seq_length "
                         f"{planting.max_seq_length}.")


def check_token_counts(raw, tokenizer, planting: Planting):
    """token_features: every label holds K values for each token the run's tokenizer gives the sentence at the
    planting's max_seq_length (special tokens included), which the labels follow position by position."""
    if not planting.per_token:
        return
    for split, ds in raw.items():
        tokens = tokenizer(list(ds["sentence"]), truncation=True, max_length=planting.max_seq_length)["input_ids"]
        for row, (label, ids) in enumerate(zip(ds["label"], tokens)):
            if len(label) != planting.num_outputs * len(ids):
                raise ValueError(f"{planting.folder} {split} row {row}: label has {len(label)} values, the sentence "
                                 f"has {len(ids)} tokens x num_outputs {planting.num_outputs} = "
                                 f"{len(ids) * planting.num_outputs} (another tokenizer than the planting's?).")


@dataclass
class ReadoutOutput(ModelOutput):
    """The model's output: the MSE `loss` (with labels), the read-out `logits` ((B, K) or (B, T, K)) and, per token,
    `token_mask` (the attention mask), which travels with the predictions through evaluation (the Trainer pads
    batches of other lengths with -100) so that `real_outputs` keeps the real tokens only; and `base_sq_error` (B,),
    the input's, handed on to the metrics with its example."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    base_sq_error: torch.Tensor | None = None


def without_dropout(encoder):
    """Every dropout of `encoder` off, in its modules (p = 0) and in its config (what a reload would build)."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name, value in vars(encoder.config).items():
        if "dropout" in name and isinstance(value, float):
            setattr(encoder.config, name, 0.0)


class ReadoutModel(torch.nn.Module):
    """The base encoder, under the attribute its sequence classifier gives it (bert, deberta: the module paths of the
    planting's ground truth and oracle pattern), and the planting's frozen affine read-out; no trainable head and no
    pooler. The encoder's dropout is off (`without_dropout`): the labels are the teacher's outputs without dropout,
    and a regression on them trained through dropout learns to undo its noise, which the evaluation (no dropout) then
    pays for. (LoRA's own dropout, --lora_dropout, acts on the adapter's input only and stays the flag's.)"""

    def __init__(self, encoder, planting: Planting):
        super().__init__()
        without_dropout(encoder)
        self.prefix = encoder.base_model_prefix
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: the read-out takes the last hidden state
        setattr(self, self.prefix, encoder)
        self.config = encoder.config
        self.per_token = planting.per_token
        dtype = next(encoder.parameters()).dtype
        self.register_buffer("readout_weight", planting.weight.to(dtype), persistent=False)
        self.register_buffer("readout_bias", planting.bias.to(dtype), persistent=False)

    @classmethod
    def load(cls, name_or_path, planting: Planting, cache_dir=None) -> "ReadoutModel":
        return cls(AutoModel.from_pretrained(name_or_path, cache_dir=cache_dir), planting)

    def get_input_embeddings(self):
        return getattr(self, self.prefix).get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, base_sq_error=None,
                **kwargs):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = getattr(self, self.prefix)(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if not self.per_token:
            hidden = hidden[:, 0]
        logits = hidden @ self.readout_weight.T + self.readout_bias
        loss = None
        if labels is not None:
            squared = (logits - labels.to(logits.dtype)) ** 2
            loss = squared[attention_mask.bool()].mean() if self.per_token else squared.mean()
        return ReadoutOutput(loss=loss, logits=logits, token_mask=attention_mask if self.per_token else None,
                             base_sq_error=base_sq_error)


class VectorLabelCollator:
    """Batches of a vector-label task: the inputs padded as DataCollatorWithPadding pads them, the labels as a float
    tensor (B, K), or per token (B, T, K) with zeros past each example's tokens (the loss masks them), and each
    example's `base_sq_error` as a float64 tensor (B,) where the rows have it."""

    def __init__(self, tokenizer, planting: Planting, pad_to_max_length: bool, pad_to_multiple_of=None):
        padding = "max_length" if pad_to_max_length else True
        self.inputs = DataCollatorWithPadding(tokenizer, padding=padding, max_length=planting.max_seq_length,
                                              pad_to_multiple_of=pad_to_multiple_of)
        self.k, self.per_token = planting.num_outputs, planting.per_token

    def __call__(self, features):
        labels = [f["label"] for f in features]
        batch = self.inputs([{key: v for key, v in f.items() if key not in ("label", "labels", BASE_ERROR)}
                             for f in features])
        if BASE_ERROR in features[0]:
            batch[BASE_ERROR] = torch.tensor([f[BASE_ERROR] for f in features], dtype=torch.float64)
        if not self.per_token:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32)
            return batch
        padded = torch.zeros(len(labels), batch["input_ids"].shape[1], self.k)
        for i, label in enumerate(labels):
            rows = torch.tensor(label, dtype=torch.float32).reshape(-1, self.k)
            padded[i, : len(rows)] = rows
        batch["labels"] = padded
        return batch


def real_outputs(predictions, label_ids, per_token: bool) -> tuple:
    """(predictions (N, K), labels (N, K), example (N,), base_sq_error (examples,)): one row per example (features) or
    per real token (token_features), in dataset order, the position of the example each row belongs to, and each
    example's base error (float64). `predictions` is what the Trainer gathered: (logits, base_sq_error), or per token
    (logits, token_mask, base_sq_error)."""
    logits, *mask, base = predictions
    base = np.asarray(base, dtype=np.float64)
    if not per_token:
        return np.asarray(logits), np.asarray(label_ids), np.arange(len(label_ids)), base
    real = np.asarray(mask[0]) == 1
    return np.asarray(logits)[real], np.asarray(label_ids)[real], np.nonzero(real)[0], base


def write_predictions(folder, split, idx, labels_as_read, predictions, label_ids, per_token: bool):
    """predictions_<split>.csv (idx, n_rows, mse: one line per example, its mean squared error over its outputs and
    tokens) and predictions_<split>.npz (idx, example, label, prediction: every output row, example = the position
    of its example in idx; base_sq_error: per example, the base model's squared error summed over its rows and
    outputs), after checking that the outputs are in dataset order (their labels are the data's)."""
    predicted, labels, example, base = real_outputs(predictions, label_ids, per_token)
    expected = np.concatenate([np.asarray(label, dtype=np.float64).reshape(-1) for label in labels_as_read])
    if labels.size != expected.size or not np.allclose(labels.reshape(-1), expected, atol=1e-5):
        raise RuntimeError(f"{split}: predictions are not in dataset order; predictions_{split}.csv would pair them "
                           "with the wrong idx")
    idx = np.asarray(idx)
    squared = ((predicted.astype(np.float64) - labels) ** 2).mean(1)
    counts = np.bincount(example, minlength=len(idx))
    mse = np.bincount(example, weights=squared, minlength=len(idx)) / counts
    lines = ["idx,n_rows,mse"] + [f"{i},{n},{m!r}" for i, n, m in zip(idx.tolist(), counts.tolist(), mse.tolist())]
    Path(folder, f"predictions_{split}.csv").write_text("\n".join(lines) + "\n")
    np.savez(Path(folder, f"predictions_{split}.npz"), idx=idx, example=example, label=labels.astype(np.float32),
             prediction=predicted.astype(np.float32), base_sq_error=base)
