"""The GLUE harness's modules, behind the entry scripts at the repository root (run_glue_peft.py, hpo.py,
compare_runs.py, allocation_quality.py): every flag (arguments), the resolved numbers of a run (plan), the tasks and
their data (glue_tasks, glue_data, planted_task), the peft configs and AdaLoRA's callback (adapters), EVA's
initialisation (eva_init), fixed per-matrix ranks (rank_pattern), the run folder, its checkpoints and its records
(run_folder, checkpoints, records) and the evaluation log (eval_log). Imported as `from harness.records import ...`
from the root. GLoRA itself is the package gradnorm_rank, which imports nothing from here. docs/architecture.md."""
