"""The pieces of hpo.py: the search space files (space), one trial as a run_glue_peft.py process (trial), the
Optuna study in its database and the worker loop (study), and what a search writes (report). docs/hpo.md."""
