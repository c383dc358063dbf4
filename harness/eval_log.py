"""Evaluations during training, appended to `<output_dir>/eval_log.jsonl` as they happen, one JSON object a line:

    {"step": 32, "max_steps": 125, "split": "tuning", "examples_per_step": 16, "structure_final_step": 41,
     "seconds": 57.3, "metrics": {"accuracy": 0.81, "runtime": 3.2, ...}}

`structure_final_step` is the step of the method's last structural change (plan.RunPlan.structure_final_step):
hpo.py never prunes a trial on an evaluation at or before it. `seconds` is the wall-clock time since training began,
this evaluation included (its own `runtime` is among the metrics): what a trial stopped here would have cost.

hpo.py reads this file while a trial runs: each line is an intermediate value for Optuna's pruner, and the last
line is the trial's result. The callback also makes the last training step an evaluation step (when the run
evaluates at all), so that the log always ends with the model as trained.
"""

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from harness.records import EVAL_LOG


class EvalLog(TrainerCallback):
    def __init__(self, output_dir, split: str, structure_final_step: int = 0, resuming: bool = False):
        self.path = Path(output_dir, EVAL_LOG)
        self.split = split
        self.structure_final_step = structure_final_step
        self.resuming = resuming  # a resumed run appends to the log of the evaluations before its checkpoint
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        if state.is_world_process_zero and self.path.exists() and not self.resuming:
            self.path.unlink()  # a rerun into the same directory starts a new log

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps and args.eval_strategy != "no":
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics:
            return
        prefix = "eval_tuning_" if self.split == "tuning" else "eval_"
        record = {
            "step": state.global_step, "max_steps": state.max_steps, "split": self.split,
            "examples_per_step": args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "structure_final_step": self.structure_final_step,
            "seconds": round(time.monotonic() - self.started, 3),
            "metrics": {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
