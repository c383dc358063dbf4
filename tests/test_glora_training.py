"""GLoRA inside the real training loop: reallocation, optimizer rebuild, resume, and 2-process DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, trial_args
from safetensors.torch import load_file

import run_glue_peft


def losses(out):
    return [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


def learning_rates(out):
    return [e["learning_rate"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"]
            if "learning_rate" in e]


@pytest.mark.parametrize("arch", ["deberta", "bert"])
def test_glora_reallocates_and_keeps_training(arch, tiny_deberta, tiny_bert, glue_dir, tmp_path, monkeypatch):
    model_dir = tiny_deberta if arch == "deberta" else tiny_bert
    seen = {}
    rebuild = run_glue_peft.GlueTrainer.rebuild_after_resize

    def spy(self, resized):
        old_state = {p: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.optimizer.state.items()}
        old_lr = [g["lr"] for g in self.optimizer.param_groups]
        rebuild(self, resized)
        new_state = {p: {k: v.clone() for k, v in s.items()} for p, s in self.optimizer.optimizer.state.items()}
        seen.update(resized=resized, old_state=old_state, new_state=new_state, old_lr=old_lr, trainer=self)

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "rebuild_after_resize", spy)
    out = tmp_path / "out"
    steps, warmup = 40, 10
    results = run_glue_peft.main(trial_args(model_dir, glue_dir("sst2", n_train=160), "sst2", "glora", out,
                                            "--max_steps", str(steps), "--glora_warmup_steps", str(warmup)))
    record = json.loads((out / "ranks.json").read_text())
    final = [m["final_rank"] for m in record["modules"].values()]
    assert record["glora"]["reallocation_step"] == warmup
    assert sum(final) == results["rank_budget"] == 48 and len(set(final)) > 1
    assert sum(m["score"] for m in record["modules"].values()) == pytest.approx(1.0)

    # AdamW state: kept slices carried over with their step count, new slices zero, unchanged params identical.
    trainer, old_state = seen["trainer"], seen["old_state"]
    new_state = seen["new_state"]
    grown = [r for r in seen["resized"] if r.new_rank > r.old_rank]
    shrunk = [r for r in seen["resized"] if r.new_rank < r.old_rank]
    assert grown and shrunk
    for r in seen["resized"]:
        k = len(r.kept)
        for old, new, dim in ((r.old_A, r.new_A, 0), (r.old_B, r.new_B, 1)):
            before, after = old_state[old], new_state[new]
            assert torch.equal(after["step"], before["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                assert after[key].shape == new.shape
                assert torch.equal(after[key].narrow(dim, 0, k), before[key].index_select(dim, r.kept))
                assert not after[key].narrow(dim, k, new.shape[dim] - k).any()
    head = [p for n, p in trainer.model.named_parameters() if "classifier" in n and p.requires_grad]
    assert head and all(p in old_state and p in new_state for p in head)
    # No stale optimizer left in accelerate; every trainable parameter is in the new optimizer.
    assert trainer.accelerator._optimizers == [trainer.optimizer]
    optimized = {p for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {p for p in trainer.model.parameters() if p.requires_grad}

    # The LR continues on the same linear schedule: no jump at the reallocation.
    base_lr = 5e-3
    expected = [base_lr * (steps - s) / steps for s in range(steps)]
    assert learning_rates(out) == pytest.approx(expected, rel=1e-6)
    assert seen["old_lr"] == pytest.approx([base_lr * (steps - warmup) / steps] * len(seen["old_lr"]))
    # It still learns after the resize (the fixture's label is carried by one word).
    loss = losses(out)
    assert sum(loss[-5:]) / 5 < sum(loss[warmup : warmup + 5]) / 5 < sum(loss[:5]) / 5


def test_trial_run_clamps_warmup(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_glue_peft.main(trial_args(tiny_bert, glue_dir("rte"), "rte", "glora", out, "--max_steps", "2",
                                  "--glora_warmup_steps", "12000"))
    assert json.loads((out / "ranks.json").read_text())["glora"]["reallocation_step"] == 1


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


DDP_DRIVER = """
import os, sys, torch
sys.path.insert(0, {root!r})
import run_glue_peft
out = sys.argv[1]
train = run_glue_peft.GlueTrainer.train
def train_and_dump(self, *args, **kwargs):
    result = train(self, *args, **kwargs)
    params = {{n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}}
    torch.save(params, os.path.join(out, f"params_rank{{os.environ['RANK']}}.pt"))
    return result
run_glue_peft.GlueTrainer.train = train_and_dump
run_glue_peft.main(sys.argv[2:])
"""


def torchrun(tmp_path, nproc, args):
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(DDP_DRIVER.format(root=str(ROOT)))
    out = Path(args[args.index("--output_dir") + 1])
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
               str(driver), str(out), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_ddp_two_processes(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("sst2", n_train=96)
    # LoRA: B starts at zero, so the first loss is the random head's cross-entropy, about ln 2 on any batch.
    # transformers 5 with average_tokens_across_devices=True would report twice that under 2 processes.
    lora_args = ["--max_steps", "3", "--learning_rate", "1e-9"]
    single = torchrun(tmp_path, 1, trial_args(tiny_bert, data, "sst2", "lora", tmp_path / "lora1", *lora_args))
    double = torchrun(tmp_path, 2, trial_args(tiny_bert, data, "sst2", "lora", tmp_path / "lora2", *lora_args,
                                              "--per_device_train_batch_size", "4"))
    assert losses(double)[0] == pytest.approx(losses(single)[0], rel=0.05)

    # GLoRA with accumulation: same ranks on both processes, and bit-identical adapters after the resize.
    out = torchrun(tmp_path, 2, trial_args(tiny_bert, data, "sst2", "glora", tmp_path / "glora", "--max_steps", "8",
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
