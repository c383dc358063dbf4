"""End-to-end runs of run_glue_peft.py on tiny random models and fixture data (CPU, offline)."""

import json
import logging
import math
import os
import shlex
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, trial_args
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import run_glue_peft
from harness.arguments import METHODS, check_args, parse_args
from harness.glue_tasks import GLUE_TASKS, glue_metrics

TASK_SHAPES = ["sst2", "rte", "stsb", "mnli"]  # single sentence, pair, regression, 3 classes + two dev splits


def run(model_dir, data_dir, task, method, out, *extra):
    return run_glue_peft.main(trial_args(model_dir, data_dir, task, method, out, *extra))


def reloaded_logits(model_dir, out, task, split):
    """Logits of the saved adapter, reloaded onto a fresh base model, on a dev split."""
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=GLUE_TASKS[task].num_labels)
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    frame = pd.read_parquet(out.parent / "glue" / task / f"{split}.parquet")
    texts = [frame[key].tolist() for key in GLUE_TASKS[task].text_keys]
    batch = tokenizer(*texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits.numpy(), frame["label"].to_numpy()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASK_SHAPES)
def test_method_on_task_shape(tiny_deberta, glue_dir, tmp_path, task, method):
    data = glue_dir(task)
    out = tmp_path / "out"
    extra = ["--tinit", "2", "--tfinal", "2", "--deltaT", "1"] if method == "adalora" else []
    results = run(tiny_deberta, data, task, method, out, "--max_steps", "8", *extra)

    for eval_split in GLUE_TASKS[task].eval_splits:
        split, suffix = eval_split.name, eval_split.metric_suffix
        if task == "stsb":
            assert -1 <= results[f"eval_pearson{suffix}"] <= 1 and -1 <= results[f"eval_spearmanr{suffix}"] <= 1
        else:
            assert 0 <= results[f"eval_accuracy{suffix}"] <= 1
            assert -1 <= results[f"eval_matthews_correlation{suffix}"] <= 1
        # The saved adapter reloads and reproduces the run's own dev predictions and loss.
        logits, labels = reloaded_logits(tiny_deberta, out, task, split)
        written = pd.read_csv(out / f"predictions_{split}.csv")
        assert written["idx"].tolist() == list(range(len(labels)))
        assert np.allclose(written["label"], labels)
        if task == "stsb":
            assert np.allclose(written["prediction"], logits[:, 0], atol=1e-5)
            loss = np.mean((logits[:, 0] - labels) ** 2)
        else:
            assert (written["prediction"].to_numpy() == logits.argmax(-1)).all()
            loss = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
        if method == "adalora":  # AdaLoRA's forward adds its orthogonality penalty to the loss
            assert results[f"eval_loss{suffix}"] > loss
        else:
            assert loss == pytest.approx(results[f"eval_loss{suffix}"], rel=1e-4)

    saved = json.loads((out / "all_results.json").read_text())
    assert saved["method"] == method and saved["task"] == task
    assert saved["rank_budget"] == 4 * 12 == saved["final_rank_total"]  # r=4 x 6 matrices x 2 layers
    assert saved["trainable_params"] == saved["trainable_params_adapter"] + saved["trainable_params_head"]
    record = json.loads((out / "ranks.json").read_text())
    assert sum(m["final_rank"] for m in record["modules"].values()) == 48
    assert json.loads((out / "run_args.json").read_text())["peft"]["method"] == method
    assert (out / "trainer_state.json").is_file()


@pytest.mark.parametrize("method", METHODS)
def test_max_steps_2_runs_every_method_with_its_default_fractions_unscaled(tiny_bert, glue_dir, tmp_path, caplog, method):
    """--max_steps 2 without --trial_run (a trial run, resolved and logged): the default schedules are fractions of
    the run and fit it, so nothing is scaled. GLoRA reallocates at round(2 x 1/3) = 1 and logs it; AdaLoRA's tinit and tfinal are
    round(0.2) = round(0.4) = 0 (with deltaT 10 it masks nothing in 2 steps: its ranks stay at init_r)."""
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        results = run(tiny_bert, glue_dir("rte"), "rte", method, out, "--max_steps", "2")
    run_args = json.loads((out / "run_args.json").read_text())
    resolved = run_args["resolved"]
    assert resolved["total_steps"] == 2 and run_args["training"]["trial_run"] is None and resolved["trial_run"] is True
    assert "--max_steps 2 without --trial_run: a trial run" in caplog.text
    assert ": trial run, " not in caplog.text  # no schedule was scaled
    assert results["rank_budget"] == 48 and results["final_rank_total"] == (72 if method == "adalora" else 48)
    parts = [results[f"method_overhead_{p}_seconds"] for p in ("signal", "resize", "grown_slice")]
    if method == "lora":
        assert results["method_overhead_seconds"] == 0 and parts == [0, 0, 0]  # no method work
    if method == "glora":
        assert resolved["glora"]["warmup_steps"] == 1
        glora = json.loads((out / "ranks.json").read_text())["glora"]
        assert glora["reallocation_step"] == 1 and "gradnorm_rank reallocated ranks at step 1: " in caplog.text
        # signal at step 1, the resize after it, the grown slices' correction at step 2; the total is their sum
        assert all(part > 0 for part in parts) and results["method_overhead_seconds"] == pytest.approx(sum(parts))
        assert {k: v for k, v in glora.items() if k.startswith("method_overhead")} == {
            k: v for k, v in results.items() if k.startswith("method_overhead")}
    if method == "adalora":
        assert (resolved["adalora"]["tinit"], resolved["adalora"]["tfinal"], resolved["adalora"]["total_step"]) == (0, 0, 2)


def readme_trial_flags() -> list:
    """The flags of the README's trial-run command (the bash block under **Trial run**)."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("**Trial run**"):].split("```bash\n", 1)[1].split("```", 1)[0]
    (command,) = [line for line in block.splitlines() if "run_glue_peft.py" in line]
    return shlex.split(command.split("run_glue_peft.py", 1)[1])


def test_readme_trial_run_works_as_written_with_the_proposals_lr_warmup(tiny_bert, glue_dir, tmp_path, caplog):
    """The README's trial command (`--max_steps 2`, no other switch) with the defaults it does not override, here the
    LR warm-up of 1000 steps: a trial run, whose warm-up is scaled into the 2 steps with its log line; GLoRA
    reallocates at step 1 and 64 dev rows are scored."""
    flags = readme_trial_flags()
    assert "--max_steps" in flags and "--trial_run" not in flags and "--warmup_steps" not in flags
    offline = trial_args(tiny_bert, glue_dir("mnli"), "mnli", "glora", tmp_path / "out")
    at = offline.index("--warmup_steps")
    del offline[at:at + 2]  # the default warm-up, as the README's command gets it
    with caplog.at_level(logging.INFO):
        results = run_glue_peft.main([*offline, *flags])
    assert "LR warm-up 1000 >= max_steps 2: trial run, warming up over 0 steps." in caplog.text
    assert "gradnorm_rank reallocated ranks at step 1: " in caplog.text
    run_args = json.loads((tmp_path / "out" / "run_args.json").read_text())
    assert (run_args["peft"]["method"], run_args["data"]["task"], run_args["data"]["max_eval_samples"]) == ("glora",
                                                                                                          "mnli", 64)
    assert run_args["resolved"]["trial_run"] is True and run_args["resolved"]["lr_warmup_steps"] == 0
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2
    assert 0 <= results["eval_accuracy"] <= 1


def test_adalora_ranks_change_and_sum_to_budget(tiny_deberta, glue_dir, tmp_path):
    out = tmp_path / "out"
    results = run(tiny_deberta, glue_dir("sst2"), "sst2", "adalora", out, "--max_steps", "30",
                  "--tinit", "4", "--tfinal", "8", "--deltaT", "2")
    record = json.loads((out / "ranks.json").read_text())
    initial = [m["initial_rank"] for m in record["modules"].values()]
    final = [m["final_rank"] for m in record["modules"].values()]
    assert initial == [6] * 12  # init_r = 1.5 x target_r (4)
    assert sum(final) == 48 and len(set(final)) > 1
    assert record["adalora"]["total_step"] == 30 and results["method_overhead_seconds"] > 0
    assert record["adalora"]["method_overhead_seconds"] == results["method_overhead_seconds"]
    assert [results[f"method_overhead_{p}_seconds"] for p in ("signal", "resize", "grown_slice")] == [None] * 3
    # The saved adapter holds the pruned ranks: the reloaded A matrices have the final widths.
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"]


def test_adalora_resumes_exactly_during_and_after_its_pruning(tiny_bert, glue_dir, tmp_path):
    """peft keeps AdaLoRA's sensitivity EMAs in memory only and saves its adapter pruned to the rank pattern; the
    checkpoints carry both (adalora_state.pt, full-width tensors), so a resume ends where the uninterrupted run did."""
    data, full = glue_dir("sst2"), tmp_path / "full"
    common = ["--max_steps", "12", "--tinit", "2", "--tfinal", "4", "--deltaT", "1", "--save_strategy", "steps",
              "--save_steps", "4"]
    finished = run(tiny_bert, data, "sst2", "adalora", full, *common)
    reference = load_file(full / "adapter_model.safetensors")
    for checkpoint in ("checkpoint-4", "checkpoint-12"):  # while pruning; the last step (trains nothing)
        out = tmp_path / checkpoint
        results = run(tiny_bert, data, "sst2", "adalora", out, *common, "--resume_from_checkpoint", str(full / checkpoint))
        resumed = load_file(out / "adapter_model.safetensors")
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert torch.allclose(resumed[key], reference[key], atol=1e-6), (checkpoint, key)
        assert json.loads((out / "ranks.json").read_text())["modules"] == json.loads((full / "ranks.json").read_text())["modules"]
        assert results["train_loss"] == pytest.approx(finished["train_loss"], rel=1e-6)


def test_trainable_parameters_equal_across_methods_at_same_budget(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("rte")
    lora = run(tiny_bert, data, "rte", "lora", tmp_path / "lora", "--max_steps", "4")
    glora = run(tiny_bert, data, "rte", "glora", tmp_path / "glora", "--max_steps", "4", "--glora_warmup_steps", "2")
    # Every BERT matrix here has d_in + d_out = 64 or 96; equal totals need the same per-rank cost, so compare
    # with the ranks actually assigned.
    record = json.loads((tmp_path / "glora" / "ranks.json").read_text())
    expected = sum(m["final_rank"] * (m["d_in"] + m["d_out"]) for m in record["modules"].values())
    assert glora["trainable_params_adapter"] == expected == glora["adapter_params_after_allocation"]
    assert lora["trainable_params_adapter"] == glora["adapter_params_start"]
    assert lora["trainable_params_head"] == glora["trainable_params_head"]


def test_glue_metrics_hand_computed():
    logits = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])  # predicts 0, 1, 1, 0
    labels = np.array([0, 1, 0, 0])
    m = glue_metrics("mrpc", logits, labels)
    assert m["accuracy"] == 0.75
    assert m["f1"] == pytest.approx(2 / 3)  # tp 1, fp 1, fn 0
    # MCC = (tp tn - fp fn) / sqrt(...) = (1*2 - 1*0) / sqrt(2*1*3*2)
    assert m["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))
    assert m["combined_score"] == pytest.approx((0.75 + 2 / 3) / 2)
    # Constant predictions: MCC and F1 are 0, not NaN.
    constant = glue_metrics("qqp", np.tile([1.0, 0.0], (4, 1)), np.array([0, 1, 0, 1]))
    assert constant["matthews_correlation"] == 0.0 and constant["f1"] == 0.0 and constant["accuracy"] == 0.5
    assert "f1" not in glue_metrics("sst2", logits, labels)
    stsb = glue_metrics("stsb", np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([1.0, 2.0, 3.0, 5.0]))
    assert stsb["spearmanr"] == pytest.approx(1.0)
    assert stsb["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 5])[0, 1])
    mnli = glue_metrics("mnli", np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 2, 1]))
    assert mnli["accuracy"] == 0.75 and 0 < mnli["matthews_correlation"] < 1


@pytest.mark.parametrize(
    "change, message",
    [
        (["--task", "nope"], "Unknown --task"),
        (["--method", "dora"], "Unknown --method"),
        (["--glora_signal", "fisher"], "Unknown --glora_signal"),
        (["--target_modules", "query", "gate"], "Unknown --target_modules"),
        (["--method", "adalora", "--tinit", "5", "--tfinal", "5"], "does not fit"),  # 8 steps in the epoch
        (["--method", "glora", "--glora_warmup_steps", "500"], "never ends"),
        (["--method", "glora", "--rank_budget", "6"], "below GLoRA.s floor: --glora_min_rank 1 on each of the 12 matrices"),
        (["--method", "glora", "--load_best_model_at_end", "True", "--eval_strategy", "steps", "--save_strategy",
          "steps"], "load_best_model_at_end"),
    ],
)
def test_bad_arguments_fail_before_training(tiny_bert, glue_dir, tmp_path, change, message):
    out = tmp_path / "out"
    args = trial_args(tiny_bert, glue_dir("rte"), "rte", "lora", out, "--num_train_epochs", "1") + change
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_glue_peft.main(args)
    assert not out.exists()  # stopped before run_args.json, checkpoints or results


def test_bad_data_fails_before_training(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("rte")
    frame = pd.read_parquet(data / "rte" / "train.parquet")
    frame.rename(columns={"sentence2": "hypothesis"}).to_parquet(data / "rte" / "train.parquet")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['sentence2'\]"):
        run(tiny_bert, data, "rte", "lora", out, "--max_steps", "2")
    # Three classes in a two-class task.
    frame.assign(label=frame["label"] + (frame.index % 3 == 0)).to_parquet(data / "rte" / "train.parquet")
    with pytest.raises(ValueError, match=r"rte has labels 0..1; train holds \[2\]"):
        run(tiny_bert, data, "rte", "lora", out, "--max_steps", "2")
    frame.assign(label=-1).to_parquet(data / "rte" / "train.parquet")
    with pytest.raises(ValueError, match="unlabelled test split"):
        run(tiny_bert, data, "rte", "lora", out, "--max_steps", "2")
    glue_dir("mnli")
    (data / "mnli" / "validation_matched.parquet").rename(data / "mnli" / "validation.parquet")
    with pytest.raises(FileNotFoundError, match="No validation_matched split"):
        run(tiny_bert, data, "mnli", "lora", out, "--max_steps", "2")
    assert not (out / "all_results.json").exists()


def test_finished_run_is_not_overwritten(tiny_bert, glue_dir, tmp_path):
    data, out = glue_dir("sst2"), tmp_path / "out"
    run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2")
    with pytest.raises(FileExistsError, match="holds a finished run"):
        run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2")
    run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2", "--overwrite_output_dir", "True")
    assert (out / "all_results.json").is_file()


def test_overwrite_keeps_the_old_run_whole_until_the_new_one_finishes(tiny_bert, glue_dir, tmp_path, monkeypatch, caplog):
    data, out, aside = glue_dir("sst2"), tmp_path / "out", tmp_path / "out.replaced"
    run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "2")
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "train", killed)
    for attempt in range(2):  # an attempt that fails twice leaves one copy of the old run, not two
        with pytest.raises(KeyboardInterrupt):
            run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "2", "--seed", "3", "--overwrite_output_dir", "True")
        assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == old
        assert sorted(p.name for p in out.iterdir()) == ["run_args.json"]  # the new run's only: nothing old mixed in
        assert json.loads((out / "run_args.json").read_text())["training"]["seed"] == 3
    assert f"the run in {out} was moved to {aside}; it is deleted when this run finishes" in caplog.text
    monkeypatch.undo()
    results = run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "2", "--seed", "3", "--overwrite_output_dir", "True")
    assert results["seed"] == 3 and json.loads((out / "all_results.json").read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]  # no copy, no lock left


def test_after_a_killed_overwrite_the_refusal_of_a_plain_rerun_says_where_the_old_run_is(tiny_bert, glue_dir, tmp_path,
                                                                                         monkeypatch):
    data, out, aside = glue_dir("sst2"), tmp_path / "out", tmp_path / "out.replaced"
    run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "1")

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "1", "--overwrite_output_dir", "True")
    with pytest.raises(FileExistsError) as refused:
        run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "1")
    line = str(refused.value)
    assert line.startswith(f"{out} holds an unfinished run") and "\n" not in line
    assert f"the run it replaced is whole in {aside}, deleted once a run in its place finishes" in line
    assert (aside / "all_results.json").is_file()


def test_config_file_with_cli_override(tiny_bert, glue_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"task: sst2\nmethod: adalora\nmodel_name_or_path: {tiny_bert}\nlora_r: 2\nmax_steps: 50\n"
                      "target_modules: [query, value]\n")
    args = parse_args([str(config), "--method", "glora", "--max_steps", "2"])
    assert (args.data.task, args.peft.method, args.peft.lora_r, args.training.max_steps) == ("sst2", "glora", 2, 2)
    assert args.peft.target_modules == ["query", "value"] and args.model.model_name_or_path == str(tiny_bert)
    # The proposal's defaults.
    training = args.training
    assert (training.learning_rate, training.per_device_train_batch_size, training.warmup_steps,
            training.weight_decay, training.seed, training.average_tokens_across_devices) == (2e-4, 32, 1000, 0.01, 42, False)


def test_csv_and_jsonl_files_and_train_file_flags(tiny_bert, glue_dir, tmp_path):
    data = glue_dir("cola", fmt="csv")
    results = run(tiny_bert, data, "cola", "lora", tmp_path / "a", "--max_steps", "2")
    assert "eval_matthews_correlation" in results
    jsonl = glue_dir("qqp", fmt="jsonl")
    args = trial_args(tiny_bert, jsonl, "qqp", "lora", tmp_path / "b", "--max_steps", "2")
    at = args.index("--dataset_dir")
    args[at : at + 2] = ["--train_file", str(jsonl / "qqp" / "train.jsonl"),
                         "--validation_file", str(jsonl / "qqp" / "validation.jsonl")]
    assert "eval_f1" in run_glue_peft.main(args)


def test_optimizer_steps_matches_trainer(tiny_bert, glue_dir, tmp_path):
    # ScheduleCheck raises if the predicted count differs; 64 examples, batch 8, accumulation 3, 2 epochs.
    results = run(tiny_bert, glue_dir("sst2"), "sst2", "adalora", tmp_path / "out", "--num_train_epochs", "2",
                  "--gradient_accumulation_steps", "3", "--tinit", "1", "--tfinal", "1")
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["max_steps"] == state["global_step"] == 2 * math.ceil(8 / 3)
    assert results["epoch"] == pytest.approx(2.0)


def test_wandb_offline_run_is_written(tiny_bert, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = trial_args(tiny_bert, glue_dir("sst2"), "sst2", "glora", tmp_path / "out", "--max_steps", "2")
    args[args.index("--report_to") + 1] = "wandb"
    run_glue_peft.main(args)
    import wandb

    wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(f.suffix == ".wandb" for f in runs[0].iterdir())
    # The final ranks were logged as the `rank_allocation` table: one row per adapted matrix, as in ranks.json.
    tables = list(runs[0].glob("files/media/table/rank_allocation_*.table.json"))
    assert len(tables) == 1, sorted(str(f.relative_to(runs[0])) for f in runs[0].rglob("*"))
    table = json.loads(tables[0].read_text())
    record = json.loads((tmp_path / "out" / "ranks.json").read_text())
    assert table["columns"] == ["module", "layer", "matrix", "d_in", "d_out", "initial_rank", "final_rank", "score"]
    assert {row[0]: row[6] for row in table["data"]} == {name: m["final_rank"] for name, m in record["modules"].items()}


def test_adapter_file_holds_final_ranks(tiny_deberta, glue_dir, tmp_path):
    out = tmp_path / "out"
    run(tiny_deberta, glue_dir("rte"), "rte", "glora", out, "--max_steps", "6", "--glora_warmup_steps", "3")
    weights = load_file(out / "adapter_model.safetensors")
    record = json.loads((out / "ranks.json").read_text())
    final = [m["final_rank"] for m in record["modules"].values()]
    assert [m["initial_rank"] for m in record["modules"].values()] == [4] * 12
    assert len(set(final)) > 1 and sum(final) == 48  # the reallocation changed ranks, within the budget
    assert len(weights) == 2 * 12 + 4  # A and B of every adapted matrix, plus the head's weights and biases
    for name, module in record["modules"].items():
        a = next(v for k, v in weights.items() if k.endswith(f"{name}.lora_A.weight"))
        b = next(v for k, v in weights.items() if k.endswith(f"{name}.lora_B.weight"))
        assert a.shape == (module["final_rank"], module["d_in"]) and b.shape == (module["d_out"], module["final_rank"])


PRESETS = ("", "proposal", "equal_params")  # configs/, configs/proposal/, configs/equal_params/
# The methods each preset holds: the proposal's plan has no EVA, and EVA spends ranks, not parameters (docs/eva.md).
PRESET_METHODS = {"": METHODS, "proposal": ("lora", "adalora", "glora"), "equal_params": ("lora", "adalora", "glora")}


def preset_files():
    return [config for preset in PRESETS for config in sorted((ROOT / "configs" / preset).glob("*_*.yaml"))]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_config_parses_and_the_launcher_runs_each(preset):
    configs = sorted((ROOT / "configs" / preset).glob("*_*.yaml"))
    assert {c.stem for c in configs} == {f"{m}_{t}" for m in PRESET_METHODS[preset] for t in ("mnli", "sst2", "rte")}
    for config in configs:
        args = parse_args([str(config), "--use_cpu", "True"])
        check_args(args)
        assert f"{args.peft.method}_{args.data.task}" == config.stem
        assert (args.peft.lora_r, args.training.learning_rate, args.training.per_device_train_batch_size) == (8, 2e-4, 32)
        assert args.model.model_name_or_path == "microsoft/deberta-v3-base" and args.data.max_seq_length == 256
        # launch/run.sh METHOD TASK starts `accelerate launch` on it (PYTHON=echo prints the command instead)
        done = subprocess.run([str(ROOT / "launch" / "run.sh"), *config.stem.split("_"), "--seed", "1"],
                              env={**os.environ, "PRESET": preset, "PYTHON": "echo"}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["-m", "accelerate.commands.launch", "run_glue_peft.py",
                                       str(config.relative_to(ROOT)), "--seed", "1"]


def test_the_launcher_names_a_preset_it_does_not_have():
    for argv, env in ((["glora"], {}), (["glora", "cola"], {}), (["glora", "mnli"], {"PRESET": "seed_plan"})):
        done = subprocess.run([str(ROOT / "launch" / "run.sh"), *argv], env={**os.environ, "PYTHON": "echo", **env},
                              capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
        assert "usage: launch/run.sh METHOD TASK" in done.stderr
        if len(argv) == 2:
            assert f"no preset configs/{env.get('PRESET', '')}{'/' * bool(env)}{argv[0]}_{argv[1]}.yaml" in done.stderr


def test_configs_hold_only_what_differs_from_the_defaults():
    """A config that repeats a default would silently keep the old value when the default changes."""
    defaults = parse_args(["--task", "sst2"])
    fields = {name: group for group in ("model", "data", "peft", "training")
              for name in vars(getattr(defaults, group))}
    for config in preset_files():
        for key, value in yaml.safe_load(config.read_text()).items():
            assert key in fields, f"{config}: {key} is not a flag"
            if key in ("task", "method"):  # what the preset is; task has no default
                continue
            default = getattr(getattr(defaults, fields[key]), key)
            assert value != default, f"{config}: {key}: {value} repeats the default"


def test_cpu_study_launcher_dry_run(tiny_bert, glue_dir, tmp_path, python_for_launchers):
    """launch/cpu_study.sh end to end on fixtures: every method x task runs, then compare_runs writes its table."""
    data = glue_dir("sst2", n_train=32, n_eval=16)
    glue_dir("rte", n_train=32, n_eval=16)
    root = tmp_path / "study"
    env = {**os.environ, "PYTHON": python_for_launchers, "STUDY_ROOT": str(root), "STUDY_SEEDS": "1", "STUDY_MODEL": str(tiny_bert),
           "STUDY_EXTRA_ARGS": "--max_steps 2 --max_seq_length 32"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "cpu_study.sh"), str(data)], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for task in ("sst2", "rte"):
        for method in ("lora", "adalora", "glora"):
            assert (root / task / f"{method}_seed1" / "all_results.json").is_file()
    assert "| all | | 6 |" in done.stdout and "core-hours" in done.stdout  # launch/study_compute.py: 6 runs timed
    assert "start" in (root / "study.log").read_text()
    table = (root / "comparison" / "comparison.md").read_text()
    assert "GLoRA" in table and "AdaLoRA" in table and "rte" in table and "sst2" in table


def test_length_grouped_training_keeps_predictions_in_idx_order(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """transformers also length-groups and seed-shuffles *evaluation* under group_by_length; the predictions file
    must still pair every row with its own idx and label. Without GlueTrainer's sequential eval sampler the run
    stops before writing results instead of writing a misaligned file."""
    from transformers import Trainer

    data = glue_dir("rte", n_train=32, n_eval=40)
    grouped = ("--max_steps", "2", "--train_sampling_strategy", "group_by_length", "--per_device_eval_batch_size", "8")
    results = run(tiny_bert, data, "rte", "glora", tmp_path / "ok", *grouped)
    written = pd.read_csv(tmp_path / "ok" / "predictions_validation.csv")
    truth = pd.read_parquet(data / "rte" / "validation.parquet")
    assert written["idx"].tolist() == truth["idx"].tolist() and written["label"].tolist() == truth["label"].tolist()
    assert math.isclose(results["eval_accuracy"], float((written["label"] == written["prediction"]).mean()))

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "_get_eval_sampler", Trainer._get_eval_sampler)
    with pytest.raises(RuntimeError, match="not in dataset order"):
        run(tiny_bert, data, "rte", "glora", tmp_path / "bad", *grouped)
    assert not (tmp_path / "bad" / "all_results.json").exists()
