"""What may be compared with what. Runs are compared only inside one comparable group: the same task, R_total and
`Setting` (model, data selection, dev rows scored, trial mode, training length, read from run_args.json); inside it,
seeds are pooled per arm, and the runs of one arm must also share its `ArmIdentity` (method, budget unit and size,
rank pattern, total optimizer steps, and the settings that define an arm of its method: arguments.arm_settings, which
runs.py reads and hands in). `References` picks, per group, the uniform LoRA arm the "vs LoRA" columns use
and the AdaLoRA arm of the share of gain.

No import from the rest of the package: runs.py builds its records from these. `results` and `run_args` are the
run's records.Results and records.RunArgs."""
import hashlib
import json
import os
from dataclasses import dataclass, fields

NOT_RECORDED = "not recorded"  # an arm setting a run's record lacks


def arm_of(results, run_args, suffix="") -> str:
    """The run's arm label: all_results.json's or run_args.json's resolved `arm`; runs written before arms were
    recorded get the label a run would get today from its method, budget unit (no rank pattern then) and `suffix`,
    what its arm-defining settings add (arguments.arm_suffix: `_sensitivity_cal8`)."""
    arm = results.arm or run_args.resolved.get("arm")
    if arm:
        return str(arm)
    unit = results.budget_unit or run_args.resolved.get("budget_unit") or "rank"
    return results.method.lower() + ("_params" if unit == "params" else "") + suffix


def rank_pattern_hash(results, run_args):
    """sha256 of the run's --rank_pattern file, or None for a run without one."""
    pattern = results.rank_pattern or run_args.resolved.get("rank_pattern")
    return pattern.get("sha256", "?") if isinstance(pattern, dict) else None


@dataclass(frozen=True)
class Setting:
    """What runs must share to be compared at all, besides task and R_total. Each field is a short text (None:
    not recorded), so two settings compare and print field by field."""
    model: str | None
    data: str | None  # the rows' content (run_args.json data_fingerprint); a run recorded before it: where they came from
    max_train_samples: str | None
    tuning_split: str | None  # the carve held out of the training data (hpo.py's tuning split)
    dev_rows: str | None  # --max_eval_samples: which dev rows are scored
    mode: str | None  # a run over epochs, a --max_steps run, or one with --trial_run (its schedules may be scaled)
    length: str | None  # --max_steps N, or the epochs

    @classmethod
    def of(cls, run_args) -> "Setting":
        model, data, training = run_args.model, run_args.data, run_args.training
        max_steps = training.get("max_steps")
        trial = None if max_steps is None else max_steps > 0
        if trial:
            length = f"max_steps {max_steps}"
        else:
            epochs = training.get("num_train_epochs")
            length = None if epochs is None else f"num_train_epochs {epochs:g}"
        return cls(
            model=text(model.get("model_name_or_path")),
            data=data_content(run_args) or data_source(data),
            max_train_samples=row_limit(data, "max_train_samples", "all training rows"),
            tuning_split=tuning_carve(data),
            dev_rows=row_limit(data, "max_eval_samples", "all dev rows"),
            mode=None if trial is None else (trial_mode(run_args) if trial else "epochs"),
            length=length,
        )

    @property
    def trial(self) -> bool:
        return self.mode is not None and self.mode.startswith("trial")

    def sort_text(self):
        return [str(getattr(self, f.name)) for f in fields(self)]

    def differences(self, others) -> str:
        """The fields in which this setting differs from any of others, as 'name value; ...'."""
        out = []
        for f in fields(self):
            mine = getattr(self, f.name)
            if any(getattr(o, f.name) != mine for o in others):
                out.append(f"{f.name.replace('_', ' ')}: {mine if mine is not None else 'not recorded'}")
        return "; ".join(out)


def trial_mode(run_args) -> str:
    """A --max_steps run's mode: a trial run (records.RunArgs.trial_run: --trial_run as resolved; unset, it is on for a
    --max_steps run) may have had schedules that did not fit scaled into it, so it is never pooled with a run where it
    was off."""
    return "trial run (--max_steps, --trial_run)" if run_args.trial_run else "trial run (--max_steps)"


def text(value):
    return None if value is None else str(value)


def data_content(run_args) -> str | None:
    """The content of the rows a run trained and evaluated on, as one short text: the sha256 of its recorded
    data_fingerprint (every split's rows, after row selection) and the splits' sizes. Where the rows were read from is
    not part of it: one folder named by an absolute and a relative --dataset_dir is one content. None: a run recorded
    before the fingerprint (its data source is compared instead)."""
    fingerprint = getattr(run_args, "data_fingerprint", None)
    if not isinstance(fingerprint, dict) or not fingerprint:
        return None
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    sizes = ", ".join(f"{split} {entry.get('rows')}" for split, entry in sorted(fingerprint.items())
                      if isinstance(entry, dict))
    return f"content {digest[:12]} ({sizes} rows)"


def data_source(data) -> str | None:
    """Where the rows came from: --dataset_dir (which overrides the rest), the data files, or the hub dataset."""
    if data.get("dataset_dir"):
        return f"--dataset_dir {os.path.normpath(str(data['dataset_dir']))}"
    if data.get("train_file"):
        files = [data.get(k) for k in ("train_file", "validation_file", "validation_mismatched_file")]
        return "files " + ", ".join(str(f) for f in files if f)
    return f"hub {data['dataset_name']}" if data.get("dataset_name") else None


def row_limit(data, key, everything) -> str | None:
    """--max_train_samples / --max_eval_samples as given, `everything` when unset, None when not recorded."""
    if key not in data:
        return None
    return everything if data[key] is None else f"--{key} {data[key]}"


def tuning_carve(data) -> str | None:
    """The tuning split held out of the training data; its cap matters only when there is one."""
    if "tuning_split_fraction" not in data:
        return None
    fraction = data["tuning_split_fraction"] or 0
    if not fraction > 0:
        return "none"
    return f"fraction {fraction:g}, at most {data.get('tuning_split_max')}"


@dataclass(frozen=True)
class ArmIdentity:
    """What every run (seed) pooled into one arm's row must share, besides the Setting."""
    method: str
    budget_unit: str | None
    param_budget: int | None
    rank_pattern: str | None  # sha256 of the pattern file
    total_steps: int | None  # optimizer steps (run_args.json resolved): the batch size and data size in one number
    settings: tuple = ()  # ((flag, value), ...): the flags that define an arm of the method, as far as recorded

    @classmethod
    def of(cls, results, run_args, settings=()) -> "ArmIdentity":
        resolved = run_args.resolved
        unit = results.budget_unit or resolved.get("budget_unit")
        param_budget = results.param_budget if results.param_budget is not None else resolved.get("param_budget")
        steps = resolved.get("total_steps")
        identity = cls(method=results.method.lower(), budget_unit=text(unit),
                       param_budget=None if param_budget is None else int(param_budget),
                       rank_pattern=rank_pattern_hash(results, run_args),
                       total_steps=None if steps is None else int(steps), settings=tuple(settings))
        hash(identity)  # TypeError here for a setting of a type no run writes (a list), not later when pooled
        return identity

    def differences(self, others) -> str:
        """The fields in which these identities differ, as 'name a vs b; ...'; a setting by its flag, '--glora_signal
        lora_b vs sensitivity'."""
        everyone = [self, *others]
        named = [(f.name.replace("_", " "), [getattr(o, f.name) for o in everyone]) for f in fields(self)
                 if f.name != "settings"]
        flags = dict.fromkeys(flag for o in everyone for flag, _ in o.settings)
        named += [(f"--{flag}", [dict(o.settings).get(flag, NOT_RECORDED) for o in everyone]) for flag in flags]
        out = []
        for name, values in named:
            shown = sorted({str(v) for v in values})
            if len(shown) > 1:
                out.append(f"{name} {' vs '.join(shown)}")
        return "; ".join(out)


@dataclass(frozen=True)
class References:
    """The arms a comparable group is measured against: `lora`, the uniform LoRA arm (method lora, no rank
    pattern) of the "vs LoRA" columns and tests; `adalora`, the AdaLoRA arm of the share of gain. None: there is
    none, or several and none labelled as the default; `notes` say which was used or why none."""
    lora: str | None
    adalora: str | None
    notes: tuple = ()


def pick_references(groups) -> References:
    """The references among one comparable group's arms (Groups: .arm, .method, .uniform_lora). Of several
    candidates the one with the default label (`lora`, `adalora`) is used and a note says so; without one, none
    is, and the note says how to label it."""
    lora, lora_note = pick("uniform LoRA", [g.arm for g in groups if g.uniform_lora], "lora",
                           "no vs-LoRA columns, tests or share of gain")
    ada, ada_note = pick("AdaLoRA", [g.arm for g in groups if g.method == "adalora"], "adalora",
                         "no share of AdaLoRA's gain")
    return References(lora, ada, tuple(n for n in (lora_note, ada_note) if n))


def pick(kind, candidates, default, without):
    """(the reference arm or None, a note where there was a choice)."""
    if len(candidates) <= 1:
        return (candidates[0] if candidates else None), ""
    listed = ", ".join(sorted(candidates))
    if default in candidates:
        return default, f"several {kind} arms ({listed}): the comparison uses {default}"
    return None, f"several {kind} arms ({listed}) and none labelled {default}: {without}; label the reference --arm {default}"
