"""Every flag of run_glue_peft.py: four dataclasses, an optional YAML/JSON config file, and the checks a user
can fail before anything is loaded. Parsed arguments are what the user asked for and are never changed;
resolved numbers (budget, steps, schedules) live in `plan.RunPlan`."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from adapters import MATRIX_PATTERNS, METHODS
from glora_callback import SIGNALS
from glue_tasks import GLUE_TASKS

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="microsoft/deberta-v3-base", metadata={"help": "Hub id or local directory of the pretrained encoder."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})


@dataclass
class DataArguments:
    task: str = field(metadata={"help": f"GLUE task: one of {', '.join(GLUE_TASKS)}."})
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

    def __post_init__(self):
        # transformers fills a missing output_dir with "trainer_output"; keep None so that the plan can name the
        # run's directory after its task, method, budget and seed.
        unset = self.output_dir is None
        super().__post_init__()
        if unset:
            self.output_dir = None


@dataclass(frozen=True)
class RunArguments:
    """The four argument groups of one run, as parsed."""

    model: ModelArguments
    data: DataArguments
    peft: PeftArguments
    training: GlueTrainingArguments

    def asked(self) -> dict:
        """What the user asked for (run_args.json's first half)."""
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "peft": dataclasses.asdict(self.peft), "training": self.training.to_dict()}


def parse_args(argv) -> RunArguments:
    """Dataclasses from an optional leading YAML/JSON config file, overridden by the flags that follow it."""
    parser = HfArgumentParser((ModelArguments, DataArguments, PeftArguments, GlueTrainingArguments))
    if argv and Path(argv[0]).suffix in CONFIG_SUFFIXES:
        config = yaml.safe_load(Path(argv[0]).read_text()) or {}  # YAML is a superset of JSON
        argv = config_to_flags(config) + list(argv[1:])  # later flags win in argparse
    return RunArguments(*parser.parse_args_into_dataclasses(args=argv))


def config_to_flags(config: dict) -> list:
    flags = []
    for key, value in config.items():
        flags.append(f"--{key}")
        flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
    return flags


def check_args(args: RunArguments):
    """Errors a user can make on the command line, caught before anything is loaded."""
    data, peft, training = args.data, args.peft, args.training
    if data.task not in GLUE_TASKS:
        raise ValueError(f"Unknown --task {data.task!r}; choose from {', '.join(GLUE_TASKS)}.")
    if peft.method not in METHODS:
        raise ValueError(f"Unknown --method {peft.method!r}; choose from {', '.join(METHODS)}.")
    if peft.glora_signal not in SIGNALS:
        raise ValueError(f"Unknown --glora_signal {peft.glora_signal!r}; choose from {', '.join(SIGNALS)}.")
    if peft.lora_r < 1:
        raise ValueError(f"--lora_r must be >= 1, got {peft.lora_r}.")
    if (data.train_file is None) != (data.validation_file is None):
        raise ValueError("Give both --train_file and --validation_file, or neither.")
    if data.task == "mnli" and data.validation_file and not data.validation_mismatched_file:
        raise ValueError("MNLI is evaluated on matched and mismatched: give --validation_mismatched_file too.")
    if peft.method == "glora" and (training.deepspeed or training.fsdp):
        raise ValueError(
            "--method glora resizes LoRA layers mid-training, which is implemented for single-device and DDP runs "
            "only; DeepSpeed and FSDP are not supported."
        )
    if peft.method == "glora" and training.load_best_model_at_end:
        raise ValueError("--load_best_model_at_end cannot reload a checkpoint from before GLoRA's resize (other shapes).")
    if peft.glora_signal == "delta" and training.gradient_checkpointing:
        raise ValueError("--glora_signal delta hooks the forward pass; gradient checkpointing would run it twice.")
    if training.average_tokens_across_devices:
        raise ValueError("--average_tokens_across_devices True doubles the loss of these models under DDP.")
