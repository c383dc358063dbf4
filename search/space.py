"""Search space files (configs/search/*.yaml), in the proposal's format:

    run:                      # run_glue_peft.py flags fixed for every trial and final run
      method: glora
    optuna:
      n_trials: 25
      direction: maximize
      metric: combined_score  # the task's main metric(s), as run_glue_peft.py logs them without `eval_`
      search_space:           # keyed by run_glue_peft.py flag names
        learning_rate: {type: loguniform, low: 1.0e-4, high: 5.0e-4}
        per_device_train_batch_size: {type: categorical, choices: [16, 32, 64]}

Types: loguniform and uniform (low, high: floats), int (low, high: integers, both included), categorical (choices).
`optuna.n_trials` (>= 1) and a non-empty `search_space` are required: hpo.py's `--n_trials 0` is the only way to
final runs without a search.
"""

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.arguments import DataArguments, ModelArguments, PeftArguments
from harness.training_arguments import GlueTrainingArguments

SPACE_TYPES = ("loguniform", "uniform", "int", "categorical")
RUN_FLAGS = {f.name for group in (ModelArguments, DataArguments, PeftArguments, GlueTrainingArguments)
             for f in dataclasses.fields(group)}
SECTIONS = ("run", "optuna")
OPTUNA_KEYS = ("n_trials", "direction", "metric", "search_space")


@dataclass(frozen=True)
class SearchConfig:
    path: str
    run: dict  # fixed flags: name -> value
    space: dict  # flag -> {"type": ..., "low"/"high" or "choices"}
    n_trials: int
    direction: str  # maximize | minimize
    metric: str


def load_search_config(path) -> SearchConfig:
    """The file, checked: its sections and keys, known flags, known types, both bounds, in order. Each mistake is one
    ValueError line naming the file and the key. A file always searches: `optuna.search_space` names at least one
    flag and `optuna.n_trials` is >= 1, so that a typo can never turn a study into 0 trials followed by final runs
    (hpo.py's `--n_trials 0` is the explicit "no search"). PyYAML reads `1e-4` as text; bounds are cast."""
    raw = read_space_file(path)
    optuna_section = mapping_at(raw, "optuna", path, required=True)
    check_keys(optuna_section, OPTUNA_KEYS, path, "key in optuna:")
    run = mapping_at(raw, "run", path, required=False)
    searched = mapping_at(optuna_section, "search_space", path, required=True, where="optuna.")
    space = {flag: check_spec(flag, spec, path) for flag, spec in searched.items()}
    unknown = sorted(set(run) - RUN_FLAGS) + sorted(set(space) - RUN_FLAGS)
    if unknown:
        raise ValueError(f"{path}: {unknown} are not run_glue_peft.py flags{did_you_mean(unknown[0], RUN_FLAGS)}.")
    both = sorted(set(run) & set(space))
    if both:
        raise ValueError(f"{path}: {both} are both fixed (run) and searched (search_space).")
    direction = optuna_section.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"{path}: optuna.direction is maximize or minimize, got {direction!r}.")
    return SearchConfig(path=str(path), run=run, space=space, n_trials=check_n_trials(optuna_section, path),
                        direction=direction, metric=str(optuna_section.get("metric", "combined_score")))


def read_space_file(path) -> dict:
    """The file's top-level mapping; an unreadable, empty or non-mapping file, or an unknown section, is refused."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such search-space file.")
    try:
        raw = yaml.safe_load(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected YAML with `run:` and `optuna:` sections.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or error}).") from None
    if raw is None:
        raise ValueError(f"{path}: the file is empty; expected an `optuna:` section with n_trials and search_space "
                         "(and optionally `run:`), as in configs/search/*.yaml.")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with `run:` and `optuna:` sections, got a {type(raw).__name__}.")
    check_keys(raw, SECTIONS, path, "section")
    return raw


def check_keys(mapping: dict, known: tuple, path, what: str):
    for key in mapping:
        if key not in known:
            raise ValueError(f"{path}: unknown {what} {key!r}{did_you_mean(key, known)}; expected one of "
                             f"{', '.join(known)}.")


def did_you_mean(name, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def mapping_at(parent: dict, key: str, path, required: bool, where: str = "") -> dict:
    value = parent.get(key)
    if value is None:
        if required:
            raise ValueError(f"{path}: {where}{key} is missing (or empty); every search-space file has one.")
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where}{key} must be a mapping (key: value lines), got a {type(value).__name__}.")
    if required and not value:
        raise ValueError(f"{path}: {where}{key} is empty; name at least one flag to search.")
    return dict(value)


def check_n_trials(optuna_section: dict, path) -> int:
    n_trials = optuna_section.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"{path}: optuna.n_trials must be an integer >= 1, got {n_trials!r} (for final runs without a "
                         "search, pass hpo.py --n_trials 0).")
    return n_trials


def check_spec(flag: str, spec: dict, path) -> dict:
    where = f"{path}: search_space.{flag}"
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in SPACE_TYPES:
        raise ValueError(f"{where}: type must be one of {SPACE_TYPES}, got {spec!r}.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}: categorical needs a non-empty list of choices.")
        return {"type": kind, "choices": choices}
    cast = int if kind == "int" else float
    bounds = []
    for bound in ("low", "high"):
        if spec.get(bound) is None:
            raise ValueError(f"{where}: {kind} needs low and high; {bound} is missing.")
        try:
            bounds.append(cast(spec[bound]))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {bound} {spec[bound]!r} is not {'an integer' if kind == 'int' else 'a number'}.") \
                from None
    low, high = bounds
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{where}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {low}, {high}.")
    return {"type": kind, "low": low, "high": high}


def sample(trial, space: dict) -> dict:
    """One value per flag from an Optuna trial (a retried trial gets its recorded values back)."""
    params = {}
    for flag, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            params[flag] = trial.suggest_categorical(flag, spec["choices"])
        elif kind == "int":
            params[flag] = trial.suggest_int(flag, spec["low"], spec["high"])
        else:
            params[flag] = trial.suggest_float(flag, spec["low"], spec["high"], log=kind == "loguniform")
    return params

