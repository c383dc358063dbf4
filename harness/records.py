"""A run folder's three records, each written and read here only, and the evaluation log's name and reader
(eval_log.EvalLog writes it; kept here so that launch/choose_rates.py reads it without importing torch):

    run_args.json     RunArgs     what was asked and what it resolved to; written before training starts
    ranks.json        RankRecord  per adapted matrix its place, shape and ranks, and the method's own block
    all_results.json  Results     the run's identity, metrics, cost, size and totals; written last, so that its
                                  presence marks a finished run

run_glue_peft.py writes them; compare_runs.py (analysis/runs.py), hpo.py, allocation_quality.py and the launch and
benchmark scripts read them. A dataclass's fields are its file's keys (docs/outputs.md says what each means), so each
name is written down once, here. Each fact is recorded once: the run's identity and every total are in
all_results.json, the per-matrix detail in ranks.json.

Folders written before a field existed still load: a missing optional field reads as None. Keys a record does not
know — those of an older version (ranks.json carried the run's identity and totals twice until records.py) or of a
newer one — are kept in `other` as read and written back, never used. Writes are atomic (a temporary file and a
rename): a file that exists is whole.
"""

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

RUN_ARGS_FILE = "run_args.json"
RANKS_FILE = "ranks.json"
RESULTS_FILE = "all_results.json"
EVAL_LOG = "eval_log.jsonl"  # written by eval_log.EvalLog as training evaluates; read_eval_log below


class RecordError(ValueError):
    """A record that is not what its dataclass describes; the message names the file and what is wrong."""


def write_json_atomic(path, obj):
    """Via a temporary file and a rename: a kill mid-write never leaves a truncated file that looks whole."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_json_object(path) -> dict:
    """The JSON object in `path`. FileNotFoundError: there is none; other OSError, or json's JSONDecodeError (a
    ValueError): unreadable; RecordError: JSON, but not an object."""
    with open(path) as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise RecordError(f"{Path(path).name} is not a JSON object")
    return obj


class Record:
    """What the three records share: a FILE in the run folder, `read` from and `write` to it."""

    FILE: ClassVar[str]

    @classmethod
    def read(cls, folder):
        """The record in `folder` (errors as read_json_object, and RecordError for a record of another shape)."""
        return cls.from_json(read_json_object(Path(folder, cls.FILE)))

    def write(self, folder):
        write_json_atomic(Path(folder, self.FILE), self.to_json())


def _known_and_other(cls, obj: dict) -> tuple:
    """(the keys that are the dataclass's fields, the rest) of a record as read."""
    names = {f.name for f in fields(cls)} - {"other", "metrics"}
    return {k: v for k, v in obj.items() if k in names}, {k: v for k, v in obj.items() if k not in names}


def _typed(file: str, cls, values: dict) -> dict:
    """`values` converted to their fields' types where the field holds an int, a float or a str (JSON may hold 3.0
    for 3); None stays None. RecordError naming the file and the key when a value does not convert."""
    out = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        kinds = [t for t in getattr(f.type, "__args__", (f.type,)) if t is not type(None)]
        value = values[f.name]
        if value is not None and len(kinds) == 1 and kinds[0] in (int, float, str):
            try:
                value = kinds[0](value)
            except (TypeError, ValueError) as e:
                raise RecordError(f"non-numeric value in {file} ({f.name}: {e})") from None
        elif value is not None and len(kinds) == 1 and kinds[0] is dict and not isinstance(value, dict):
            raise RecordError(f"{file}: {f.name} is not a JSON object")
        out[f.name] = value
    return out


# ---- run_args.json ----


FLAG_BLOCKS = ("model", "data", "peft", "training")  # arguments.RunArguments' groups, each flag name -> value


def recorded_trial_run(training: dict, resolved: dict) -> bool:
    """Whether a run was a trial run (schedules that did not fit scaled into it): `resolved.trial_run`, or in a record
    written before that was recorded, its --trial_run flag (absent, before the flag existed: off)."""
    return bool(resolved["trial_run"] if "trial_run" in resolved else training.get("trial_run"))


@dataclass
class RunArgs(Record):
    """run_args.json: every flag as asked, in its group (arguments.RunArguments.asked(); `training` is
    TrainingArguments.to_dict()), and the plan as resolved (plan.RunPlan.resolved()). Its identity
    (checkpoints.identity_of) is what a resume may not change."""

    FILE: ClassVar[str] = RUN_ARGS_FILE
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    peft: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)
    world_size: int | None = None
    hpo: dict | None = None  # how hpo.py chose the hyper-parameters (search.study.hpo_record), runs it made only
    # {split: {"rows", "sha256"}} of the rows trained and evaluated on (glue_data.data_fingerprint); None: a record
    # written before it was recorded
    data_fingerprint: dict | None = None
    other: dict = field(default_factory=dict)  # keys this version does not know, as read

    @property
    def trial_run(self) -> bool:
        return recorded_trial_run(self.training, self.resolved)

    def to_json(self) -> dict:
        out = {name: getattr(self, name) for name in FLAG_BLOCKS}
        out.update(resolved=self.resolved, world_size=self.world_size)
        for name in ("hpo", "data_fingerprint"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {**out, **self.other}

    @classmethod
    def from_json(cls, obj: dict) -> "RunArgs":
        known, other = _known_and_other(cls, obj)
        blocks = _typed(RUN_ARGS_FILE, cls, known)
        for name in (*FLAG_BLOCKS, "resolved"):  # a block an older or partial record lacks (or holds as null) is empty
            if blocks.get(name) is None:
                blocks[name] = {}
        return cls(**blocks, other=other)


# ---- ranks.json ----


@dataclass
class ModuleRanks:
    """One adapted matrix in ranks.json."""

    layer: int
    matrix: str  # query, key, value, attention_output, ffn_in, ffn_out (arguments.MATRIX_PATTERNS)
    d_in: int
    d_out: int
    initial_rank: int
    final_rank: int
    effective_rank: int | None = None  # components whose A row, B column (AdaLoRA: singular value) are non-zero
    score: float | None = None  # GLoRA's share s_k of its signal's EMA (after --glora_score_norm); other methods: None

    @property
    def unit_cost(self) -> int:
        """Adapter parameters one rank of this matrix costs: A's row plus B's column."""
        return self.d_in + self.d_out

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, name: str, obj) -> "ModuleRanks":
        if not isinstance(obj, dict):
            raise RecordError(f"{RANKS_FILE}: module {name} is not a JSON object")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in obj]
        if missing:
            raise RecordError(f"{RANKS_FILE}: module {name} lacks {', '.join(missing)}")
        return cls(**_typed(RANKS_FILE, cls, obj))


@dataclass
class RankRecord(Record):
    """ranks.json: per adapted matrix (module path without peft's prefix, in model order) its ModuleRanks; the LoRA
    scaling every matrix starts with; the block of the run's own method (run_glue_peft.add_method_block: GLoRA's
    summary and scores, AdaLoRA's schedule, EVA's settings and cost)."""

    FILE: ClassVar[str] = RANKS_FILE
    modules: dict  # module path -> ModuleRanks
    initial_scaling: float | None = None  # alpha / r (AdaLoRA: alpha / init_r)
    glora: dict | None = None
    adalora: dict | None = None
    eva: dict | None = None
    other: dict = field(default_factory=dict)  # keys this version does not know (an older record's identity), as read

    def adapter_params(self, rank: str = "final_rank") -> int:
        """sum_k r_k (d_in + d_out) with r_k the modules' `rank` (initial_rank, final_rank or effective_rank)."""
        return sum(getattr(m, rank) * m.unit_cost for m in self.modules.values())

    @property
    def final_rank_total(self) -> int:
        return sum(m.final_rank for m in self.modules.values())

    def to_json(self) -> dict:
        out = {"initial_scaling": self.initial_scaling, "modules": {n: m.to_json() for n, m in self.modules.items()}}
        out.update({name: block for name, block in (("glora", self.glora), ("adalora", self.adalora), ("eva", self.eva))
                    if block})
        return {**out, **self.other}

    @classmethod
    def from_json(cls, obj: dict) -> "RankRecord":
        known, other = _known_and_other(cls, obj)
        modules = known.pop("modules", None)
        if not isinstance(modules, dict):
            raise RecordError(f"{RANKS_FILE}: no modules object")
        return cls(modules={n: ModuleRanks.from_json(n, m) for n, m in modules.items()},
                   **_typed(RANKS_FILE, cls, known), other=other)


# ---- all_results.json ----


@dataclass
class Results(Record):
    """all_results.json: the run's identity, the Trainer's figures and the method's overhead seconds (`metrics`;
    the overhead under gradnorm_rank.MethodOverhead's names, which own them), the
    trainable parameters, and the totals of the rank record: Σ final ranks and the adapter parameters
    Σ_k r_k (d_in + d_out) at the start, after the allocation (GLoRA's resize, AdaLoRA's pruning) and effective at
    the end. Flat in the file: `metrics` are the keys that are no field, as the Trainer names them (eval_* or
    eval_tuning_*, train_loss, train_*_per_second, epoch, resumed_part_*)."""

    FILE: ClassVar[str] = RESULTS_FILE

    task: str
    method: str
    seed: int
    rank_budget: int  # R_total (the uniform start's under --budget_unit params)
    train_runtime: float  # s, the whole run's (a resumed one included)
    trainable_params: int  # adapter + head, the tensors as trained
    arm: str | None = None  # --arm, or derived from method, budget unit, rank pattern and arm settings (plan.arm_label)
    rank_pattern: dict | None = None  # {path, sha256, source} of --rank_pattern (rank_pattern.RankPattern.record())
    budget_unit: str | None = None  # rank or params
    param_budget: int | None = None  # under --budget_unit params
    trainable_params_adapter: int | None = None
    trainable_params_head: int | None = None
    final_rank_total: int | None = None
    adapter_params_start: int | None = None
    adapter_params_after_allocation: int | None = None
    adapter_params_effective: int | None = None
    metrics: dict = field(default_factory=dict)

    def score(self, task) -> float | None:
        """The task score (compare_runs ranks by it): the mean over the task's dev splits (a glue_tasks.GlueTask) of
        each split's recorded eval_combined_score, the mean of its main metrics (glue_tasks.glue_metrics). None when
        a split's is not recorded."""
        keys = [f"eval_combined_score{split.metric_suffix}" for split in task.eval_splits]
        if not all(key in self.metrics for key in keys):
            return None
        return float(np.mean([float(self.metrics[key]) for key in keys]))

    def to_json(self) -> dict:
        return {**self.metrics, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}}

    @classmethod
    def from_json(cls, obj: dict) -> "Results":
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in obj]
        if missing:
            raise RecordError(f"missing keys in {RESULTS_FILE}: {', '.join(missing)}")
        known, metrics = _known_and_other(cls, obj)
        return cls(**_typed(RESULTS_FILE, cls, known), metrics=metrics)


def read_eval_log(output_dir) -> list:
    """The evaluations logged so far (a line still being written is left for the next read)."""
    path = Path(output_dir, EVAL_LOG)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
