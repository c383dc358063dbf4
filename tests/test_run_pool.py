"""launch/run_pool.sh, the study launchers' pool of workers: a finished run is skipped only if it was made with the
flags asked now; one made with others (a restarted study whose chosen rate moved) is refused before any run starts."""

import os
import subprocess

from conftest import ROOT

# Stands in for the interpreter: `-c CODE` goes to python3 (the pool's done line); a run writes its all_results.json.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -c ]; then exec python3 "$@"; fi
while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && out=$2; shift; done
mkdir -p "$out" && echo '{"eval_combined_score": 0.5, "train_runtime": 1}' > "$out/all_results.json"
echo ran >> "$out/../ran.txt"
"""


def pool(tmp_path, *specs):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    script = f'source {ROOT}/launch/run_pool.sh; COMMON=(--task sst2); EXTRA=(); run_pool "$@"'
    return subprocess.run(["bash", "-c", script, "pool", *specs], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake), "STUDY_WORKERS": "2"}, timeout=60)


def test_a_finished_run_is_skipped_when_asked_again_with_the_same_flags(tmp_path):
    specs = [f"{tmp_path}/final/lora_seed1|--learning_rate 1e-3 --seed 1",
             f"{tmp_path}/final/lora_seed2|--learning_rate 1e-3 --seed 2"]
    assert pool(tmp_path, *specs).returncode == 0
    assert (tmp_path / "final" / "lora_seed1.flags").read_text() == "--task sst2 --learning_rate 1e-3 --seed 1 \n"
    again = pool(tmp_path, *specs)
    assert again.returncode == 0 and "start" not in again.stdout
    assert (tmp_path / "final" / "ran.txt").read_text().count("ran") == 2


def test_a_finished_run_made_with_other_flags_is_refused_in_one_line_before_any_run(tmp_path):
    assert pool(tmp_path, f"{tmp_path}/final/lora_seed1|--learning_rate 1e-3 --seed 1").returncode == 0
    moved = pool(tmp_path, f"{tmp_path}/final/lora_seed2|--learning_rate 3e-3 --seed 2",
                 f"{tmp_path}/final/lora_seed1|--learning_rate 3e-3 --seed 1")
    assert moved.returncode == 2 and moved.stderr.count("\n") == 1
    assert f"run_pool: {tmp_path}/final/lora_seed1 finished with other flags than asked now" in moved.stderr
    assert not (tmp_path / "final" / "lora_seed2").exists()  # refused before any run started
    assert (tmp_path / "final" / "lora_seed1.flags").read_text().startswith("--task sst2 --learning_rate 1e-3")


FAKE_LAUNCH = """#!/usr/bin/env bash
[ "$1" = -m ] || exit 0  # compare_runs.py at the sweep's end
while [ $# -gt 0 ]; do [ "$1" = --output_dir ] && out=$2; shift; done
mkdir -p "$out" && echo '{}' > "$out/all_results.json" && echo "$out" >> "$SWEEP_ROOT/ran.txt"
"""


def sweep(tmp_path, *extra):
    fake = tmp_path / "fake_launch"
    fake.write_text(FAKE_LAUNCH)
    fake.chmod(0o755)
    return subprocess.run(["bash", str(ROOT / "launch" / "sweep.sh"), *extra], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(fake), "SWEEP_ROOT": str(tmp_path / "sweep")}, timeout=60)


def test_a_sweep_after_a_trial_sweep_refuses_the_trial_runs_instead_of_keeping_them(tmp_path):
    """launch/sweep.sh --max_steps 2 (a trial), then the real sweep: the 27 finished trial runs are not real ones."""
    assert sweep(tmp_path, "--max_steps", "2").returncode == 0
    ran = (tmp_path / "sweep" / "ran.txt").read_text().split()
    assert len(ran) == 27 == len(set(ran))
    flags = (tmp_path / "sweep" / "rte" / "lora_seed42.flags").read_text()
    assert flags.startswith("configs/lora_rte.yaml sha256 ") and flags.endswith(" --seed 42 --max_steps 2\n")
    again = sweep(tmp_path, "--max_steps", "2")  # the same sweep restarted: everything is done already
    assert again.returncode == 0 and again.stdout.count("done already") == 27
    real = sweep(tmp_path)
    assert real.returncode == 2 and real.stderr.count("\n") == 1
    assert "sweep.sh: " in real.stderr and "rte/lora_seed42 finished with other flags or config" in real.stderr
    assert len((tmp_path / "sweep" / "ran.txt").read_text().split()) == 27  # nothing ran
