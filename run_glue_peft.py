#!/usr/bin/env python
"""Fine-tune an encoder on a GLUE task with LoRA, AdaLoRA or GLoRA at the same rank budget.

    accelerate launch run_glue_peft.py --method glora --task mnli
    accelerate launch run_glue_peft.py configs/glora_mnli.yaml --max_steps 2 --max_eval_samples 64

A YAML/JSON config file may come first; flags after it override its values. See README.md.
"""

import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
import yaml
from datasets import load_dataset
from peft import get_peft_model
from torch.utils.data import SequentialSampler
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, has_length

from adapters import (
    MATRIX_PATTERNS,
    AdaLoraCallback,
    build_peft_config,
    current_ranks,
    head_modules,
    rank_record,
    resolve_targets,
    trainable_parameters,
)
from glora_callback import SIGNALS, GLoRACallback
from glue_tasks import glue_metrics, split_suffix, task_to_keys
from lora_resize import carry_optimizer_state

logger = logging.getLogger(__name__)
METHODS = ("lora", "adalora", "glora")
DATA_EXTENSIONS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="microsoft/deberta-v3-base", metadata={"help": "Hub id or local directory of the pretrained encoder."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})


@dataclass
class DataArguments:
    task: str = field(metadata={"help": f"GLUE task: one of {', '.join(task_to_keys)}."})
    dataset_name: str = field(default="nyu-mll/glue", metadata={"help": "Hub dataset with GLUE's configs and schema."})
    dataset_dir: str | None = field(
        default=None,
        metadata={"help": "Read DIR/<task>/<split>.{parquet,csv,jsonl} (HF glue schema) instead of the hub."},
    )
    train_file: str | None = field(default=None, metadata={"help": "A csv/json/parquet training file."})
    validation_file: str | None = field(
        default=None, metadata={"help": "A csv/json/parquet validation file (MNLI: the matched split)."}
    )
    validation_mismatched_file: str | None = field(
        default=None, metadata={"help": "MNLI only: the mismatched validation file, with --validation_file."}
    )
    max_seq_length: int = field(default=256, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to max_seq_length (default: pad each batch to its longest)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use the first N examples of each dev split."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenise instead of using the datasets cache."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds a finished run."}
    )


@dataclass
class PeftArguments:
    method: str = field(default="lora", metadata={"help": f"One of {', '.join(METHODS)}."})
    lora_r: int = field(default=8, metadata={"help": "Rank of every adapted matrix for LoRA (GLoRA's start)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: scaling = alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    target_modules: list[str] = field(
        default_factory=lambda: list(MATRIX_PATTERNS),
        metadata={"help": f"Matrix types to adapt in every layer, from: {' '.join(MATRIX_PATTERNS)}."},
    )
    rank_budget: int | None = field(
        default=None, metadata={"help": "Total rank R_total over all adapted matrices (default lora_r x matrices)."}
    )
    init_r: int | None = field(default=None, metadata={"help": "AdaLoRA initial rank (default 1.5 x target rank)."})
    tinit: float = field(default=0.1, metadata={"help": "AdaLoRA warm-up steps without pruning (< 1: fraction)."})
    tfinal: float = field(default=0.2, metadata={"help": "AdaLoRA final steps with fixed ranks (< 1: fraction)."})
    deltaT: int = field(default=10, metadata={"help": "AdaLoRA steps between two budget allocations."})
    beta1: float = field(default=0.85, metadata={"help": "AdaLoRA EMA coefficient of sensitivity."})
    beta2: float = field(default=0.85, metadata={"help": "AdaLoRA EMA coefficient of uncertainty."})
    orth_reg_weight: float = field(default=0.1, metadata={"help": "AdaLoRA orthogonality regulariser weight."})
    glora_warmup_steps: float = field(
        default=1 / 3, metadata={"help": "GLoRA optimizer steps before reallocation (< 1: fraction of training)."}
    )
    glora_beta: float = field(default=0.9, metadata={"help": "GLoRA EMA coefficient of the gradient norms."})
    glora_signal: str = field(default="lora_b", metadata={"help": f"GLoRA gradient signal: {', '.join(SIGNALS)}."})
    glora_min_rank: int = field(default=1, metadata={"help": "GLoRA rank floor per matrix (peft cannot hold 0)."})
    glora_max_rank: int | None = field(default=None, metadata={"help": "GLoRA rank cap per matrix."})


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """TrainingArguments with the seed experiment's defaults."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where results go (default outputs/<task>/<method>_r<budget>_seed<seed>)."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored if max_steps > 0)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=1000, metadata={"help": "LR warm-up: steps (int) or a ratio in [0, 1)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate during training."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write checkpoints."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every N steps."})
    average_tokens_across_devices: bool = field(
        default=False, metadata={"help": "Must stay False: True doubles BERT-style losses under DDP (transformers 5)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every adapter parameter is used each step, so DDP need not search."}
    )


def parse_args(argv):
    """Dataclasses from an optional leading YAML/JSON config file, overridden by the flags that follow it."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PeftArguments, GlueTrainingArguments))
    if argv and Path(argv[0]).suffix in (".yaml", ".yml", ".json"):
        config = yaml.safe_load(Path(argv[0]).read_text()) or {}  # YAML is a superset of JSON
        argv = config_to_flags(config) + argv[1:]  # later flags win in argparse
    return parser.parse_args_into_dataclasses(args=argv)


def config_to_flags(config: dict) -> list:
    flags = []
    for key, value in config.items():
        flags.append(f"--{key}")
        flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
    return flags


def check_args(data_args, peft_args, training_args):
    """Errors a user can make on the command line, caught before anything is loaded."""
    if data_args.task not in task_to_keys:
        raise ValueError(f"Unknown --task {data_args.task!r}; choose from {', '.join(task_to_keys)}.")
    if peft_args.method not in METHODS:
        raise ValueError(f"Unknown --method {peft_args.method!r}; choose from {', '.join(METHODS)}.")
    if peft_args.glora_signal not in SIGNALS:
        raise ValueError(f"Unknown --glora_signal {peft_args.glora_signal!r}; choose from {', '.join(SIGNALS)}.")
    if peft_args.lora_r < 1:
        raise ValueError(f"--lora_r must be >= 1, got {peft_args.lora_r}.")
    if (data_args.train_file is None) != (data_args.validation_file is None):
        raise ValueError("Give both --train_file and --validation_file, or neither.")
    if data_args.task == "mnli" and data_args.validation_file and not data_args.validation_mismatched_file:
        raise ValueError("MNLI is evaluated on matched and mismatched: give --validation_mismatched_file too.")
    if peft_args.method == "glora" and (training_args.deepspeed or training_args.fsdp):
        raise ValueError(
            "--method glora resizes LoRA layers mid-training, which is implemented for single-device and DDP runs "
            "only; DeepSpeed and FSDP are not supported."
        )
    if peft_args.method == "glora" and training_args.load_best_model_at_end:
        raise ValueError("--load_best_model_at_end cannot reload a checkpoint from before GLoRA's resize (other shapes).")
    if peft_args.glora_signal == "delta" and training_args.gradient_checkpointing:
        raise ValueError("--glora_signal delta hooks the forward pass; gradient checkpointing would run it twice.")
    if training_args.average_tokens_across_devices:
        raise ValueError("--average_tokens_across_devices True doubles the loss of these models under DDP.")


def load_raw_datasets(data_args, model_args):
    """DatasetDict with `train` and the task's evaluation splits, from files or the hub."""
    task = task_to_keys[data_args.task]
    splits = ("train",) + task.eval_splits
    if data_args.dataset_dir:
        files = {}
        for split in splits:
            candidates = [Path(data_args.dataset_dir, data_args.task, split + ext) for ext in DATA_EXTENSIONS]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(f"No {split} split for {data_args.task}: looked for {[str(p) for p in candidates]}.")
            files[split] = str(found[0])
        return load_files(files)
    if data_args.train_file:
        eval_files = [data_args.validation_file, data_args.validation_mismatched_file][: len(task.eval_splits)]
        return load_files(dict(zip(splits, [data_args.train_file] + eval_files)))
    return load_dataset(data_args.dataset_name, data_args.task, cache_dir=model_args.cache_dir)


def load_files(files: dict):
    """One split per file, loaded separately so that a split with other columns reaches `check_data`'s message."""
    loaded = datasets.DatasetDict()
    for split, path in files.items():
        kind = DATA_EXTENSIONS.get(Path(path).suffix)
        if kind is None:
            raise ValueError(f"{path}: data files must end in one of {list(DATA_EXTENSIONS)}.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"No such data file: {path}")
        loaded[split] = load_dataset(kind, data_files={split: path}, split=split)
    return loaded


def check_data(raw, task_name):
    """Columns and labels must fit the task, or we stop before training with the reason."""
    task = task_to_keys[task_name]
    for split, ds in raw.items():
        missing = [c for c in task.text_keys + ("label",) if c not in ds.column_names]
        if missing:
            raise ValueError(f"{task_name} {split} split lacks column(s) {missing}; it has {ds.column_names}.")
        labels = np.asarray(ds["label"])
        if task.num_labels == 1:
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


def optimizer_steps(num_examples, training_args, world_size) -> int:
    """Optimizer steps the Trainer will take: the same arithmetic as Trainer.set_initial_training_values with
    Accelerate's even batch sharding. Checked against the Trainer's own count when training starts."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    batches = math.ceil(math.ceil(num_examples / training_args.per_device_train_batch_size) / world_size)
    per_epoch = max(math.ceil(batches / training_args.gradient_accumulation_steps), 1)
    return math.ceil(training_args.num_train_epochs * per_epoch)


def steps_from(value: float, total_steps: int) -> int:
    """A step count given as steps (>= 1) or as a fraction of training (< 1)."""
    return int(round(value * total_steps)) if 0 < value < 1 else int(value)


def glora_warmup(peft_args, training_args, total_steps) -> int:
    warmup = steps_from(peft_args.glora_warmup_steps, total_steps)
    if warmup < 1:
        raise ValueError(f"--glora_warmup_steps must be positive, got {peft_args.glora_warmup_steps}.")
    if warmup >= total_steps:
        if training_args.max_steps > 0:
            # A trial run must still exercise the reallocation and the resize.
            clamped = max(1, total_steps // 2)
            logger.warning(f"GLoRA warm-up {warmup} >= max_steps {total_steps}: trial run, reallocating at step {clamped}.")
            return clamped
        raise ValueError(
            f"GLoRA warm-up of {warmup} steps never ends in a run of {total_steps} optimizer steps: lower "
            "--glora_warmup_steps (a fraction like 0.33 is relative to the run)."
        )
    return warmup


class GlueTrainer(Trainer):
    """Trainer that feeds GLoRA the true gradient of each step and rebuilds the optimizer after it resizes layers."""

    def __init__(self, *args, glora: GLoRACallback | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Sequence classifiers take **kwargs, so transformers assumes they normalise the loss by the token count
        # it passes them; they ignore it and return a batch mean. Left True, the loss is then never divided by the
        # accumulation steps (8 x 2 gives twice the gradient of 16 x 1) and is multiplied by the world size when
        # tokens are averaged across devices.
        self.model_accepts_loss_kwargs = False
        self.glora = glora
        self._rebuilt_ddp = None
        if glora is not None:
            glora.on_resize = self.rebuild_after_resize
            self.add_callback(glora)

    def _get_eval_sampler(self, eval_dataset):
        # transformers also groups (and seed-shuffles) evaluation batches under --train_sampling_strategy
        # group_by_length; evaluate in dataset order so that each prediction lines up with its example's idx.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None  # None: accelerate shards in order

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._rebuilt_ddp is not None:
            # The loop still holds the DDP wrapper from before the resize, which does not know the new
            # parameters; use ours and skip its all-reduce on non-final micro-batches as the loop would.
            model = self._rebuilt_ddp
            if not self.accelerator.sync_gradients:
                with model.no_sync():
                    return super().training_step(model, inputs, num_items_in_batch)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.glora is not None and self.accelerator.sync_gradients:
            # Last micro-batch of the step: gradients are summed, all-reduced, not yet clipped or unscaled.
            scaler = self.accelerator.scaler
            self.glora.observe_gradients(scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0)
        return loss

    def rebuild_after_resize(self, resized):
        """New optimizer and scheduler over the resized model, AdamW state and LR schedule carried over."""
        old_optimizer = self.optimizer
        old_state = old_optimizer.optimizer.state if hasattr(old_optimizer, "optimizer") else old_optimizer.state
        old_scheduler = self.lr_scheduler
        # Drop the stale optimizer from accelerate, or it keeps stepping/zeroing dead parameters.
        self.accelerator._optimizers = [o for o in self.accelerator._optimizers if o is not old_optimizer]

        self.optimizer = None
        self.create_optimizer()
        carry_optimizer_state(old_state, self.optimizer, resized)
        self.optimizer = self.accelerator.prepare_optimizer(self.optimizer)

        self.lr_scheduler = None
        self.create_scheduler(num_training_steps=self.state.max_steps, optimizer=self.optimizer)
        self.lr_scheduler.load_state_dict(old_scheduler.state_dict())
        for group, lr in zip(self.optimizer.param_groups, old_scheduler.get_last_lr()):
            group["lr"] = lr
        self.callback_handler.optimizer = self.optimizer
        self.callback_handler.lr_scheduler = self.lr_scheduler

        if isinstance(self.model_wrapped, torch.nn.parallel.DistributedDataParallel):
            self._rebuilt_ddp = self.model_wrapped = rewrap_ddp(self.model_wrapped, self.model)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.glora is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            Path(folder, "glora_state.json").write_text(json.dumps(self.glora.state_dict(), indent=1))

    def train(self, resume_from_checkpoint=None, **kwargs):
        if self.glora is not None and resume_from_checkpoint:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                if resume_from_checkpoint is None:
                    raise ValueError(f"No checkpoint to resume from in {self.args.output_dir}.")
            state_file = Path(resume_from_checkpoint, "glora_state.json")
            if not state_file.is_file():
                raise FileNotFoundError(f"{state_file} is missing: this checkpoint was not written by a GLoRA run.")
            # Before the Trainer loads weights and optimizer state: they have the checkpoint's ranks.
            self.glora.load_state_dict(json.loads(state_file.read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def rewrap_ddp(old, module):
    """A DDP wrapper over the resized model with the old wrapper's settings (its constructor syncs weights)."""
    return torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=old.device_ids,
        output_device=old.output_device,
        broadcast_buffers=old.broadcast_buffers,
        find_unused_parameters=old.find_unused_parameters,
        gradient_as_bucket_view=old.gradient_as_bucket_view,
        static_graph=old.static_graph,
    )


class ScheduleCheck(TrainerCallback):
    """AdaLoRA and GLoRA were configured from a predicted step count; stop at once if the Trainer disagrees."""

    def __init__(self, expected_steps):
        self.expected_steps = expected_steps

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps != self.expected_steps:
            raise RuntimeError(f"Trainer plans {state.max_steps} optimizer steps, the schedule assumed {self.expected_steps}.")


def write_json_atomic(path, obj):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def main(argv=None):
    model_args, data_args, peft_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    check_args(data_args, peft_args, training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity_warning()
    task = task_to_keys[data_args.task]
    world_size = training_args.world_size
    set_seed(training_args.seed)

    # ---- data ----
    raw = load_raw_datasets(data_args, model_args)
    check_data(raw, data_args.task)
    if data_args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, len(raw["train"]))))
    for split in task.eval_splits:
        if data_args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(data_args.max_eval_samples, len(raw[split]))))
        if "idx" not in raw[split].column_names:
            raw[split] = raw[split].add_column("idx", list(range(len(raw[split]))))

    # ---- model ----
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, num_labels=task.num_labels, finetuning_task=data_args.task, cache_dir=model_args.cache_dir
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir
    )
    targets = resolve_targets(model, peft_args.target_modules)
    head = head_modules(model)
    peft_args.rank_budget = peft_args.rank_budget or peft_args.lora_r * len(targets)
    if peft_args.method == "lora" and peft_args.rank_budget != peft_args.lora_r * len(targets):
        raise ValueError(f"LoRA spends lora_r x matrices = {peft_args.lora_r * len(targets)}; --rank_budget {peft_args.rank_budget} differs.")
    if peft_args.method == "adalora":
        if peft_args.rank_budget % len(targets):
            raise ValueError(f"AdaLoRA needs a budget divisible by the {len(targets)} matrices; got {peft_args.rank_budget}.")
        peft_args.init_r = peft_args.init_r or math.ceil(1.5 * peft_args.rank_budget / len(targets))

    total_steps = optimizer_steps(len(raw["train"]), training_args, world_size)
    if peft_args.method == "adalora":
        tinit, tfinal = steps_from(peft_args.tinit, total_steps), steps_from(peft_args.tfinal, total_steps)
        if tinit + tfinal >= total_steps:
            raise ValueError(
                f"AdaLoRA's schedule does not fit: tinit {tinit} + tfinal {tfinal} >= {total_steps} optimizer steps."
            )
        peft_args.tinit, peft_args.tfinal = tinit, tfinal
    peft_config = build_peft_config(peft_args, targets, head, total_steps)
    model = get_peft_model(model, peft_config)
    initial_ranks = current_ranks(model)
    glora = None
    if peft_args.method == "glora":
        peft_args.glora_warmup_steps = glora_warmup(peft_args, training_args, total_steps)
        glora = GLoRACallback(
            model, peft_args.rank_budget, peft_args.glora_warmup_steps, peft_args.glora_beta,
            peft_args.glora_signal, peft_args.glora_min_rank, peft_args.glora_max_rank,
        )
    sizes = trainable_parameters(model, head)
    logger.info(f"{peft_args.method}: {len(targets)} adapted matrices, R_total {peft_args.rank_budget}, {sizes}")

    # ---- output directory: refuse to mix with a finished run ----
    if training_args.output_dir is None:
        training_args.output_dir = f"outputs/{data_args.task}/{peft_args.method}_r{peft_args.rank_budget}_seed{training_args.seed}"
    output_dir = Path(training_args.output_dir)
    if (output_dir / "all_results.json").exists():
        if not data_args.overwrite_output_dir:
            raise FileExistsError(f"{output_dir} holds a finished run; pass --overwrite_output_dir or another --output_dir.")
        if training_args.should_save:
            (output_dir / "all_results.json").unlink()  # until this run finishes, the directory is unfinished
    if training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        run_args = {"model": asdict(model_args), "data": asdict(data_args), "peft": asdict(peft_args)}
        write_json_atomic(output_dir / "run_args.json", {**run_args, "training": training_args.to_dict(), "world_size": world_size})

    # ---- tokenisation (cached by datasets; the main process goes first, the others reuse its cache) ----
    def tokenize(batch):
        texts = [batch[key] for key in task.text_keys]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length,
                         padding="max_length" if data_args.pad_to_max_length else False)

    with training_args.main_process_first(desc="tokenisation"):
        encoded = raw.map(tokenize, batched=True, load_from_cache_file=not data_args.overwrite_cache,
                          remove_columns=list(task.text_keys), desc="Tokenising")
    if data_args.pad_to_max_length:
        collator = default_data_collator
    else:
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)

    def compute_metrics(prediction):
        return glue_metrics(data_args.task, prediction.predictions, prediction.label_ids)

    callbacks = [ScheduleCheck(total_steps)]
    adalora_callback = AdaLoraCallback(model) if peft_args.method == "adalora" else None
    if adalora_callback:
        callbacks.append(adalora_callback)
    trainer = GlueTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded[task.eval_splits[0]],
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        glora=glora,
    )

    # ---- train ----
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    results = dict(train_result.metrics)
    trainer.save_model()  # the adapter, with its final ranks in rank_pattern
    trainer.save_state()

    # ---- evaluate: metrics and per-example predictions of every dev split ----
    for split in task.eval_splits:
        output = trainer.predict(encoded[split], metric_key_prefix="eval")
        results.update({f"{k}{split_suffix[split]}": v for k, v in output.metrics.items()})
        if training_args.should_save:
            if not np.allclose(output.label_ids.reshape(-1), np.asarray(raw[split]["label"], dtype=float), atol=1e-6):
                raise RuntimeError(f"{split}: predictions are not in dataset order; predictions_{split}.csv would "
                                   "pair them with the wrong idx")
            predicted = output.predictions.reshape(-1) if task.num_labels == 1 else output.predictions.argmax(-1)
            lines = ["idx,label,prediction"] + [
                f"{i},{label},{p}" for i, label, p in zip(raw[split]["idx"], output.label_ids.tolist(), predicted.tolist())
            ]
            (output_dir / f"predictions_{split}.csv").write_text("\n".join(lines) + "\n")

    # ---- record ----
    record = rank_record(model, peft_args.method, peft_args.rank_budget, initial_ranks)
    hook_seconds = 0.0
    if glora is not None:
        for name, score in glora.scores().items():
            record["modules"][name]["score"] = score
        hook_seconds = glora.hook_seconds + glora.resize_seconds
        record["glora"] = {
            "signal": glora.signal, "beta": glora.beta, "warmup_steps": glora.warmup_steps,
            "reallocation_step": glora.reallocation_step, "hook_seconds": glora.hook_seconds,
            "resize_seconds": glora.resize_seconds,
            # Equal only if ranks move between matrices of equal d_in + d_out: a rank unit of an FFN matrix
            # (768 + 3072 in DeBERTa-base) costs 2.5x one of an attention matrix (768 + 768).
            "adapter_params_before_resize": sum(m["initial_rank"] * (m["d_in"] + m["d_out"]) for m in record["modules"].values()),
            "adapter_params_after_resize": sum(m["final_rank"] * (m["d_in"] + m["d_out"]) for m in record["modules"].values()),
        }
    if adalora_callback is not None:
        hook_seconds = adalora_callback.hook_seconds
        schedule = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "total_step")
        record["adalora"] = {**{key: getattr(peft_config, key) for key in schedule}, "hook_seconds": hook_seconds}
    results.update(
        task=data_args.task, method=peft_args.method, seed=training_args.seed, rank_budget=peft_args.rank_budget,
        num_adapted_matrices=len(targets), method_hook_seconds=hook_seconds, **trainable_parameters(model, head),
        final_rank_total=sum(m["final_rank"] for m in record["modules"].values()),
    )
    if training_args.should_save:
        write_json_atomic(output_dir / "ranks.json", record)
        log_to_wandb(training_args, record)
        write_json_atomic(output_dir / "all_results.json", results)  # last: marks the run finished
    logger.info(f"results: {json.dumps(results, indent=1, default=str)}")
    return results


def log_to_wandb(training_args, record):
    """Final ranks (and GLoRA's scores) as a W&B table, when the run reports to W&B."""
    if "wandb" not in (training_args.report_to or []):
        return
    import wandb

    if wandb.run is None:
        return
    columns = ["module", "layer", "matrix", "d_in", "d_out", "initial_rank", "final_rank", "score"]
    rows = [[name] + [m.get(c) for c in columns[1:]] for name, m in record["modules"].items()]
    wandb.log({"rank_allocation": wandb.Table(columns=columns, data=rows)})
    wandb.run.summary["final_ranks"] = {name: m["final_rank"] for name, m in record["modules"].items()}


if __name__ == "__main__":
    main()
