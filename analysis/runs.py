"""Finished runs on disk (docs/outputs.md) as typed records: a Run per run directory, a Group per arm of one
comparable group (task × R_total × Setting, analysis.comparable) with its seed statistics."""
import json
import math
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.comparable import ArmIdentity, Setting, arm_of
from analysis.metrics import BASE_ERROR, METRIC_FNS, VECTOR_METRIC_FNS, example_sums
from gradnorm_rank import MethodOverhead
from harness.arguments import METHODS, arm_settings, arm_suffix
from harness.glue_tasks import GLUE_TASKS
from harness.records import RESULTS_FILE, RUN_ARGS_FILE, RankRecord, RecordError, Results, RunArgs
from harness.run_folder import REPLACED_SUFFIX

# task -> main metrics, in all_results.json as eval_<metric>; the task score is their mean.
# From the task table the runs were made with; MNLI's mismatched split adds the `_mm` metrics.
MAIN_METRICS = {task: spec.main_metric_keys() for task, spec in GLUE_TASKS.items()}
# shown beside the main metrics where a run records them, not ranked by: MCC (classification), R^2 and Pearson's r
# (planted)
REPORTED_METRICS = ("matthews_correlation", "matthews_correlation_mm", "r2", "pearson")
TASK_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]  # the usual GLUE order
METHOD_ORDER = list(METHODS)
METHOD_NAMES = {"lora": "LoRA", "adalora": "AdaLoRA", "glora": "GLoRA", "eva": "EVA"}


def note(msg):
    print(f"note: {msg}", file=sys.stderr)


def method_name(m):
    return METHOD_NAMES.get(m, m)


def method_key(m):  # sort key: lora, adalora, glora, eva, then anything else alphabetically
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def arm_name(arm, method):
    """How tables and figures name an arm: the method's name, and the arm's label where it is not the method's
    (`GLoRA (glora_params)`, `LoRA (lora_pattern-1a2b3c4d)`)."""
    return method_name(method) if arm == method else f"{method_name(method)} ({arm})"


def arm_key(arm, method):  # sort key: by method (lora, adalora, glora), the arm named like its method first
    return (*method_key(method), arm != method, arm)


def task_key(t):
    return TASK_ORDER.index(t) if t in TASK_ORDER else len(TASK_ORDER)


def metric_split(task, metric):
    """Which predictions_<split>.csv a main metric is computed on, and the plain metric name."""
    return GLUE_TASKS[task].split_of(metric)


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample std (ddof=1; nan for a single value) over seeds."""
    mean: float
    std: float

    @classmethod
    def of(cls, values):
        v = np.asarray(values, float)
        if len(v) == 0:
            return cls(float("nan"), float("nan"))
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))


@dataclass
class Run:
    """One finished run. Scores on the metrics' own scale (0..1)."""
    name: str
    path: Path
    task: str
    method: str
    seed: int
    budget: int  # R_total
    results: Results  # all_results.json
    args: RunArgs  # run_args.json
    metrics: dict  # main metric key (and MCC) -> value
    score: float  # the task score: mean of the task's main metrics (Results.score)
    time: float  # train_runtime (s), wall-clock
    method_overhead_seconds: float  # the method's own work (all_results.json, gradnorm_rank.MethodOverhead's names)
    params: float  # trainable parameters, adapter + head
    params_adapter: float
    ranks: RankRecord | None  # ranks.json, when readable
    total_rank: float
    warnings: list = field(default_factory=list)
    adapter_params_effective: float = float("nan")  # LoRA parameters of non-zero components at the end, no head
    hpo: "Hpo | None" = None  # run_args.json's "hpo" block, when the hyper-parameters were tuned
    arm: str = ""  # the run's label (analysis.comparable.arm_of): seeds are pooled per arm
    setting: Setting | None = None  # what it must share with the runs it is compared with
    identity: ArmIdentity | None = None  # what it must share with the other seeds of its arm
    # GLoRA's overhead by part (nan: not recorded, or not measured apart: AdaLoRA's, runs before the split)
    method_overhead_signal_seconds: float = float("nan")
    method_overhead_resize_seconds: float = float("nan")
    method_overhead_grown_slice_seconds: float = float("nan")
    cpu_time: float = float("nan")  # train_process_cpu_seconds: the training process's CPU seconds (nan: not recorded)

    @property
    def uniform_lora(self):
        """Plain LoRA: the same rank on every matrix (no --rank_pattern), the baseline of "vs LoRA"."""
        return self.method == "lora" and self.identity.rank_pattern is None


@dataclass(frozen=True)
class Hpo:
    """How a run's hyper-parameters were tuned (run_args.json "hpo")."""
    study_name: str
    n_trials: int
    n_complete: int
    n_pruned: int
    tuned_on: str  # "tuning_split" or "dev"

    @classmethod
    def of(cls, block):
        if not isinstance(block, dict):
            return None
        try:
            return cls(str(block.get("study_name", "")), int(block["n_trials"]), int(block.get("n_complete", -1)),
                       int(block.get("n_pruned", -1)), str(block.get("tuned_on", "?")))
        except (KeyError, TypeError, ValueError):
            return None


def read_json(path):
    """(object, None) or (None, reason): a file that is no run record (trainer_state.json)."""
    try:
        with open(path) as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError) as e:
        return None, f"unreadable {path.name} ({type(e).__name__}: {e})"


def read_record(record, d):
    """(record, None) or (None, reason) of a record class (records.RunArgs, RankRecord, Results) in folder d."""
    try:
        return record.read(d), None
    except FileNotFoundError:
        return None, f"no {record.FILE}"
    except RecordError as e:
        return None, str(e)
    except (OSError, ValueError) as e:
        return None, f"unreadable {record.FILE} ({type(e).__name__}: {e})"


def find_run_dirs(paths):
    """Run dirs (dirs holding run_args.json) at or below each path, first-seen order, no repeats. A run that
    --overwrite_output_dir moved aside (OUTPUT_DIR.replaced, run_folder.py) is left out: it is kept only until the run
    that replaces it finishes, and would otherwise count as one more seed beside it."""
    seen, dirs = set(), []
    for p in map(Path, paths):
        for d in sorted(q.parent for q in p.rglob(RUN_ARGS_FILE)):
            if any(part.endswith(REPLACED_SUFFIX) for part in d.parts):
                note(f"{d}: set aside, a run moved aside by --overwrite_output_dir (its replacement is beside it)")
                continue
            if d.resolve() not in seen:
                seen.add(d.resolve())
                dirs.append(d)
    return dirs


class Unusable(Exception):
    """A run directory that cannot enter the comparison; the message says why."""


def read_results(d):
    """(RunArgs, Results, task) of a finished run whose results hold the task's main metrics."""
    run_args, err = read_record(RunArgs, d)
    if err:
        raise Unusable(err)
    if not (d / RESULTS_FILE).is_file():
        raise Unusable(f"unfinished: no {RESULTS_FILE}")
    res, err = read_record(Results, d)
    if err:
        raise Unusable(err)
    task = res.task.lower().replace("-", "")
    if task not in MAIN_METRICS:
        raise Unusable(f"unknown task {res.task!r}")
    missing = [f"eval_{m}" for m in MAIN_METRICS[task] if f"eval_{m}" not in res.metrics]
    if missing:
        raise Unusable(f"missing keys in {RESULTS_FILE}: {', '.join(missing)}")
    return run_args, res, task


def recorded_or(value, fallback):
    """A total as all_results.json records it, or (a run written before it was recorded) from the rank record."""
    return float(value) if value is not None else fallback()


def ranks_total(ranks, rank="final_rank"):
    """From ranks.json: the sum of final ranks (rank None), or of rank * (d_in + d_out); nan without modules."""
    if ranks is None or not ranks.modules:
        return float("nan")
    return float(ranks.final_rank_total if rank is None else ranks.adapter_params(rank))


def method_overhead(res) -> dict:
    """all_results.json's method overhead seconds (records.Results.metrics, under MethodOverhead's names): the total
    (0 when not recorded) and each part (nan when null or not recorded)."""
    names = list(MethodOverhead().record())
    values = {name: res.metrics.get(name) for name in names}
    if values[names[0]] is None:  # runs written before the overhead was split recorded its total as method_hook_seconds
        values[names[0]] = res.metrics.get("method_hook_seconds")
    return {names[0]: float(values[names[0]] or 0.0),
            **{name: float("nan") if values[name] is None else float(values[name]) for name in names[1:]}}


def load_run(d):
    """(Run, None) for a finished, readable run; (None, reason) otherwise. The score and the totals are the ones the
    run recorded (all_results.json); a run written before it recorded one gets it computed as the run would have
    (the task score from the main metrics, the totals from ranks.json)."""
    d = Path(d)
    try:
        run_args, res, task = read_results(d)
    except Unusable as e:
        return None, str(e)
    main = MAIN_METRICS[task]
    try:
        metrics = {m: float(res.metrics[f"eval_{m}"]) for m in main}
        for k in REPORTED_METRICS:
            if f"eval_{k}" in res.metrics and k not in metrics:
                metrics[k] = float(res.metrics[f"eval_{k}"])
        score = res.score(GLUE_TASKS[task])
        score = float(np.mean([metrics[m] for m in main])) if score is None else score
        numbers = dict(method=res.method.lower(), seed=res.seed, budget=res.rank_budget,
                       **method_overhead(res),
                       params=float(res.trainable_params),
                       params_adapter=recorded_or(res.trainable_params_adapter, lambda: float("nan")),
                       cpu_time=recorded_or(res.metrics.get("train_process_cpu_seconds"), lambda: float("nan")))
    except (TypeError, ValueError) as e:
        return None, f"non-numeric value in {RESULTS_FILE} ({e})"
    try:
        settings = arm_settings(res.method.lower(), run_args.peft)
        comparable = dict(arm=arm_of(res, run_args, arm_suffix(res.method.lower(), settings)),
                          setting=Setting.of(run_args), identity=ArmIdentity.of(res, run_args, settings))
    except (TypeError, ValueError) as e:  # a field of another type than a run writes
        return None, f"{RUN_ARGS_FILE} / {RESULTS_FILE}: unreadable arm, budget or training setting ({e})"
    time = res.train_runtime
    bad = [k for k, v in (("score", score), ("time", time)) if not math.isfinite(v)]
    if bad:
        return None, f"non-finite {', '.join(bad)} in {RESULTS_FILE}"
    # the rank record is optional for the table: a missing one only costs the rank columns/figures of older runs
    ranks, err = read_record(RankRecord, d)
    warnings = [f"{d}: {err}"] if err else []
    return Run(name=d.name, path=d, task=task, results=res, args=run_args, metrics=metrics, score=score, time=time,
               ranks=ranks, total_rank=recorded_or(res.final_rank_total, lambda: ranks_total(ranks, None)),
               warnings=warnings,
               adapter_params_effective=recorded_or(res.adapter_params_effective, lambda: ranks_total(ranks)),
               hpo=Hpo.of(run_args.hpo), **numbers, **comparable), None


def load_runs(paths):
    """Load every run below paths. Returns (runs, skipped) with skipped = [(path, reason)]: runs that cannot be
    read, and runs that cannot be pooled with the other seeds of their arm (set_aside)."""
    loaded, skipped = [], []
    for d in find_run_dirs(paths):
        run, reason = load_run(d)
        if run is None:
            skipped.append((str(d), reason))
        else:
            loaded.append(run)
    runs, set_aside = poolable(loaded)
    skipped += set_aside
    # run name = directory name; only where two runs share one, add parent dirs to tell them apart
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = "__".join(r.path.resolve().parts[-3:])
    return runs, skipped


def poolable(runs):
    """(runs, set_aside): the runs of one arm in one comparable group become one row of seeds, so they must agree
    on the arm's identity (method, budget unit and size, rank pattern, optimizer steps, the settings that define an
    arm of the method) and hold each seed once.
    Where they do not, which runs are meant cannot be known: all of that arm's runs, or both copies of the seed,
    are set aside with the reason."""
    by_arm = {}
    for r in runs:
        by_arm.setdefault((r.task, r.budget, r.setting, r.arm), []).append(r)
    kept, set_aside = [], []
    for (task, budget, _, arm), same in by_arm.items():
        identities = list(dict.fromkeys(r.identity for r in same))
        if len(identities) > 1:
            why = identities[0].differences(identities[1:])
            set_aside += [(str(r.path), f"set aside: arm {arm} on {task} (R_total = {budget}) mixes runs that differ "
                                        f"in {why}; give them distinct --arm labels") for r in same]
            continue
        by_seed = {}
        for r in same:
            by_seed.setdefault(r.seed, []).append(r)
        for twins in by_seed.values():
            if len(twins) == 1:
                kept.append(twins[0])
                continue
            # The same seed twice (say a rerun beside the first run): which one is meant cannot be known, and
            # keeping both would double-count the seed. Keep neither and say so.
            for run in twins:
                others = ", ".join(str(r.path) for r in twins if r is not run)
                set_aside.append((str(run.path), f"ambiguous: same task/budget/arm/seed and setting as {others}; keep one"))
    order = {id(r): i for i, r in enumerate(runs)}
    return sorted(kept, key=lambda r: order[id(r)]), set_aside


class GroupKey(NamedTuple):
    """A row of the comparison: one arm in one comparable group of a task and R_total."""
    task: str
    budget: int
    group: str  # "" where the task and R_total hold one comparable group, else g1, g2, ... (group_tags)
    arm: str

    @property
    def block(self):
        """(task, budget, group): the comparable group, whose arms are compared with each other."""
        return self[:3]


def place(task, group):
    """The task as tables print it: `sst2`, or `sst2 (g2)` where its runs fall in several comparable groups."""
    return f"{task} ({group})" if group else task


@dataclass
class Group:
    """The runs (seeds) of one arm in one comparable group, sorted by seed."""
    task: str
    budget: int
    group: str
    arm: str
    method: str
    setting: Setting
    runs: list

    @property
    def key(self):
        return GroupKey(self.task, self.budget, self.group, self.arm)

    @property
    def uniform_lora(self):
        return self.runs[0].uniform_lora

    @property
    def n(self):
        return len(self.runs)

    @property
    def seeds(self):
        return [r.seed for r in self.runs]

    @cached_property
    def scores(self):
        return np.array([r.score for r in self.runs])

    @cached_property
    def score(self):
        return MeanStd.of(self.scores)

    @cached_property
    def metrics(self):
        """Metric key -> MeanStd, for the metrics every run has."""
        names = [m for m in self.runs[0].metrics if all(m in r.metrics for r in self.runs)]
        return {m: MeanStd.of([r.metrics[m] for r in self.runs]) for m in names}

    @cached_property
    def time(self):
        return MeanStd.of([r.time for r in self.runs])

    @cached_property
    def cpu_time(self):
        """The training process's CPU seconds over seeds (nan when a run did not record them)."""
        return MeanStd.of([r.cpu_time for r in self.runs])

    def mean_of(self, attr):
        return float(np.mean([getattr(r, attr) for r in self.runs]))


def group_tags(runs):
    """{(task, budget, setting): tag}: "" where a task and R_total have one setting, else g1, g2, ...: runs over
    epochs before trial runs, then the group with more runs first, then by the settings' fields."""
    settings = {}
    for r in runs:
        counts = settings.setdefault((r.task, r.budget), {})
        counts[r.setting] = counts.get(r.setting, 0) + 1
    tags = {}
    for (task, budget), found in settings.items():
        ordered = sorted(found, key=lambda s: (s.trial, -found[s], s.sort_text()))
        for i, s in enumerate(ordered, start=1):
            tags[(task, budget, s)] = f"g{i}" if len(ordered) > 1 else ""
    return tags


def aggregate(runs):
    """{GroupKey: Group}: runs pooled per arm within their comparable group, in GLUE task order, then budget, then
    group, then arm order (lora, other LoRA arms, AdaLoRA arms, GLoRA arms). Runs should come from load_runs,
    which sets aside what cannot be pooled."""
    tags = group_tags(runs)
    by_key = {}
    for r in runs:
        by_key.setdefault(GroupKey(r.task, r.budget, tags[(r.task, r.budget, r.setting)], r.arm), []).append(r)
    groups = {key: Group(*key, rs[0].method, rs[0].setting, sorted(rs, key=lambda r: r.seed)) for key, rs in by_key.items()}
    return dict(sorted(groups.items(), key=lambda kv: (task_key(kv[0].task), kv[0].task, kv[0].budget, kv[0].group,
                                                       arm_key(kv[0].arm, kv[1].method))))


def blocks(groups):
    """{(task, budget, group): [Group]}: the comparable groups, each with its arms in order."""
    out = {}
    for key, g in groups.items():
        out.setdefault(key.block, []).append(g)
    return out


def load_predictions(run):
    """({split: DataFrame(idx, label, prediction)}, None) for every split the task's metrics need, or (None, reason):
    also when the predictions do not reproduce the run's recorded score (predictions_mismatch)."""
    preds, err = read_predictions(run)
    if preds is None:
        return None, err
    mismatch = predictions_mismatch(run, preds)
    return (None, mismatch) if mismatch else (preds, None)


SCORE_TOLERANCE = 1e-6  # a metric recomputed from the predictions file may differ from the recorded one by rounding only


def predictions_mismatch(run, preds):
    """'' when every main metric recomputed from the predictions equals all_results.json's, else why not: a file
    cut short (or of other rows) would make the bootstrap score other rows than the Δ score."""
    for m in MAIN_METRICS[run.task]:
        split, metric = metric_split(run.task, m)
        df, file = preds[split], predictions_file(run.task, split)
        kind = float if GLUE_TASKS[run.task].is_regression else int
        if GLUE_TASKS[run.task].is_vector:  # its main metric (recovered), from the per-example sums
            value = float(VECTOR_METRIC_FNS[metric](np.ones((1, len(df))), df)[0])
        else:
            try:
                value = METRIC_FNS[metric](df["label"].to_numpy(kind), df["prediction"].to_numpy(kind))
            except (TypeError, ValueError) as e:
                return f"{file}: labels or predictions are not {kind.__name__}s ({e})"
        if abs(value - run.metrics[m]) > SCORE_TOLERANCE:
            scored = run.results.metrics.get("eval_samples" + m[len(metric):])
            rows = f"{len(df)} of the {scored} rows scored" if scored and scored != len(df) else f"{len(df)} rows"
            return (f"{file} ({rows}) gives {metric} {value:.4f} but all_results.json records "
                    f"{run.metrics[m]:.4f}: not the rows that were scored (truncated predictions?); left out of the bootstrap")
    return ""


def bootstrap_set_aside(runs):
    """[(path, why)] of the runs whose predictions files exist but do not reproduce their recorded score: each
    comparison leaves them out of its bootstrap (stats.compare), and the report lists them once."""
    out = []
    for r in runs:
        preds, _ = read_predictions(r)
        why = predictions_mismatch(r, preds) if preds is not None else ""
        if why:
            out.append((str(r.path), why))
    return out


def read_predictions(run):
    """The predictions files as written ({split: DataFrame(idx, label, prediction)}; a vector-label task's,
    predictions_<split>.npz, as per-example sums: analysis.metrics.example_sums), or (None, reason)."""
    if GLUE_TASKS[run.task].is_vector:
        return read_vector_predictions(run)
    out = {}
    for split in sorted({metric_split(run.task, m)[0] for m in MAIN_METRICS[run.task]}):
        path = run.path / f"predictions_{split}.csv"
        try:
            df = pd.read_csv(path)
        except (OSError, ValueError) as e:
            return None, f"{path}: {type(e).__name__}"
        if not {"idx", "label", "prediction"} <= set(df.columns) or len(df) == 0:
            return None, f"{path}: needs columns idx,label,prediction and at least one row"
        out[split] = df
    return out, None


def predictions_file(task, split) -> str:
    """predictions_<split>.csv, or a vector-label task's predictions_<split>.npz (every output row)."""
    return f"predictions_{split}.{'npz' if GLUE_TASKS[task].is_vector else 'csv'}"


def read_vector_predictions(run):
    """{split: example_sums} of every predictions_<split>.npz the task's metrics need, or (None, reason)."""
    out = {}
    for split in sorted({metric_split(run.task, m)[0] for m in MAIN_METRICS[run.task]}):
        path = run.path / predictions_file(run.task, split)
        try:
            with np.load(path) as npz:
                out[split] = example_sums(npz["idx"], npz["example"], npz["label"], npz["prediction"], npz[BASE_ERROR])
        except (OSError, ValueError, KeyError, IndexError) as e:
            return None, f"{path}: {type(e).__name__} (needs idx, example, label, prediction and {BASE_ERROR})"
    return out, None
