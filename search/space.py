"""Search space files (configs/search/*.yaml), in the seed plan's format:

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
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from arguments import DataArguments, GlueTrainingArguments, ModelArguments, PeftArguments

SPACE_TYPES = ("loguniform", "uniform", "int", "categorical")
RUN_FLAGS = {f.name for group in (ModelArguments, DataArguments, PeftArguments, GlueTrainingArguments)
             for f in dataclasses.fields(group)}


@dataclass(frozen=True)
class SearchConfig:
    path: str
    run: dict  # fixed flags: name -> value
    space: dict  # flag -> {"type": ..., "low"/"high" or "choices"}
    n_trials: int
    direction: str  # maximize | minimize
    metric: str


def load_search_config(path) -> SearchConfig:
    """The file, checked: known flags, known types, bounds in order. PyYAML reads `1e-4` as text; bounds are cast."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    optuna_section = raw.get("optuna") or {}
    run = dict(raw.get("run") or {})
    space = {flag: check_spec(flag, spec) for flag, spec in (optuna_section.get("search_space") or {}).items()}
    unknown = sorted(set(run) - RUN_FLAGS) + sorted(set(space) - RUN_FLAGS)
    if unknown:
        raise ValueError(f"{path}: {unknown} are not run_glue_peft.py flags.")
    both = sorted(set(run) & set(space))
    if both:
        raise ValueError(f"{path}: {both} are both fixed (run) and searched (search_space).")
    direction = optuna_section.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"{path}: direction is maximize or minimize, got {direction!r}.")
    return SearchConfig(path=str(path), run=run, space=space, n_trials=int(optuna_section.get("n_trials", 0)),
                        direction=direction, metric=str(optuna_section.get("metric", "combined_score")))


def check_spec(flag: str, spec: dict) -> dict:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in SPACE_TYPES:
        raise ValueError(f"search_space.{flag}: type must be one of {SPACE_TYPES}, got {spec!r}.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"search_space.{flag}: categorical needs a non-empty list of choices.")
        return {"type": kind, "choices": choices}
    cast = int if kind == "int" else float
    low, high = cast(spec["low"]), cast(spec["high"])
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"search_space.{flag}: need {'0 < ' if kind == 'loguniform' else ''}low < high, got {low}, {high}.")
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

