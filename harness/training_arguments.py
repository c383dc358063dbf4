"""The part of run_glue_peft.py's flags that needs transformers: GlueTrainingArguments (its TrainingArguments with the
proposal's defaults) and FlagParser, the parser of all four groups. The other three groups, the config file and the
checks live in harness/arguments.py, which imports this module only when it parses: the tools that read records
(compare_runs.py, allocation_quality.py, launch/*) use arguments.py without importing torch and transformers."""

import copy
import re
import types
from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from harness.arguments import OWN_METADATA, STEPS_OR_FRACTION, DataArguments, ModelArguments, PeftArguments, whole_steps


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """TrainingArguments with the proposal's defaults."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where results go (default outputs/<task>/<method>_r<budget>_seed<seed>)."}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of AdamW."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size per device for evaluation."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (ignored if max_steps > 0)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=1000, metadata={"help": "LR warm-up: steps (int) or a ratio in [0, 1)."})
    trial_run: bool | None = field(
        default=None,
        metadata={"help": "A trial of the code path: a schedule that does not fit the run (an LR warm-up, AdaLoRA's "
                          "tinit + tfinal or GLoRA's warm-up in steps) is scaled into it, each with a log line. Unset: "
                          "on for a --max_steps run (logged), off for a run over epochs; --trial_run false makes such "
                          "a schedule an error. Asked and resolved values are both recorded in run_args.json: "
                          "compare_runs.py compares trial runs only with trial runs.",
                  "nargs": "?", "const": True},  # a bare --trial_run is true (argparse's own keywords)
    )
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


GROUPS = (ModelArguments, DataArguments, PeftArguments, GlueTrainingArguments)


class FlagParser(HfArgumentParser):
    """HfArgumentParser without prefix matching (`--glora_warmup` is not `--glora_warmup_steps`), which passes a
    field's metadata to argparse except our own entries (OWN_METADATA), parses the step flags of
    STEPS_OR_FRACTION as whole steps only, and reports a bad value in one line (ValueError) instead of argparse's
    usage block."""

    def __init__(self):
        super().__init__(GROUPS, allow_abbrev=False)

    @staticmethod
    def _parse_dataclass_field(parser, field):
        if OWN_METADATA & set(field.metadata) or field.name in STEPS_OR_FRACTION:
            field = copy.copy(field)
            field.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k not in OWN_METADATA})
            if field.name in STEPS_OR_FRACTION:
                field.type = whole_steps(field.name)  # HfArgumentParser passes a plain callable on as argparse's type
        HfArgumentParser._parse_dataclass_field(parser, field)

    def error(self, message):
        # argparse's "argument --lora_r/--lora-r: invalid int value: '1.5'" as "--lora_r: invalid int value: '1.5'."
        flag = re.match(r"argument (--\w+)(?:/--[\w-]+)?: (.*)", message)
        raise ValueError(f"{flag[1]}: {flag[2]}." if flag else f"{message}; the flags are listed by --help.")
