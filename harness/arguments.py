"""Every flag of run_glue_peft.py: four dataclasses (the fourth, GlueTrainingArguments, and the parser in
harness/training_arguments.py: they need transformers, which this module does not import), an optional YAML/JSON
config file, and the checks a user can fail before anything is loaded. Parsed arguments are what the user asked for and are never changed;
resolved numbers (budget, steps, schedules) live in `plan.RunPlan`."""

import argparse
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gradnorm_rank import GradNormRankConfig
from gradnorm_rank import choices as glora_choices
from gradnorm_rank.config import NEEDS_TRAINING, SHARE_SIGNALS
from harness.glue_tasks import GLUE_TASKS
from harness.records import FLAG_BLOCKS

if TYPE_CHECKING:
    from harness.training_arguments import GlueTrainingArguments

# GLoRA's choices as its config declares them (gradnorm_rank.GradNormRankConfig); the budget unit is every method's.
BUDGET_UNITS = glora_choices("budget_unit")
SIGNALS = glora_choices("signal")
SCORE_NORMS = glora_choices("score_norm")
SHUFFLE_BASES = glora_choices("shuffle_base")
ADAM_RULES = glora_choices("adam_rule")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
OWN_METADATA = {"methods", "arm"}  # field metadata of ours, not argparse's: the methods a flag is for, its ArmPart
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
METHODS = ("lora", "adalora", "glora", "eva")  # the arms of the comparison, in the order tables show them

# The six matrices of a transformer layer that the AdaLoRA paper adapts, as regexes on the module
# path after `.layer.<i>.`. Covers BERT-style (query/key/value) and DeBERTa-v2/v3 (query_proj, ...)
# names. Anchoring on the layer index keeps `attention.output.dense` out of `ffn_out` and the pooler
# and classifier out of everything.
MATRIX_PATTERNS = {
    "query": r"attention\.self\.(query|query_proj)",
    "key": r"attention\.self\.(key|key_proj)",
    "value": r"attention\.self\.(value|value_proj)",
    "attention_output": r"attention\.output\.dense",
    "ffn_in": r"intermediate\.dense",
    "ffn_out": r"output\.dense",
}
# Schedule points a user gives either in optimizer steps or as a fraction of the run, each with its own flag so that a
# value never changes meaning: {steps flag: (fraction flag, the fraction used when neither is given)}.
EVA_DEFAULT_RHO = 2.0  # peft's EvaConfig default
STEPS_OR_FRACTION = {"tinit": ("tinit_fraction", 0.1), "tfinal": ("tfinal_fraction", 0.2),
                     "glora_warmup_steps": ("glora_warmup_fraction", 1 / 3)}


@dataclass(frozen=True)
class ArmPart:
    """A flag's `arm` metadata: the flag changes what its method is (which signal, how it is scored or normalised,
    when it is collected), not a hyper-parameter a study tunes. Declared here once, it names the default arm
    (`plan.arm_label`: `text` formats a value other than the default, e.g. `cal{}` gives `glora_sensitivity_cal8`), is
    compared between the seeds compare_runs.py pools into one arm (`arm_settings`), and is never searched by hpo.py
    (search.identity.ARM_FLAGS). A `lead` part is named whenever another part of its method is, so that such a label
    always says it (GLoRA's signal: `glora_lora_b_per_rank_unit`)."""

    text: str = "{}"
    lead: bool = False

    def label(self, value) -> str:
        return self.text.format(value)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="microsoft/deberta-v3-base", metadata={"help": "Hub id or local directory of the pretrained encoder."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are cached."})


@dataclass
class DataArguments:
    task: str = field(metadata={"help": f"GLUE task: one of {', '.join(GLUE_TASKS)} (planted: the planted control, "
                                        "with --dataset_dir a folder of data.make_planted; docs/planted.md)."})
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
        default=False, metadata={"help": "Replace the run in output_dir: it moves to OUTPUT_DIR.replaced, deleted once this "
                                         "run has finished (kept if this run fails)."}
    )
    # ---- hyper-parameter search (hpo.py, docs/hpo.md) ----
    tuning_split_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the training data as a `tuning` split (fixed carve, independent of "
                          "--seed; taken before --max_train_samples). 0: none."},
    )
    tuning_split_max: int = field(default=2000, metadata={"help": "At most this many examples in the tuning split."})
    eval_split: str = field(
        default="dev",
        metadata={"help": "What the run is scored on: dev (evaluations during training on the task's first dev split, "
                          "the final one on every dev split) or tuning (every evaluation, the final one included, on "
                          "the tuning split only: metrics eval_tuning_*, predictions_tuning.csv; dev is never "
                          "evaluated)."},
    )
    hpo_record: str | None = field(
        default=None, metadata={"help": "A JSON file (written by hpo.py) copied into run_args.json as its `hpo` block."}
    )


@dataclass
class PeftArguments:
    method: str = field(default="lora", metadata={"help": f"One of {', '.join(METHODS)}."})
    lora_r: int = field(
        default=8, metadata={"help": "Rank of every adapted matrix for LoRA (GLoRA's and EVA's start: their budget is "
                                     "lora_r x matrices)."}
    )
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: scaling = alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch's input."})
    target_modules: list[str] = field(
        default_factory=lambda: list(MATRIX_PATTERNS),
        metadata={"help": f"Matrix types to adapt in every layer, from: {' '.join(MATRIX_PATTERNS)}."},
    )
    arm: str | None = field(
        default=None,
        metadata={"help": "The run's arm label: what compare_runs.py groups and prints by, and hpo.py names studies and "
                          "final runs after (letters, digits, '_', '-', '.'). Default: the method, '_params' under "
                          "--budget_unit params, '_pattern-<sha256[:8]>' with --rank_pattern, then each setting that "
                          "defines the method's arm where not at its default (glora_sensitivity_cal8, "
                          "glora_lora_b_per_rank_unit, eva_rho1). compare_runs.py never pools runs of one label whose "
                          "such settings differ."},
    )
    rank_pattern: str | None = field(
        default=None,
        metadata={"help": "LoRA with fixed per-matrix ranks from step 0: a JSON file, either a run's ranks.json (its "
                          "final_rank per module is replayed) or {module path: rank} naming every adapted matrix. "
                          "Every matrix keeps the scaling lora_alpha / lora_r (GLoRA's rule). Its budget is what it spends (R_total: "
                          "the sum of its ranks; under --budget_unit params: its parameters), unless --rank_budget or "
                          "--param_budget is given: then the pattern must not exceed it, and it is the recorded "
                          "budget.", "methods": ("lora",)},
    )
    budget_unit: str = field(
        default="rank",
        metadata={"help": f"What the budget counts: {', '.join(BUDGET_UNITS)}. rank: R_total = sum of ranks "
                          "(--rank_budget); params: adapter parameters sum_k r_k (d_in + d_out) (--param_budget)."},
    )
    param_budget: int | None = field(
        default=None,
        metadata={"help": "With --budget_unit params: adapter parameters over all adapted matrices "
                          "(default lora_r x sum of d_in + d_out, i.e. what uniform LoRA spends)."},
    )
    rank_budget: int | None = field(
        default=None, metadata={"help": "Total rank R_total over all adapted matrices (default lora_r x matrices)."}
    )
    init_r: int | None = field(
        default=None, metadata={"help": "AdaLoRA initial rank (default 1.5 x target rank).", "methods": ("adalora",)}
    )
    tinit: int | None = field(
        default=None,
        metadata={"help": "AdaLoRA optimizer steps without pruning, at the start (whole steps; or --tinit_fraction; "
                          "neither: --tinit_fraction 0.1).", "methods": ("adalora",)},
    )
    tinit_fraction: float | None = field(
        default=None,
        metadata={"help": "AdaLoRA's tinit as a fraction of the run's optimizer steps, in (0, 1), rounded to steps "
                          "(default 0.1 when --tinit is not given either).", "methods": ("adalora",)},
    )
    tfinal: int | None = field(
        default=None,
        metadata={"help": "AdaLoRA final optimizer steps with fixed ranks (whole steps; or --tfinal_fraction; neither: "
                          "--tfinal_fraction 0.2).", "methods": ("adalora",)},
    )
    tfinal_fraction: float | None = field(
        default=None,
        metadata={"help": "AdaLoRA's tfinal as a fraction of the run's optimizer steps, in (0, 1), rounded to steps "
                          "(default 0.2 when --tfinal is not given either).", "methods": ("adalora",)},
    )
    deltaT: int = field(
        default=10, metadata={"help": "AdaLoRA steps between two budget allocations.", "methods": ("adalora",)}
    )
    beta1: float = field(default=0.85, metadata={"help": "AdaLoRA EMA coefficient of sensitivity.", "methods": ("adalora",)})
    beta2: float = field(default=0.85, metadata={"help": "AdaLoRA EMA coefficient of uncertainty.", "methods": ("adalora",)})
    orth_reg_weight: float = field(
        default=0.1, metadata={"help": "AdaLoRA orthogonality regulariser weight.", "methods": ("adalora",)}
    )
    glora_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "GLoRA optimizer steps before reallocation (whole steps; or --glora_warmup_fraction; neither: "
                          "--glora_warmup_fraction 1/3).", "methods": ("glora",)},
    )
    glora_warmup_fraction: float | None = field(
        default=None,
        metadata={"help": "GLoRA's warm-up as a fraction of the run's optimizer steps, in (0, 1), rounded to steps "
                          "(default 1/3 when --glora_warmup_steps is not given either).", "methods": ("glora",)},
    )
    glora_calibration_steps: int | None = field(
        default=None,
        metadata={"help": "GLoRA timing: collect the signal over the first N training batches BEFORE training (no "
                          "optimizer step), allocate and resize, then train at those ranks from step 1 for the same "
                          "steps and in the same batch order; instead of the warm-up (not with --glora_warmup_steps or "
                          "--glora_warmup_fraction).", "methods": ("glora",), "arm": ArmPart("cal{}")},
    )
    glora_signal_seed: int = field(
        default=0, metadata={"help": "Seed of GLoRA's null signals random and shuffled.", "methods": ("glora",),
                             "arm": ArmPart("s{}")}
    )
    glora_shuffle_base: str = field(
        default="lora_b",
        metadata={"help": f"The signal --glora_signal shuffled permutes: {', '.join(SHUFFLE_BASES)}.",
                  "methods": ("glora",), "arm": ArmPart("base-{}")},
    )
    glora_signal_damping: float = field(
        default=1e-3,
        metadata={"help": "Relative damping of the covariances of --glora_signal whitened and kfac (> 0).",
                  "methods": ("glora",), "arm": ArmPart("damp{:g}")},
    )
    glora_top_r: int | None = field(
        default=None,
        metadata={"help": "r of --glora_signal activation_variance (default: the starting LoRA rank) and "
                          "update_concentration (default 1).", "methods": ("glora",), "arm": ArmPart("top{}")},
    )
    glora_beta: float = field(
        default=0.9, metadata={"help": "GLoRA EMA coefficient of the gradient norms.", "methods": ("glora",)}
    )
    glora_signal: str = field(
        default="lora_b", metadata={"help": f"GLoRA gradient signal: {', '.join(SIGNALS)}.", "methods": ("glora",),
                                    "arm": ArmPart(lead=True)}
    )
    glora_min_rank: int = field(
        default=1, metadata={"help": "GLoRA rank floor per matrix (peft cannot hold 0).", "methods": ("glora",),
                             "arm": ArmPart("min{}")}
    )
    glora_max_rank: int | None = field(
        default=None,
        metadata={"help": "GLoRA rank cap per matrix (default: none, the proposal's; the gradnorm_rank library's own "
                          "default is 4x the average rank, e.g. --glora_max_rank 32 at --lora_r 8). Recorded in "
                          "run_args.json (resolved.glora.max_rank) and ranks.json (glora.rank_cap).",
                  "methods": ("glora",), "arm": ArmPart("max{}")},
    )
    glora_score_norm: str = field(
        default="raw",
        metadata={"help": f"GLoRA score normalisation (ablation): {', '.join(SCORE_NORMS)}. raw = the gradient norm "
                          "(the proposal's); per_entry = divided by the square root of the entries it measures (RMS); "
                          "per_rank_unit = divided by a rank unit's cost d_in + d_out.", "methods": ("glora",),
                  "arm": ArmPart()},
    )
    glora_adam_rule: str = field(
        default="slice_bias_correction",
        metadata={"help": f"AdamW state of slices a resize adds: {', '.join(ADAM_RULES)}. slice_bias_correction = "
                          "zero moments with Adam's bias correction counted from the resize, per slice (a fresh "
                          "Adam's step size); inherit_step = zero moments under the tensor's old step count (an "
                          "ablation: bias correction then never applies to them, and their first update is about "
                          "3.2x a fresh Adam's after a 12,000-step warm-up).",
                  "methods": ("glora",), "arm": ArmPart()},
    )
    eva_rho: float = field(
        default=EVA_DEFAULT_RHO,
        metadata={"help": "EVA (peft's EvaConfig rho, >= 1): a matrix may get up to round(rho x lora_r) of the budget "
                          "lora_r x matrices, ranked by the explained variance of its inputs; 1: every matrix keeps "
                          "lora_r (no redistribution). Default: peft's 2.", "methods": ("eva",),
                  "arm": ArmPart("rho{:g}")},
    )
    eva_tau: float = field(
        default=0.99,
        metadata={"help": "EVA (peft's EvaConfig tau, in [0, 1]): a matrix's SVD has converged when its components' "
                          "cosine similarity between two consecutive batches reaches tau (peft's default).",
                  "methods": ("eva",), "arm": ArmPart("tau{:g}")},
    )
    eva_max_batches: int = field(
        default=200,
        metadata={"help": "EVA: at most this many forward passes over training batches (in dataset order, from the "
                          "first; the training batch size; peft's first pass, which finds matrices that share inputs, "
                          "included) before its SVD must have converged; more is an error.",
                  "methods": ("eva",)},
    )
    adalora_alpha_parity: bool = field(
        default=True,
        metadata={"help": "Give AdaLoRA lora_alpha x init_r / lora_r, so that its scaling alpha / init_r equals "
                          "LoRA's alpha / r at the start; False: peft's plain alpha.", "methods": ("adalora",)},
    )


@dataclass(frozen=True)
class RunArguments:
    """The four argument groups of one run, as parsed."""

    model: ModelArguments
    data: DataArguments
    peft: PeftArguments
    training: "GlueTrainingArguments"  # harness/training_arguments.py

    def asked(self) -> dict:
        """What the user asked for (run_args.json's first half)."""
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data),
                "peft": dataclasses.asdict(self.peft), "training": self.training.to_dict()}


FLAG_GROUPS = FLAG_BLOCKS  # RunArguments' fields: run_args.json's blocks of flags (records.RunArgs)

# The flags a resume may change (--resume_from_checkpoint): where the run writes, how it reports, logs and checkpoints,
# how fast it feeds data and how it evaluates in batches. None of them changes what is trained or which rows are
# scored. Every other flag defines the run and must equal the checkpoint's (`checkpoints.identity_of`): deny by
# default, so a flag added later is part of a run's identity without being listed anywhere.
RESUME_MAY_CHANGE = frozenset({
    # where the run writes and reads its caches
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "overwrite_cache", "cache_dir",
    # reporting and logging (the loss logged every N steps is a view of the run, not part of it)
    "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter", "log_level",
    "log_level_replica", "log_on_each_node", "disable_tqdm", "skip_memory_metrics", "include_num_input_tokens_seen",
    # checkpoints: how often and how many are kept
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    # evaluation batching (not what is evaluated) and data feeding (not which data, nor its order)
    "per_device_eval_batch_size", "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_multiprocessing_context",
    # the process, not the run: torchrun sets local_rank per process
    "local_rank", "ddp_timeout", "torch_empty_cache_steps",
})

# Keys of run_args.json (and so of a checkpoint's run_identity.json) added since the release 6534415, by block
# ("glora": run_args.json's resolved.glora), each read as its default in a record that lacks it
# (`checkpoints.as_resolved_now`): that release ran as these defaults do (GLoRA had only the warm-up timing and none of
# the signals these settings change; it never warned on a share). So its checkpoints resume when the flags are left at
# their defaults, and a value asked otherwise is named. A key a record lacks that is not listed here is named as absent.
ADDED_SINCE_RELEASE = {
    "peft": ("glora_calibration_steps", "glora_signal_seed", "glora_shuffle_base", "glora_signal_damping",
             "glora_top_r", "eva_rho", "eva_tau", "eva_max_batches"),
    "glora": ("warmup_fraction", "calibration_steps", "signal_seed", "shuffle_base", "signal_damping", "top_r",
              "warn_share"),
}


def added_since_release() -> dict:
    """{block: {key: default}} of ADDED_SINCE_RELEASE: the flags' defaults (PeftArguments) and GLoRA's settings'
    (GradNormRankConfig; plan.resolve_glora passes the flags' defaults on unchanged)."""
    defaults = {"peft": PeftArguments, "glora": GradNormRankConfig}
    return {block: {f.name: f.default for f in dataclasses.fields(defaults[block]) if f.name in keys}
            for block, keys in ADDED_SINCE_RELEASE.items()}


# The flags a study of hpo.py does not compare between its workers, trials and final runs: those a resume may change,
# and those hpo.py itself sets per trial or per final run (when and on which split a run evaluates, the record it hands
# a final run, whether checkpoints keep the optimizer). Every other flag defines a study (search/identity.py): deny by
# default, as for a resume.
STUDY_MAY_DIFFER = RESUME_MAY_CHANGE | frozenset({
    "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_split", "hpo_record", "save_only_model",
})


def whole_steps(flag: str):
    """argparse's type of a flag that counts optimizer steps: a whole number. A fraction is refused with the flag that
    takes one, so that `0.5` can never mean half the run on one flag and a step count on another."""
    fraction_flag = STEPS_OR_FRACTION[flag][0]

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number of optimizer steps, got {text!r}") from None
        if 0 < value < 1:
            raise argparse.ArgumentTypeError(f"{text} is not a whole number of optimizer steps; for a fraction of the "
                                             f"run give --{fraction_flag} {text}")
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of optimizer steps; give whole steps, or "
                                         f"--{fraction_flag} in (0, 1) for a fraction of the run")

    parse.__name__ = "whole steps"
    return parse


def canonical_targets(matrix_types) -> list:
    """--target_modules as the set of matrix types it names, in MATRIX_PATTERNS' order: a run adapts every matrix of
    each named type in model order (adapters.resolve_targets), so `value query` and `query value query` are the same
    run. Run and study identities compare this form."""
    order = list(MATRIX_PATTERNS)
    return sorted(set(matrix_types), key=lambda name: (order.index(name) if name in order else len(order), name))


def flag_fields() -> dict:
    """Every flag's dataclass field, by name."""
    from harness.training_arguments import GROUPS  # transformers' TrainingArguments: imported where flags are parsed

    return {f.name: f for group in GROUPS for f in dataclasses.fields(group) if f.init}


def parse_args(argv) -> RunArguments:
    """Dataclasses from an optional leading YAML/JSON config file, overridden by the flags that follow it."""
    from harness.training_arguments import FlagParser  # transformers' HfArgumentParser: imported where flags are parsed

    if argv and Path(argv[0]).suffix in CONFIG_SUFFIXES:
        argv = config_to_flags(read_config(argv[0]), argv[0]) + list(argv[1:])  # later flags win in argparse
    *groups, unknown = FlagParser().parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown}{did_you_mean(unknown[0])}; the flags are listed by --help.")
    return RunArguments(*groups)


def did_you_mean(name: str, prefix="--") -> str:
    close = difflib.get_close_matches(str(name).lstrip("-"), flag_fields(), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def read_config(path) -> dict:
    """A config file's mapping of flag names to values (YAML is a superset of JSON)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file (byte {error.start} is not UTF-8); a config file is YAML or JSON "
                         "text of flag names and values.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: not valid YAML/JSON ({getattr(error, 'problem', None) or error}).") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values (key: value lines), got a "
                         f"{type(config).__name__}.")
    return config


def config_to_flags(config: dict, path="config") -> list:
    """`--key value` flags from a config's mapping; keys must be flag names exactly."""
    fields = flag_fields()
    flags = []
    for key, value in config.items():
        if key not in fields:
            raise ValueError(f"{path}: unknown key {key!r}{did_you_mean(key, '')}; keys are flag names without '--' "
                             "(see --help).")
        if value is None:
            raise ValueError(f"{path}: {key} is null; give a value, or delete the line to use the default.")
        flags.append(f"--{key}")
        flags.extend(str(v) for v in value) if isinstance(value, list) else flags.append(str(value))
    return flags


def field_default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def arm_flags(method: str) -> dict:
    """{flag: (ArmPart, default)} of the flags that define an arm of `method` (their `arm` metadata), the lead part
    first, then in declaration order: the label's order."""
    fields = [f for f in dataclasses.fields(PeftArguments) if "arm" in f.metadata and method in f.metadata["methods"]]
    fields.sort(key=lambda f: not f.metadata["arm"].lead)
    return {f.name: (f.metadata["arm"], field_default(f)) for f in fields}


ARM_SETTING_FLAGS = tuple(dict.fromkeys(flag for method in METHODS for flag in arm_flags(method)))  # every method's


def arm_suffix(method: str, settings) -> str:
    """The part of the default arm label that names the arm-defining settings (`arm_settings`) at a value other than
    their default, each as its ArmPart formats it, in `arm_flags` order (`_sensitivity_cal8`); a lead part is named
    whenever another is (`_lora_b_per_rank_unit`) and recorded. '' at the defaults."""
    flags, values = arm_flags(method), dict(settings)
    changed = [flag for flag, (_, default) in flags.items() if flag in values and values[flag] != default]
    named = [flag for flag, (part, _) in flags.items() if flag in changed or (changed and part.lead and flag in values)]
    return "".join(f"_{flags[flag][0].label(values[flag])}" for flag in named)


def arm_settings(method: str, peft: dict) -> tuple:
    """((flag, value), ...) of the flags that define an arm of `method` (`arm_flags`), from a peft block: the parsed
    flags', or a run_args.json's. A key added since the release that a record lacks is read as its default, as the
    release ran it (ADDED_SINCE_RELEASE); any other key it lacks is left out: not recorded."""
    known = {**added_since_release()["peft"], **peft}
    return tuple((flag, known[flag]) for flag in arm_flags(method) if flag in known)


def check_method_flags(args: RunArguments):
    """A flag that belongs to other methods (its field's `methods` metadata) must keep its default."""
    method = args.peft.method
    groups = (args.model, args.data, args.peft, args.training)
    for f in (f for group in groups for f in dataclasses.fields(group) if "methods" in f.metadata):
        if method not in f.metadata["methods"]:
            value = getattr(next(g for g in groups if hasattr(g, f.name)), f.name)
            if value != field_default(f):
                raise ValueError(f"--{f.name} {value} has no effect with --method {method}: it applies to --method "
                                 f"{' or '.join(f.metadata['methods'])} only; drop it or change --method.")


def check_steps_or_fraction(peft: PeftArguments):
    """At most one flag of each steps/fraction pair (STEPS_OR_FRACTION); steps >= 0 (GLoRA's warm-up >= 1), fractions
    strictly between 0 and 1."""
    for flag, (fraction_flag, _) in STEPS_OR_FRACTION.items():
        steps, fraction = getattr(peft, flag), getattr(peft, fraction_flag)
        if steps is not None and fraction is not None:
            raise ValueError(f"--{flag} {steps} and --{fraction_flag} {fraction:g} are both given: give the optimizer "
                             "steps or the fraction of the run, not both.")
        least = 1 if flag == "glora_warmup_steps" else 0
        if steps is not None and steps < least:
            raise ValueError(f"--{flag} must be >= {least} optimizer steps, got {steps}.")
        if fraction is not None and not 0 < fraction < 1:
            raise ValueError(f"--{fraction_flag} is a fraction of the run in (0, 1), got {fraction:g}; for optimizer "
                             f"steps give --{flag}.")


def check_glora_timing(peft: PeftArguments):
    """--glora_calibration_steps replaces the warm-up; the signal settings' ranges."""
    measured = peft.glora_shuffle_base if peft.glora_signal == "shuffled" else peft.glora_signal
    if peft.glora_calibration_steps is not None:
        if peft.glora_calibration_steps < 1:
            raise ValueError(f"--glora_calibration_steps must be >= 1 batches, got {peft.glora_calibration_steps}.")
        given = [f for f in ("glora_warmup_steps", "glora_warmup_fraction") if getattr(peft, f) is not None]
        if given:
            raise ValueError(f"--glora_calibration_steps and --{given[0]} are both given: GLoRA's signal is collected "
                             "either before training (calibration) or in a warm-up, not both.")
        if measured in NEEDS_TRAINING:
            raise ValueError(f"--glora_signal {measured} reads the trained update: it needs the warm-up, not "
                             "--glora_calibration_steps.")
    if measured in SHARE_SIGNALS and peft.glora_score_norm != "raw":
        raise ValueError(f"--glora_signal {measured} gives shares or ratios, not norms: --glora_score_norm must be "
                         f"raw, got {peft.glora_score_norm}.")
    if not peft.glora_signal_damping > 0:
        raise ValueError(f"--glora_signal_damping must be > 0, got {peft.glora_signal_damping}.")
    if peft.glora_top_r is not None and peft.glora_top_r < 1:
        raise ValueError(f"--glora_top_r must be >= 1, got {peft.glora_top_r}.")


def check_eva(peft: PeftArguments):
    """EVA's flags: peft's own ranges (EvaConfig), and a rank budget, since EVA redistributes ranks."""
    if peft.eva_rho < 1:
        raise ValueError(f"--eva_rho must be >= 1 (1: no redistribution), got {peft.eva_rho:g}.")
    if not 0 <= peft.eva_tau <= 1:
        raise ValueError(f"--eva_tau is a cosine similarity threshold in [0, 1], got {peft.eva_tau:g}.")
    if peft.eva_max_batches < 3:
        raise ValueError(f"--eva_max_batches must be >= 3 (peft's pass that finds shared inputs, then two SVD steps "
                         f"to compare), got {peft.eva_max_batches}.")
    if peft.method == "eva" and peft.budget_unit != "rank":
        raise ValueError(f"--method eva redistributes ranks (peft's EVA), not parameters: --budget_unit "
                         f"{peft.budget_unit} is not supported with it.")


def check_args(args: RunArguments):
    """Errors a user can make on the command line, caught before anything is loaded."""
    from gradnorm_rank.signals import HOOKED_SIGNALS  # the signal classes (torch): imported where a run is checked

    data, peft, training = args.data, args.peft, args.training
    if data.task not in GLUE_TASKS:
        raise ValueError(f"Unknown --task {data.task!r}; choose from {', '.join(GLUE_TASKS)}.")
    if peft.method not in METHODS:
        raise ValueError(f"Unknown --method {peft.method!r}; choose from {', '.join(METHODS)}.")
    if peft.glora_signal not in SIGNALS:
        raise ValueError(f"Unknown --glora_signal {peft.glora_signal!r}; choose from {', '.join(SIGNALS)}.")
    for flag, value, choices in (("budget_unit", peft.budget_unit, BUDGET_UNITS),
                                 ("glora_score_norm", peft.glora_score_norm, SCORE_NORMS),
                                 ("glora_adam_rule", peft.glora_adam_rule, ADAM_RULES),
                                 ("glora_shuffle_base", peft.glora_shuffle_base, SHUFFLE_BASES)):
        if value not in choices:
            raise ValueError(f"Unknown --{flag} {value!r}; choose from {', '.join(choices)}.")
    if peft.budget_unit == "rank" and peft.param_budget is not None:
        raise ValueError("--param_budget counts parameters: it needs --budget_unit params (or give --rank_budget).")
    if peft.budget_unit == "params" and peft.rank_budget is not None:
        raise ValueError("--budget_unit params spends --param_budget; --rank_budget counts ranks and would be ignored.")
    if peft.param_budget is not None and peft.param_budget < 1:
        raise ValueError(f"--param_budget must be >= 1 (adapter parameters over all adapted matrices), got {peft.param_budget}.")
    if peft.arm is not None and not ARM_NAME.fullmatch(peft.arm):
        raise ValueError(f"--arm {peft.arm!r}: use letters, digits, '_', '-' and '.' only (it names folders and studies).")
    if peft.lora_r < 1:
        raise ValueError(f"--lora_r must be >= 1, got {peft.lora_r}.")
    if peft.rank_budget is not None and peft.rank_budget < 1:
        raise ValueError(f"--rank_budget must be >= 1 (the total rank over all adapted matrices), got {peft.rank_budget}; "
                         "leave it out for lora_r x matrices.")
    for flag, value in (("max_train_samples", data.max_train_samples), ("max_eval_samples", data.max_eval_samples)):
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be >= 1 (the first N examples), got {value}; leave it out to use them all.")
    check_method_flags(args)
    check_steps_or_fraction(peft)
    if training.trial_run and training.max_steps <= 0:
        raise ValueError("--trial_run scales schedules into a --max_steps run: give --max_steps N too (a run over "
                         "epochs is never a trial).")
    if not 0.0 <= peft.glora_beta < 1.0:
        raise ValueError(f"--glora_beta must be in [0, 1), got {peft.glora_beta}.")
    check_eva(peft)
    if peft.glora_min_rank < 1:
        raise ValueError(f"--glora_min_rank must be >= 1 (a LoRA layer cannot have rank 0), got {peft.glora_min_rank}.")
    if peft.glora_max_rank is not None and peft.glora_max_rank < peft.glora_min_rank:
        raise ValueError(f"--glora_max_rank must be >= --glora_min_rank {peft.glora_min_rank}, got {peft.glora_max_rank}.")
    if GLUE_TASKS[data.task].is_vector and (data.train_file or not data.dataset_dir):
        raise ValueError(f"--task {data.task} reads a planting folder written by data.make_planted: give --dataset_dir "
                         "OUT (not --train_file/--validation_file).")
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
    if peft.glora_signal in HOOKED_SIGNALS and training.gradient_checkpointing:
        raise ValueError(f"--glora_signal {peft.glora_signal} hooks the forward pass; gradient checkpointing would run "
                         "it twice.")
    check_glora_timing(peft)
    if not 0 <= data.tuning_split_fraction < 1:
        raise ValueError(f"--tuning_split_fraction must be in [0, 1), got {data.tuning_split_fraction}.")
    if data.eval_split not in ("dev", "tuning"):
        raise ValueError(f"--eval_split is dev or tuning, got {data.eval_split!r}.")
    if data.eval_split == "tuning" and not 0 < data.tuning_split_fraction < 1:
        raise ValueError("--eval_split tuning needs a tuning split: --tuning_split_fraction in (0, 1).")
    if training.average_tokens_across_devices:
        raise ValueError("--average_tokens_across_devices True doubles the loss of these models under DDP.")
