"""The study's sampler: TPE with fixed settings, its random draws seeded per trial so that a search can be replayed.

With `--sampler_seed S`, trial number n draws from its own generator, seeded by SeedSequence([S, n]). What trial n
proposes then depends on S, on n and on the trials before it (TPE models them), not on which worker drew it or when
that worker started:

- one worker on a new study proposes the same trials for the same S, and a resumed worker goes on with the trials an
  uninterrupted one would have drawn (given the same trials before them);
- the workers of one study share S and still draw differently: no two trials share a number.

Without a seed, TPE draws from fresh entropy. The settings below are stored in the study (search/identity.py
pin_search), so a later hpo.py with other TPE settings is refused rather than mixing two samplers in one study.
"""

import numpy as np
import optuna

# Optuna 5's defaults for a single objective, spelt out so that they are recorded and a change of default is seen:
# 10 random start-up trials, 24 candidates per draw, the joint (multivariate) model of the parameters, and running
# trials counted as bad ("constant liar") so that parallel workers spread out.
TPE_SETTINGS = {"n_startup_trials": 10, "n_ei_candidates": 24, "multivariate": True, "constant_liar": True}
SEEDING = "per trial: SeedSequence([sampler_seed, trial number])"


def sampler_record() -> dict:
    """The sampler as stored in the study (what a worker reopening it must match); its seed is stored beside it."""
    return {"class": "TPESampler", **TPE_SETTINGS, "seeding": SEEDING}


def check_sampler_seed(seed: int | None):
    if seed is not None and seed < 0:
        raise ValueError(f"--sampler_seed must be >= 0 (a SeedSequence entropy), got {seed}.")


def make_sampler(seed: int | None) -> optuna.samplers.BaseSampler:
    check_sampler_seed(seed)
    if seed is None:
        return optuna.samplers.TPESampler(**TPE_SETTINGS)
    return PerTrialSeededTPE(seed)


def trial_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class PerTrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose draws for trial n come from a TPESampler seeded by trial_seed(seed, n), made when the trial starts
    and dropped when it ends (TPE keeps no state between trials but its generator and caches)."""

    def __init__(self, seed: int):
        self.seed = seed
        self._by_number = {}

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number not in self._by_number:
            self._by_number[trial.number] = optuna.samplers.TPESampler(
                **TPE_SETTINGS, seed=trial_seed(self.seed, trial.number))
        return self._by_number[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self._by_number.pop(trial.number, None)

    def reseed_rng(self):
        """Nothing to reseed: each trial's generator is fixed by the seed and its number (optuna calls this for
        n_jobs > 1, where distinct numbers already give distinct draws)."""
