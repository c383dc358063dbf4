"""What a study is for, recorded in the study itself, and whether a final run belongs to it.

A study searches one arm (`--arm`, or the label run_glue_peft.py derives from method, budget unit, rank pattern and
the settings that define an arm, which are never searched) under one set of fixed run flags: the parsed run arguments
that are neither searched nor among those a study's runs may differ in (arguments.STUDY_MAY_DIFFER: where output
goes, logging, saving, evaluation timing and batching, data-loader workers), each as run_glue_peft.py parses it, so
that two spellings of one setting are equal. Both are stored in the study as user attributes when it is created,
with an id (a UUID) that tells it from a study of the same name in another database or made again after a deletion.

- A worker that reopens the study with other fixed flags or another arm is refused: its trials would not be
  comparable with the ones already there.
- So is a worker with another sampler, sampler seed or pruner settings (stored beside the flags): the search would
  no longer be the one recorded, nor replayable from it.
- A finished final run is reused only if its `hpo` block names this study (name and id), the same arm and fixed
  flags, and the current best parameters; otherwise hpo.py refuses, or with --rerun_stale_finals moves it aside
  and runs it again.
"""

import json
import uuid
from functools import lru_cache

from optuna.trial import TrialState

from harness.arguments import ARM_SETTING_FLAGS, STUDY_MAY_DIFFER, arm_settings, canonical_targets, parse_args
from harness.plan import arm_label
from harness.rank_pattern import RankPattern, read_rank_pattern_file

# What names the study, never searched: the task, the arm's label and what derives it (method, budget unit, rank
# pattern and the settings that define an arm, arguments.ARM_SETTING_FLAGS).
ARM_FLAGS = ("task", "method", "budget_unit", "rank_pattern", "arm", *ARM_SETTING_FLAGS)
RAN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
SHOWN = 4  # differences named in one refusal line


def fixed_run_flags(run_args, searched) -> dict:
    """{flag: value} of every parsed run argument that defines the study: not searched, not in STUDY_MAY_DIFFER;
    values as JSON holds them (enums as their names, tuples as lists); --target_modules in canonical order
    (arguments.canonical_targets); a rank pattern as its path and sha256."""
    flat = {}
    for block in run_args.asked().values():
        flat.update(block)
    flags = {k: json.loads(json.dumps(v, default=str)) for k, v in sorted(flat.items())
             if k not in searched and k not in STUDY_MAY_DIFFER and k != "arm"}  # the arm is compared as resolved
    flags = canonical_flags(flags)
    if flags.get("rank_pattern"):  # the file's content defines the runs, not only its name
        flags["rank_pattern"] = {"path": flags["rank_pattern"], "sha256": read_rank_pattern_file(flags["rank_pattern"])[2]}
    return flags


def canonical_flags(flags: dict) -> dict:
    """Flags with --target_modules in canonical order; applied to a study's recorded flags too, which an older hpo.py
    stored in the order given."""
    if isinstance(flags.get("target_modules"), list):
        return {**flags, "target_modules": canonical_targets(flags["target_modules"])}
    return flags


def arm_of(peft) -> str:
    """The arm run_glue_peft.py will record (plan.arm_label): --arm, or method, budget unit, the rank pattern file's
    hash, read here (a bad pattern file is refused before the study opens), and the settings that define the arm."""
    pattern = None
    if peft.rank_pattern:
        ranks, source, sha256 = read_rank_pattern_file(peft.rank_pattern)
        pattern = RankPattern(path=str(peft.rank_pattern), sha256=sha256, source=source, ranks=tuple(ranks.items()))
    return peft.arm or arm_label(peft.method, peft.budget_unit, pattern, arm_settings(peft.method, vars(peft)))


def pin_study(study, flags: dict, arm: str) -> str | None:
    """Record the fixed flags, the arm and an id in a study that has none; refuse a study recorded with other flags
    or another arm (SystemExit, one line). Returns a note for an older study that has trials but no record."""
    recorded = study.user_attrs
    if "run_flags" in recorded:
        differs = run_differences(recorded.get("arm"), recorded["run_flags"], arm, flags)
        if differs:
            raise SystemExit(f"study {study.study_name} was created with other run flags ({shown(differs)}): give the "
                             "same flags to resume it, or another --study_name (or --study_dir) for a new study.")
        return None
    note = None
    if study.get_trials(deepcopy=False, states=RAN):
        note = (f"study {study.study_name} has trials but no recorded run flags (made by an older hpo.py): recording "
                "this command's; they are not checked against its trials.")
    # run_flags last: a worker that opens the study meanwhile and finds them finds the arm and the id as well.
    study.set_user_attr("arm", arm)
    if "study_uid" not in recorded:
        study.set_user_attr("study_uid", uuid.uuid4().hex)
    study.set_user_attr("run_flags", flags)
    return note


# Pruning settings by the hpo.py flag that sets them, for refusal lines (a setting without a flag keeps its name).
PRUNING_FLAGS = {"warmup_fraction": "pruner_warmup_fraction", "startup_trials": "pruner_startup_trials",
                 "reduction_factor": "pruner_reduction_factor"}


def search_settings(sampler: dict, sampler_seed: int | None, pruning: dict) -> dict:
    """How the study proposes and stops trials, as stored in it: the sampler (search/sampler.py sampler_record), its
    seed (None: drawn from fresh entropy) and the pruner settings (PruningSettings.record())."""
    return {"sampler": sampler, "sampler_seed": sampler_seed, "pruning": pruning}


def pin_search(study, sampler: dict, sampler_seed: int | None, pruning: dict) -> tuple:
    """Record the search settings in a study that has none; refuse a study recorded with other ones (SystemExit, one
    line naming each setting that differs). --sampler_seed left out on a reopen means the recorded seed, said in the
    note; a study recorded without a seed stays without one (a seed given then is refused: the trials already there
    were not drawn from it). Returns (the sampler seed to use, a note or None)."""
    recorded = study.user_attrs.get("search_settings")
    if recorded is None:
        note = None
        if study.get_trials(deepcopy=False, states=RAN):
            note = (f"study {study.study_name} has trials but no recorded sampler and pruner settings (made by an older "
                    "hpo.py): recording this command's; they are not checked against its trials.")
        study.set_user_attr("search_settings", search_settings(sampler, sampler_seed, pruning))
        return sampler_seed, note
    seed = recorded.get("sampler_seed") if sampler_seed is None else sampler_seed
    differs = differences(flat_search_settings(recorded), flat_search_settings(search_settings(sampler, seed, pruning)),
                          absent="not recorded")
    if differs:
        raise SystemExit(f"study {study.study_name} was created with other search settings ({shown(differs)}): give "
                         "the same --pruner*, --evaluations_per_trial and --sampler_seed to resume it (a left-out "
                         "--sampler_seed means the recorded one), or another --study_name (or --study_dir) for a new "
                         "study.")
    note = None
    if sampler_seed is None and seed is not None:
        note = f"study {study.study_name}: sampler seed {seed}, recorded when it was created (--sampler_seed not given)"
    return seed, note


def flat_search_settings(settings: dict) -> dict:
    """{name: value} with the names of refusal lines: `sampler` (its class), `sampler.<setting>`, `sampler_seed`, and
    the pruner settings by their hpo.py flag."""
    sampler = dict(settings.get("sampler") or {})
    flat = {"sampler": sampler.pop("class", None), "sampler_seed": settings.get("sampler_seed")}
    flat.update({f"sampler.{k}": v for k, v in sampler.items()})
    flat.update({PRUNING_FLAGS.get(k, k): v for k, v in (settings.get("pruning") or {}).items()})
    return flat


def study_identity(study) -> dict:
    """The study's id, arm and fixed flags as stored (read from the database, so every worker sees one value)."""
    recorded = study.user_attrs
    return {"study_uid": recorded["study_uid"], "arm": recorded["arm"], "run_flags": recorded["run_flags"]}


def final_run_mismatch(block, expected: dict) -> list:
    """What differs between a final run's `hpo` block and what this study would give it now (`expected`: the hpo
    record, or without best_params before they are known). Empty: the run is this study's and current."""
    if not isinstance(block, dict):
        return ["no hpo block: not made by hpo.py"]
    differs = []
    if (block.get("study_name"), block.get("study_uid")) != (expected["study_name"], expected["study_uid"]):
        differs.append(f"made by study {block.get('study_name')} in {block.get('storage')} (id "
                       f"{block.get('study_uid') or 'not recorded'}), not by this one (id {expected['study_uid']})")
    if "run_flags" not in block:
        differs.append("its run flags are not recorded (made by an older hpo.py)")
    else:
        differs += run_differences(block.get("arm"), block["run_flags"], expected["arm"], expected["run_flags"])
    if "best_params" in expected:
        differs += [f"best {d}" for d in differences(block.get("best_params") or {}, expected["best_params"],
                                                     absent="not searched")]
    return differs


def run_differences(arm_there, flags_there: dict, arm_now, flags_now: dict) -> list:
    """The arm and fixed flags that differ. A flag recorded by an older harness that no longer defines a study
    (arguments.STUDY_MAY_DIFFER) is not compared."""
    arm = [f"arm {arm_there!r} there, {arm_now!r} now"] if arm_there != arm_now else []
    there = {flag: value for flag, value in canonical_flags(flags_there).items() if flag not in STUDY_MAY_DIFFER}
    return arm + differences(there, flags_now)


def differences(there: dict, now: dict, absent=None) -> list:
    """'flag A there, B now' for each differing value. A flag only one side has (an older or newer harness) counts
    as its parsed default when the harness knows it; else as `absent`."""
    defaults = default_flags() if absent is None else {}
    lines = []
    for key in sorted(set(there) | set(now)):
        a, b = there.get(key, defaults.get(key, absent)), now.get(key, defaults.get(key, absent))
        if a != b:
            lines.append(f"{key} {a!r} there, {b!r} now")
    return lines


@lru_cache(maxsize=1)
def default_flags() -> dict:
    return fixed_run_flags(parse_args(["--task", "rte"]), searched=())


def shown(differs: list) -> str:
    more = f"; and {len(differs) - SHOWN} more" if len(differs) > SHOWN else ""
    return "; ".join(differs[:SHOWN]) + more
