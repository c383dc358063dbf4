"""A stand-in for run_glue_peft.py in hpo.py's tests, quick to start (no torch, no transformers): it "trains" for
--max_steps steps of FAKE_STEP_SECONDS each and logs evaluations to eval_log.jsonl where and how a real run does
(every ceil(eval_steps x max_steps) steps and at the last one). Its score is a fixed function of the learning rate
(higher is better up to 1e-2), so a test knows which trial is good. FAKE_RUN_FAILS=1 makes it fail at its start.
Its records carry the step of the method's last structural change as plan.RunPlan.structure_final_step gives it
(GLoRA: --glora_warmup_steps or --glora_warmup_fraction, default a third; AdaLoRA: max_steps - --tfinal or
--tfinal_fraction, default 20 %; LoRA: 0).

At its start it writes fake_run.pid ("PID PARENT_PID"), so that a test can tell which worker started it and check that
it died with that worker. A run that finishes writes all_results.json with the keys records.Results requires (its
metrics eval_tuning_* under --eval_split tuning, as a real run's; no model, so no parameters and a budget of 0), and
run_args.json with its command line (`argv`, for the tests to parse with the real parser) and the hpo block, as
prepare_output_dir does. (It writes them as JSON: started as a script, it cannot import records.py.)
"""

import json
import math
import os
import sys
import time
from pathlib import Path


def score(learning_rate: float, progress: float) -> float:
    return min(learning_rate * 100, 1.0) * progress


def schedule_steps(flags: dict, flag: str, fraction_flag: str, default: float, total: int) -> int:
    if flags.get(flag):
        return int(flags[flag])
    return int(round(float(flags.get(fraction_flag) or default) * total))


def structure_final_step(flags: dict, max_steps: int) -> int:
    if flags.get("method") == "glora":
        return schedule_steps(flags, "glora_warmup_steps", "glora_warmup_fraction", 1 / 3, max_steps)
    if flags.get("method") == "adalora":
        return max_steps - schedule_steps(flags, "tfinal", "tfinal_fraction", 0.2, max_steps)
    return 0


def flags_of(argv) -> dict:
    """--name value ... -> {name: value}; later flags win, as in argparse."""
    flags, name = {}, None
    for token in argv:
        if token.startswith("--"):
            name = token[2:]
            flags[name] = None
        elif name is not None:
            flags[name] = token
    return flags


def main(argv):
    flags = flags_of(argv)
    if os.environ.get("FAKE_RUN_FAILS"):
        raise RuntimeError("fake run failed on purpose")
    out = Path(flags["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "fake_run.pid").write_text(f"{os.getpid()} {os.getppid()}")
    max_steps = int(flags.get("max_steps") or 8)
    interval = math.ceil(float(flags["eval_steps"]) * max_steps) if flags.get("eval_strategy") == "steps" else None
    lr = float(flags.get("learning_rate") or 2e-4)
    started = time.monotonic()
    for step in range(1, max_steps + 1):
        time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", "0.05")))
        if interval and (step % interval == 0 or step == max_steps):
            record = {"step": step, "max_steps": max_steps, "split": flags.get("eval_split"),
                      "examples_per_step": int(flags.get("per_device_train_batch_size") or 32),
                      "structure_final_step": structure_final_step(flags, max_steps),
                      "seconds": round(time.monotonic() - started, 3),
                      "metrics": {"combined_score": score(lr, step / max_steps), "runtime": 0.0}}
            with open(out / "eval_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    run_args = {"argv": argv}
    if flags.get("hpo_record"):
        run_args["hpo"] = json.loads(Path(flags["hpo_record"]).read_text())
    (out / "run_args.json").write_text(json.dumps(run_args))
    prefix = "eval_tuning_" if flags.get("eval_split") == "tuning" else "eval_"  # a trial never scores dev
    results = {"task": flags["task"], "method": flags["method"], "seed": int(flags.get("seed") or 42), "rank_budget": 0,
               "train_runtime": time.monotonic() - started, "trainable_params": 0,
               f"{prefix}combined_score": score(lr, 1.0), f"{prefix}accuracy": score(lr, 1.0)}
    (out / "all_results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
