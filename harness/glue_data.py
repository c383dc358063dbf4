"""GLUE data for one run: the train and dev splits from the hub or from local files, checked against the task
table, cut to --max_*_samples, and tokenised."""

import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import load_dataset
from datasets.exceptions import DatasetGenerationError

from harness.glue_tasks import GLUE_TASKS

DATA_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}


def load_glue_data(data_args, cache_dir=None) -> datasets.DatasetDict:
    """`train` and the task's dev splits, checked, cut, and with an `idx` column on every dev split."""
    task = GLUE_TASKS[data_args.task]
    files = data_files(data_args)
    raw = load_files(files) if files else load_from_hub(data_args, cache_dir)
    check_data(raw, data_args.task, files)
    raw = hold_out_tuning_split(raw, data_args.tuning_split_fraction, data_args.tuning_split_max)
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    for split in task.split_names:
        if data_args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(data_args.max_eval_samples, len(raw[split]))))
        if "idx" not in raw[split].column_names:
            raw[split] = raw[split].add_column("idx", list(range(len(raw[split]))))
    return raw


def data_fingerprint(raw, task_name) -> dict:
    """The content of the data a run trains and evaluates on, after every row selection (--max_*_samples, the tuning
    split): per split its row count and the sha256 of its rows in order, each row the JSON list of the task's texts
    and label (what the model sees; other columns are not). run_args.json records it: it is part of the run's
    identity (a resume on data changed at the same path is refused) and of compare_runs' comparable group (where the
    data was read from is not)."""
    columns = list(GLUE_TASKS[task_name].text_keys) + ["label"]
    fingerprint = {}
    for split, ds in raw.items():
        digest = hashlib.sha256()
        for batch in ds.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
            values = [batch.column(c).to_pylist() for c in columns]
            digest.update("".join(json.dumps(row) + "\n" for row in zip(*values)).encode())
        fingerprint[split] = {"rows": len(ds), "sha256": digest.hexdigest()}
    return fingerprint


def data_files(data_args) -> dict | None:
    """split -> local file, from --dataset_dir or --train_file/--validation_file; None: the hub."""
    task = GLUE_TASKS[data_args.task]
    splits = ("train",) + task.split_names
    if data_args.dataset_dir:
        files = {}
        for split in splits:
            candidates = [Path(data_args.dataset_dir, data_args.task, split + ext) for ext in DATA_EXTENSIONS]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(f"No {split} split for {data_args.task}: looked for {[str(p) for p in candidates]}.")
            files[split] = str(found[0])
        return files
    if data_args.train_file:
        eval_files = [data_args.validation_file, data_args.validation_mismatched_file][: len(task.eval_splits)]
        return dict(zip(splits, [data_args.train_file] + eval_files))
    return None


def load_from_hub(data_args, cache_dir=None) -> datasets.DatasetDict:
    try:
        return load_dataset(data_args.dataset_name, data_args.task, cache_dir=cache_dir)
    except OSError as error:  # ConnectionError when offline or unreachable, and not in the datasets cache
        raise OSError(
            f"Could not load the {data_args.task} data of --dataset_name {data_args.dataset_name} from the Hugging Face "
            f"Hub (offline or unreachable: {type(error).__name__}); pass --dataset_dir DIR (files "
            f"DIR/{data_args.task}/<split>.parquet|csv|jsonl) or --train_file/--validation_file."
        ) from error


def load_files(files: dict) -> datasets.DatasetDict:
    """One split per file, loaded separately so that a split with other columns reaches `check_data`'s message."""
    loaded = datasets.DatasetDict()
    for split, path in files.items():
        kind = DATA_EXTENSIONS.get(Path(path).suffix)
        if kind is None:
            raise ValueError(f"{path}: data files must end in one of {list(DATA_EXTENSIONS)}.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"No such data file: {path}")
        if not has_rows(path, kind):
            raise ValueError(f"{path}: no rows (the {split} split must hold at least one example).")
        try:
            loaded[split] = load_dataset(kind, data_files={split: path}, split=split)
        except DatasetGenerationError as error:
            raise ValueError(f"{path}: could not be read as {kind}: {error.__cause__ or error}") from error
    return loaded


def has_rows(path, kind: str) -> bool:
    """Whether a data file holds at least one row, read without the datasets builder (whose errors on empty files
    do not name the file)."""
    if Path(path).stat().st_size == 0:
        return False
    if kind == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except pa.ArrowException as error:
            raise ValueError(f"{path}: not a readable Parquet file ({error}).") from error
    with open(path, encoding="utf-8", errors="replace") as lines:
        content = (line for line in lines if line.strip())
        return next(content, None) is not None and (kind == "json" or next(content, None) is not None)  # csv: header + row


def check_data(raw, task_name, files=None):
    """Columns, texts and labels must fit the task, or we stop before training with the reason."""
    task = GLUE_TASKS[task_name]
    for split, ds in raw.items():
        where = (files or {}).get(split) or f"{task_name} {split} split"
        if len(ds) == 0:
            raise ValueError(f"{where}: no rows (the {split} split must hold at least one example).")
        missing = [c for c in task.text_keys + ("label",) if c not in ds.column_names]
        if missing:
            raise ValueError(f"{task_name} {split} split lacks column(s) {missing}; it has {ds.column_names}.")
        for key in task.text_keys:
            bad = next(((i, text) for i, text in enumerate(ds[key]) if not isinstance(text, str) or not text.strip()), None)
            if bad is not None:
                row, text = bad
                what = "is empty" if text is None or isinstance(text, str) else f"holds {text!r}, not text"
                raise ValueError(f"{where} row {row} (0-based, header excluded): column {key!r} {what}; every example "
                                 f"needs text in {list(task.text_keys)}.")
        if task.is_vector:  # K numbers per example or token: planted_task.check_labels, which knows K
            continue
        labels = np.asarray(ds["label"])
        if task.is_regression:
            if not np.issubdtype(labels.dtype, np.number) or not np.isfinite(labels.astype(float)).all():
                raise ValueError(f"{task_name} is a regression task; {split} labels must be finite numbers.")
            continue
        feature = ds.features["label"]
        if isinstance(feature, datasets.ClassLabel) and feature.num_classes != task.num_labels:
            raise ValueError(f"{task_name} has {task.num_labels} classes but {split} labels are {feature.names}.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{task_name} {split} labels must be class ids 0..{task.num_labels - 1}, got {labels.dtype}.")
        bad = sorted(set(np.unique(labels).tolist()) - set(range(task.num_labels)))
        if bad:
            hint = " (-1 marks an unlabelled test split)" if -1 in bad else ""
            raise ValueError(f"{task_name} has labels 0..{task.num_labels - 1}; {split} holds {bad}{hint}.")


TUNING_SPLIT_SEED = 20240  # fixed: the same rows are held out whatever the run's --seed


def hold_out_tuning_split(raw, fraction: float, max_examples: int) -> datasets.DatasetDict:
    """Move a fixed random `fraction` of the training rows (at most `max_examples`) into a `tuning` split, for
    hyper-parameter search (hpo.py) to score trials on rows they do not train on, leaving the dev splits for the
    final runs. The rest stays `train`, in its original order. Rows keep their training-set position as `idx`."""
    if fraction <= 0:
        return raw
    train = raw["train"]
    if "idx" not in train.column_names:
        train = train.add_column("idx", list(range(len(train))))
    size = min(int(round(fraction * len(train))), max_examples)
    if not 0 < size < len(train):
        raise ValueError(f"A tuning split of {size} examples out of {len(train)} training examples leaves nothing to "
                         "tune on or train on: change --tuning_split_fraction or --tuning_split_max.")
    shuffled = np.random.default_rng(TUNING_SPLIT_SEED).permutation(len(train))
    held_out = np.sort(shuffled[:size])
    kept = np.sort(shuffled[size:])
    raw["tuning"] = train.select(held_out)
    raw["train"] = train.select(kept)
    return raw


def tokenize_splits(raw, tokenizer, data_args, training_args) -> datasets.DatasetDict:
    """Token ids of every split (cached by datasets; the main process goes first, the others reuse its cache)."""
    task = GLUE_TASKS[data_args.task]

    def tokenize(batch):
        texts = [batch[key] for key in task.text_keys]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length,
                         padding="max_length" if data_args.pad_to_max_length else False)

    with training_args.main_process_first(desc="tokenisation"):
        return raw.map(tokenize, batched=True, load_from_cache_file=not data_args.overwrite_cache,
                       remove_columns=list(task.text_keys), desc="Tokenising")
