"""GLoRA inside the real training loop: reallocation, optimizer rebuild, resume, and 2-process DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, trial_args, write_glue_fixture
from safetensors.torch import load_file

import run_glue_peft
from gradnorm_rank import GradNormRank


def losses(out):
    return [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def learning_rates(out):
    return [e["learning_rate"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
            if "learning_rate" in e]


STEPS, WARMUP, BASE_LR = 40, 10, 5e-3


@pytest.fixture(scope="module", params=["deberta", "bert"])
def reallocated_run(request, tiny_deberta, tiny_bert, tmp_path_factory):
    """A GLoRA run that reallocates at step 10 of 40, with the optimizer state seen around `GradNormRank.rebuild`."""
    model_dir = tiny_deberta if request.param == "deberta" else tiny_bert
    root = tmp_path_factory.mktemp(f"glora_{request.param}")
    seen = {}
    rebuild = GradNormRank.rebuild

    def spy(self, resized):
        optimizer = self.host.optimizer
        old_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.optimizer.state.items()}
        seen.update(old_lr=[g["lr"] for g in optimizer.param_groups], old_state=old_state)
        rebuild(self, resized)
        new_state = {p: {k: v.clone() for k, v in s.items()} for p, s in self.host.optimizer.optimizer.state.items()}
        seen.update(resized=resized, new_state=new_state, trainer=self.host.trainer)

    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GradNormRank, "rebuild", spy)
        seen["results"] = run_glue_peft.main(trial_args(
            model_dir, write_glue_fixture(root / "glue", "sst2", n_train=160), "sst2", "glora", out,
            "--max_steps", str(STEPS), "--glora_warmup_steps", str(WARMUP)))
    seen["record"] = json.loads((out / "ranks.json").read_text())
    seen["out"] = out
    return seen


def test_reallocation_happens_at_the_warmup_step_with_the_budget(reallocated_run):
    record = reallocated_run["record"]
    final = [m["final_rank"] for m in record["modules"].values()]
    assert record["glora"]["reallocation_step"] == WARMUP
    assert sum(final) == reallocated_run["results"]["rank_budget"] == 48 and len(set(final)) > 1
    assert sum(m["score"] for m in record["modules"].values()) == pytest.approx(1.0)


def test_adamw_state_of_kept_slices_carried_new_slices_zero(reallocated_run):
    old_state, new_state = reallocated_run["old_state"], reallocated_run["new_state"]
    resized = reallocated_run["resized"]
    assert [r for r in resized if r.new_rank > r.old_rank] and [r for r in resized if r.new_rank < r.old_rank]
    for r in resized:
        k = len(r.kept)
        for old, new, dim in ((r.old_A, r.new_A, 0), (r.old_B, r.new_B, 1)):
            before, after = old_state[old], new_state[new]
            assert torch.equal(after["step"], before["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert after[key].shape == new.shape
                assert torch.equal(after[key].narrow(dim, 0, k), before[key].index_select(dim, r.kept))
                assert not after[key].narrow(dim, k, new.shape[dim] - k).any()


def test_unchanged_parameters_keep_their_state_and_nothing_stale_is_optimized(reallocated_run):
    trainer = reallocated_run["trainer"]
    old_state, new_state = reallocated_run["old_state"], reallocated_run["new_state"]
    head = [p for n, p in trainer.model.named_parameters() if "classifier" in n and p.requires_grad]
    assert head and all(p in old_state and p in new_state for p in head)
    assert trainer.accelerator._optimizers == [trainer.optimizer]  # no stale optimizer left in accelerate
    optimized = {p for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {p for p in trainer.model.parameters() if p.requires_grad}


def test_learning_rate_continues_on_the_same_schedule(reallocated_run):
    expected = [BASE_LR * (STEPS - s) / STEPS for s in range(STEPS)]
    assert learning_rates(reallocated_run["out"]) == pytest.approx(expected, rel=1e-6)
    old_lr = reallocated_run["old_lr"]
    assert old_lr == pytest.approx([BASE_LR * (STEPS - WARMUP) / STEPS] * len(old_lr))


def test_it_still_learns_after_the_resize(reallocated_run):
    loss = losses(reallocated_run["out"])  # the fixture's label is carried by one word
    assert sum(loss[-5:]) / 5 < sum(loss[WARMUP : WARMUP + 5]) / 5 < sum(loss[:5]) / 5


def test_a_step_valued_preset_is_scaled_into_a_max_steps_run_and_fails_with_trial_run_false(tiny_bert, glue_dir,
                                                                                             tmp_path, caplog):
    """configs/glora_mnli.yaml's warm-up of 12000 steps (the proposal's) in a 2-step run: with --trial_run false an
    error, written before anything; with --max_steps alone (a trial run), scaled to half the run with its log line,
    and recorded."""
    preset, out = str(ROOT / "configs" / "glora_mnli.yaml"), tmp_path / "out"
    flags = trial_args(tiny_bert, glue_dir("mnli"), "mnli", "glora", out, "--max_steps", "2")
    with pytest.raises(ValueError, match=r"^GLoRA's warm-up of 12000 steps \(--glora_warmup_steps 12000\) never ends in "
                                         r"a run of 2 optimizer steps: .*\(--max_steps N, --trial_run unset or true\) "
                                         r"scales it into the run\.$"):
        run_glue_peft.main([preset, *flags, "--trial_run", "false"])
    assert not out.exists()
    run_glue_peft.main([preset, *flags])
    assert "GLoRA warm-up 12000 >= max_steps 2: trial run, reallocating at step 1." in caplog.text
    assert json.loads((out / "ranks.json").read_text())["glora"]["reallocation_step"] == 1
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["training"]["trial_run"] is None and run_args["resolved"]["trial_run"] is True
    assert run_args["peft"]["glora_warmup_steps"] == 12000
    assert run_args["resolved"]["glora"]["warmup_steps"] == 1  # the plan, in steps


def adapter(out):
    return load_file(out / "adapter_model.safetensors")


def test_resume_before_and_after_reallocation_matches_uninterrupted(tiny_deberta, glue_dir, tmp_path):
    data = glue_dir("rte")
    common = ["--max_steps", "10", "--glora_warmup_steps", "5", "--save_strategy", "steps", "--save_steps", "3",
              "--lora_dropout", "0.1"]
    full = tmp_path / "full"
    run_glue_peft.main(trial_args(tiny_deberta, data, "rte", "glora", full, *common))
    reference = adapter(full)
    state = json.loads((full / "checkpoint-6" / "glora_state.json").read_text())
    assert state["done"] and state["reallocation_step"] == 5
    assert not json.loads((full / "checkpoint-3" / "glora_state.json").read_text())["done"]
    for checkpoint in ("checkpoint-3", "checkpoint-6"):  # before and after the reallocation at step 5
        out = tmp_path / checkpoint
        run_glue_peft.main(trial_args(tiny_deberta, data, "rte", "glora", out, *common,
                                      "--resume_from_checkpoint", str(full / checkpoint)))
        resumed = adapter(out)
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert resumed[key].shape == reference[key].shape
            assert torch.allclose(resumed[key], reference[key], atol=1e-6), (checkpoint, key)
        assert json.loads((out / "ranks.json").read_text())["modules"] == json.loads((full / "ranks.json").read_text())["modules"]


def torchrun(nproc, args):
    out = Path(args[args.index("--output_dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
               str(ROOT / "tests" / "ddp_driver.py"), str(out), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_ddp_two_processes(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("sst2", n_train=96)
    # LoRA: B starts at zero, so the first loss is the random head's cross-entropy, about ln 2 on any batch.
    # transformers 5 with average_tokens_across_devices=True would report twice that under 2 processes.
    lora_args = ["--max_steps", "3", "--learning_rate", "1e-9"]
    single = torchrun(1, trial_args(tiny_bert, data, "sst2", "lora", tmp_path / "lora1", *lora_args))
    double = torchrun(2, trial_args(tiny_bert, data, "sst2", "lora", tmp_path / "lora2", *lora_args,
                                              "--per_device_train_batch_size", "4"))
    assert losses(double)[0] == pytest.approx(losses(single)[0], rel=0.05)

    # GLoRA with accumulation: same ranks on both processes, and bit-identical adapters after the resize.
    out = torchrun(2, trial_args(tiny_bert, data, "sst2", "glora", tmp_path / "glora", "--max_steps", "8",
                                           "--glora_warmup_steps", "3", "--gradient_accumulation_steps", "2",
                                           "--ddp_find_unused_parameters", "False"))
    rank0, rank1 = torch.load(out / "params_rank0.pt"), torch.load(out / "params_rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    record = json.loads((out / "ranks.json").read_text())
    shapes = {k: tuple(v.shape) for k, v in rank0.items() if "lora_A" in k}
    assert {s[0] for s in shapes.values()} == {m["final_rank"] for m in record["modules"].values()}
    assert len({m["final_rank"] for m in record["modules"].values()}) > 1
    assert json.loads((out / "run_args.json").read_text())["world_size"] == 2
