"""The harness's run as a newcomer meets it: a failed start that does not block its own rerun, the single-process
warning of `accelerate launch --cpu --num_processes N`, and what a GLoRA run records of its allocation and its CPU
time."""

import json
import logging

import pytest
from conftest import trial_args

import run_glue_peft
from harness.records import RUN_ARGS_FILE
from run_glue_peft import main, warn_single_process_launch


def run(model_dir, data_dir, out, *extra):
    return main(trial_args(model_dir, data_dir, "sst2", "glora", out, *extra))


def test_a_run_that_fails_at_trainer_construction_does_not_block_the_same_command(tiny_bert, glue_dir, tmp_path):
    """--report_to tensorboard without tensorboard: the Trainer's construction fails after run_args.json was written;
    the folder is left as if the run never started, so the same command fails for the same reason (not as an
    unfinished run), and once the cause is gone it runs."""
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed: --report_to tensorboard would not fail")
    except ImportError:
        pass
    data, out = glue_dir("sst2"), tmp_path / "out"
    for attempt in range(2):
        with pytest.raises(RuntimeError, match="TensorBoardCallback requires tensorboard"):
            run(tiny_bert, data, out, "--max_steps", "2", "--report_to", "tensorboard")
        assert not (out / RUN_ARGS_FILE).exists()
    results = run(tiny_bert, data, out, "--max_steps", "2")
    assert results["glora_reallocated"] is True and (out / "all_results.json").is_file()


def test_a_failed_resume_or_replacement_keeps_its_folder(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """Only a fresh start is forgotten: a failure while --overwrite_output_dir replaces a run leaves the new
    run_args.json (the old run waits in OUTPUT_DIR.replaced, to be deleted by the run that replaces it)."""
    data, out = glue_dir("sst2"), tmp_path / "out"
    run(tiny_bert, data, out, "--max_steps", "2")

    def fails(*args, **kwargs):
        raise RuntimeError("construction failed")

    monkeypatch.setattr(run_glue_peft, "build_trainer", fails)
    with pytest.raises(RuntimeError, match="construction failed"):
        run(tiny_bert, data, out, "--max_steps", "2", "--overwrite_output_dir", "True")
    assert sorted(p.name for p in out.iterdir()) == [RUN_ARGS_FILE]
    assert (tmp_path / "out.replaced" / "all_results.json").is_file()


def test_a_glora_run_records_its_reallocation_and_cpu_time(tiny_bert, glue_dir, tmp_path):
    """all_results.json: glora_reallocated and this process's CPU seconds of training beside the wall-clock; ranks.json:
    reallocated, the cap as asked (the harness's default: none, the proposal's) and as resolved."""
    out = tmp_path / "out"
    results = run(tiny_bert, glue_dir("sst2"), out, "--max_steps", "2")
    assert results["glora_reallocated"] is True
    assert 0 < results["train_process_cpu_seconds"]
    glora = json.loads((out / "ranks.json").read_text())["glora"]
    assert (glora["reallocated"], glora["reallocation_step"], glora["max_rank"], glora["rank_cap"]) == (True, 1, None, None)
    resolved = json.loads((out / RUN_ARGS_FILE).read_text())["resolved"]["glora"]
    assert (resolved["max_rank"], resolved["warn_share"]) == (None, 0.25)
    record = json.loads((out / "gradnorm_rank.json").read_text())
    assert {name: m["rank"] for name, m in record["modules"].items()} == {
        name: m["final_rank"] for name, m in json.loads((out / "ranks.json").read_text())["modules"].items()}


@pytest.mark.parametrize("env, warned", [
    ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, True),  # accelerate launch --cpu --num_processes 2
    ({"ACCELERATE_USE_CPU": "True"}, False),  # accelerate launch --cpu (one process asked)
    ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "1"}, False),  # torchrun, 1 process
])
def test_accelerate_cpu_several_processes_that_start_one_is_warned(monkeypatch, caplog, env, warned):
    """What accelerate's simple launcher sets for --cpu --num_processes 2 (seen on this machine: ACCELERATE_USE_CPU
    True, MASTER_ADDR, no WORLD_SIZE / RANK) with a world size of 1 gives the warning; nothing else does."""
    for name in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING):
        warn_single_process_launch(1)
    assert ("accelerate launch --cpu --num_processes N started a single process (world size 1); for N CPU processes "
            "use torchrun --nproc_per_node N run_glue_peft.py ... --use_cpu True." in caplog.messages) == warned
