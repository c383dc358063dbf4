"""Checkpoints a run can continue from: what defines the run (its identity), when a checkpoint is complete (its
seal), and how far the run had come (its progress).

A `checkpoint-N` folder is written by several hands in turn: the Trainer (adapter, optimizer, scheduler, RNG state,
trainer_state.json), then the callbacks' `on_save` (GLoRA's glora_state.json), then `CheckpointSeal`, the last
callback: it writes run_identity.json and, last of all, checkpoint_complete.json, which lists every file of the
folder with its size and records the run's progress at that step (whole-run training seconds and summed loss). A
folder without a valid seal is incomplete (a kill during the save, or a checkpoint of a version without seals) and
is never resumed from; a file whose size differs from the seal's was truncated or changed after the save.
"""

import json
import re
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from harness.arguments import FLAG_GROUPS, RESUME_MAY_CHANGE, added_since_release, canonical_targets
from harness.records import recorded_trial_run, write_json_atomic

IDENTITY_FILE = "run_identity.json"  # in every checkpoint: `identity_of` the run that wrote it
SEAL_FILE = "checkpoint_complete.json"  # written last: the checkpoint's files and sizes, and the run's progress
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
REQUIRED_FILES = ("adapter_model.safetensors", "trainer_state.json", IDENTITY_FILE)  # a checkpoint of any method
NO_PROGRESS = {"global_step": 0, "train_runtime": 0.0, "train_loss_sum": 0.0}
SHOWN_DIFFERENCES = 6  # differences named in one refusal line


# ---- identity: what a resume may not change ----


def identity_of(run_args: dict) -> dict:
    """What defines a run: its run_args.json (every flag as asked, and the plan as resolved) without the flags a
    resume may change (`arguments.RESUME_MAY_CHANGE`) and without the resolved output_dir. Deny by default: a flag
    added later is part of the identity without being listed here."""
    normal = json.loads(json.dumps(run_args, default=str))  # as it reads back from JSON: tuples are lists
    identity = {}
    for key, value in normal.items():
        if key in FLAG_GROUPS:
            value = {flag: v for flag, v in value.items() if flag not in RESUME_MAY_CHANGE}
        elif key == "resolved":
            value = {name: v for name, v in value.items() if name != "output_dir"}
        identity[key] = value
    return identity


def identity_differences(saved: dict, current: dict) -> list:
    """'--flag THERE there, HERE here' for every flag that differs; the resolved plan's and the data's differences
    only when no flag differs (they follow from the flags, or say that the data or model changed under the same
    flags). A nested value is compared leaf by leaf, so that a difference names what changed in it (`data_fingerprint.
    train.sha256`, one module's rank of a pattern), not the whole value twice; at most SHOWN_DIFFERENCES are named.
    An identity saved before the data's content was recorded is compared without it (its data paths still are)."""
    saved = as_resolved_now(saved)
    if "data_fingerprint" not in saved:
        current = {key: value for key, value in current.items() if key != "data_fingerprint"}
    there, here = dict(_named_values(saved)), dict(_named_values(current))
    names = list(here) + [name for name in there if name not in here]
    differing = [name for name in names if there.get(name, "(absent)") != here.get(name, "(absent)")]
    flags = [name for name in differing if name.startswith("--")] or differing
    lines = [f"{name} {there.get(name, '(absent)')} there, {here.get(name, '(absent)')} here"
             for name in flags[:SHOWN_DIFFERENCES]]
    return lines + ([f"and {len(flags) - SHOWN_DIFFERENCES} more"] if len(flags) > SHOWN_DIFFERENCES else [])


def as_resolved_now(identity: dict) -> dict:
    """A saved identity with the values its harness ran but did not record: the keys added since the release
    (`arguments.ADDED_SINCE_RELEASE`) at their defaults, `resolved.eva` None when it predates the EVA arm, and
    `resolved.trial_run`, recorded since --trial_run may be left unset, as `records.recorded_trial_run` reads an older record. The flags it holds stay as saved, so a flag
    asked otherwise is still named."""
    added, out = added_since_release(), dict(identity)
    if isinstance(out.get("peft"), dict):
        out["peft"] = {**added["peft"], **out["peft"]}
    resolved, training = out.get("resolved"), out.get("training")
    if isinstance(resolved, dict):
        resolved = dict(resolved)
        if isinstance(resolved.get("glora"), dict):
            resolved["glora"] = {**added["glora"], **resolved["glora"]}
        if isinstance(out.get("peft"), dict) and "eva_rho" not in identity.get("peft", {}):
            resolved.setdefault("eva", None)  # saved before the EVA arm existed: none of its runs is one
        if "trial_run" not in resolved and isinstance(training, dict):
            resolved["trial_run"] = recorded_trial_run(training, resolved)
        out["resolved"] = resolved
    return out


def _named_values(identity: dict):
    for key, value in identity.items():
        if key in FLAG_GROUPS and isinstance(value, dict):
            for flag, v in value.items():
                yield f"--{flag}", canonical_targets(v) if flag == "target_modules" and isinstance(v, list) else v
        elif key == "resolved" and isinstance(value, dict):
            for name, v in value.items():
                yield from _leaves(f"resolved {name}", v)
        else:
            yield from _leaves(key, value)


def _leaves(name: str, value):
    """(name.key..., leaf) of a nested value: objects by key, lists of [name, value] pairs (a rank pattern's ranks)
    by their names; any other value is a leaf."""
    if isinstance(value, list) and value and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                                                 for v in value):
        value = dict(value)
    if isinstance(value, dict) and value:
        for key, v in value.items():
            yield from _leaves(f"{name}.{key}", v)
    else:
        yield name, value


# ---- the seal: a checkpoint is complete when every file is in place ----


def seal(folder: Path, progress: dict):
    """checkpoint_complete.json, written last: every file of the folder with its size, and the run's progress."""
    files = {path.relative_to(folder).as_posix(): path.stat().st_size for path in sorted(folder.rglob("*"))
             if path.is_file() and path.name != SEAL_FILE and not path.name.endswith(".tmp")}
    write_json_atomic(folder / SEAL_FILE, {**progress, "files": files})


def unseal(folder: Path):
    """Before a checkpoint folder is (re)written: until sealed again it is not complete."""
    Path(folder, SEAL_FILE).unlink(missing_ok=True)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from, as one phrase naming the file and what is wrong; None if complete."""
    seal_file = Path(folder, SEAL_FILE)
    if not seal_file.is_file():
        return (f"{seal_file.name} is missing: the checkpoint is incomplete (its save was interrupted) or was written "
                "by a version without checkpoint seals, so its files cannot be checked")
    try:
        files = json.loads(seal_file.read_text()).get("files")
    except (ValueError, AttributeError):
        return f"{seal_file} is not valid JSON (empty or truncated)"
    if not isinstance(files, dict):
        return f"{seal_file} lists no files"
    for name in REQUIRED_FILES:
        if name not in files:
            return f"{Path(folder, name)} is missing (not in the checkpoint when it was saved)"
    for name, size in files.items():
        path = Path(folder, name)
        if not path.is_file():
            return f"{path} is missing (the checkpoint held {size} bytes of it)"
        if path.stat().st_size != size:
            return (f"{path} holds {path.stat().st_size} bytes, the checkpoint saved {size}: truncated or changed after "
                    "the save")
        if name.endswith(".json") and not _is_json(path):
            return f"{path} is not valid JSON"
    return None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def checkpoints_newest_first(output_dir) -> list:
    folders = [p for p in Path(output_dir).iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)] \
        if Path(output_dir).is_dir() else []
    return sorted(folders, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)), reverse=True)


def newest_complete_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint-N in output_dir that `checkpoint_problem` finds nothing wrong with."""
    return next((folder for folder in checkpoints_newest_first(output_dir) if checkpoint_problem(folder) is None), None)


def read_progress(folder) -> dict:
    """The run's progress when the (complete) checkpoint was saved: global_step, and the whole run's train_runtime
    and train_loss_sum up to it."""
    saved = json.loads(Path(folder, SEAL_FILE).read_text())
    return {key: saved[key] for key in NO_PROGRESS}


class CheckpointSeal(TrainerCallback):
    """The last callback: at every checkpoint, after the Trainer's files and the other callbacks' (GLoRA's
    glora_state.json), run_identity.json and then the seal with the run's progress. `progress(seconds)` gives the
    whole-run figures after `seconds` of training in this process."""

    def __init__(self, identity: dict, progress):
        self.identity = identity
        self.progress = progress
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()  # where the Trainer starts its train_runtime clock

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            write_json_atomic(folder / IDENTITY_FILE, self.identity)
            seal(folder, self.progress(time.time() - self.started))
