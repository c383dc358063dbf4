"""--method eva: peft's EVA at LoRA's rank budget, recorded, resumable, refused on bad flags, in compare_runs.py and
hpo.py (tiny random BERT, fixture data, CPU)."""

import json

import pytest
import torch
from conftest import ROOT, trial_args
from peft import PeftModel
from safetensors.torch import load_file
from test_hpo import without
from transformers import AutoModelForSequenceClassification

import compare_runs
import hpo
import run_glue_peft
from harness.eva_init import EvaInit

N_MATRICES = 12  # tiny BERT: 2 layers x 6 matrices


def run(model_dir, data_dir, out, *extra, method="eva"):
    return run_glue_peft.main(trial_args(model_dir, data_dir, "sst2", method, out, *extra))


def ranks_of(out) -> dict:
    return json.loads((out / "ranks.json").read_text())


def test_eva_spends_lora_budget_and_records_uniform_start_and_its_ranks(tiny_bert, glue_dir, tmp_path):
    """lora_r 1 and rho 4 on tiny BERT: EVA moves ranks (some matrices lose their adapter) and keeps R_total."""
    out = tmp_path / "eva"
    results = run(tiny_bert, glue_dir("sst2"), out, "--max_steps", "2", "--lora_r", "1", "--eva_rho", "4")
    record = ranks_of(out)
    modules = record["modules"]
    final = {name: m["final_rank"] for name, m in modules.items()}
    assert len(modules) == N_MATRICES and {m["initial_rank"] for m in modules.values()} == {1}
    assert sum(final.values()) == N_MATRICES * 1 == results["final_rank_total"] == results["rank_budget"]
    assert max(final.values()) <= round(4 * 1) and len(set(final.values())) > 1 and 0 in final.values()
    # The model trained those ranks: a matrix at rank 0 has no adapter in the saved file, the others their width.
    saved = load_file(out / "adapter_model.safetensors")
    for name, rank in final.items():
        key = f"base_model.model.{name}.lora_A.weight"
        assert (saved[key].shape[0] if key in saved else 0) == rank, name
    assert results["adapter_params_after_allocation"] == sum(r * (m["d_in"] + m["d_out"])
                                                             for r, m in zip(final.values(), modules.values()))
    assert record["eva"]["rho"] == 4 and record["eva"]["forward_passes"] >= 3
    assert record["eva"]["method_overhead_seconds"] == results["method_overhead_seconds"] > 0
    assert results["arm"] == "eva_rho4"
    resolved = json.loads((out / "run_args.json").read_text())["resolved"]
    assert resolved["eva"] == {"rho": 4.0, "tau": 0.99, "max_batches": 200, "batch_size": 8}
    # The saved adapter reloads at EVA's ranks (peft's rank_pattern).
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    reloaded = PeftModel.from_pretrained(base, out)
    assert sum(p.numel() for n, p in reloaded.named_parameters() if "lora_" in n) == results["adapter_params_after_allocation"]


def test_eva_rho_1_keeps_every_matrix_at_lora_r(tiny_bert, glue_dir, tmp_path):
    results = run(tiny_bert, glue_dir("sst2"), tmp_path / "eva", "--max_steps", "2", "--eva_rho", "1")
    assert [m["final_rank"] for m in ranks_of(tmp_path / "eva")["modules"].values()] == [4] * N_MATRICES
    assert results["arm"] == "eva_rho1" and results["final_rank_total"] == 4 * N_MATRICES


def test_eva_keeps_the_training_data_order_of_lora_with_the_same_seed(tiny_bert, glue_dir, tmp_path, monkeypatch):
    seen = []
    training_step = run_glue_peft.GlueTrainer.training_step

    def recording(self, model, inputs, *args):
        seen[-1].append(inputs["input_ids"].clone())
        return training_step(self, model, inputs, *args)

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "training_step", recording)
    data = glue_dir("sst2")
    for method in ("lora", "eva"):
        seen.append([])
        run(tiny_bert, data, tmp_path / method, "--max_steps", "6", method=method)
    assert len(seen[0]) == len(seen[1]) == 6
    assert all(torch.equal(a, b) for a, b in zip(*seen))


def test_eva_resumes_at_its_ranks_exactly(tiny_bert, glue_dir, tmp_path):
    """A checkpoint holds EVA's ranks (rank 0 included): the resumed run ends where the uninterrupted run did."""
    data, full = glue_dir("sst2"), tmp_path / "full"
    common = ["--max_steps", "6", "--lora_r", "1", "--eva_rho", "4", "--save_strategy", "steps", "--save_steps", "3"]
    finished = run(tiny_bert, data, full, *common)
    assert json.loads((full / "checkpoint-3" / EvaInit.STATE_FILE).read_text())["ranks"] == {
        name: m["final_rank"] for name, m in ranks_of(full)["modules"].items()}
    reference = load_file(full / "adapter_model.safetensors")
    out = tmp_path / "resumed"
    resumed = run(tiny_bert, data, out, *common, "--resume_from_checkpoint", str(full / "checkpoint-3"))
    weights = load_file(out / "adapter_model.safetensors")
    assert weights.keys() == reference.keys()
    for key in reference:
        assert torch.allclose(weights[key], reference[key], atol=1e-6), key
    assert ranks_of(out)["modules"] == ranks_of(full)["modules"]
    assert resumed["train_loss"] == pytest.approx(finished["train_loss"], rel=1e-6)
    assert resumed["method_overhead_seconds"] == finished["method_overhead_seconds"]  # the initialisation ran once


@pytest.mark.parametrize(
    "change, message",
    [
        (["--eva_rho", "0.5"], "--eva_rho must be >= 1"),
        (["--eva_tau", "1.5"], r"--eva_tau is a cosine similarity threshold in \[0, 1\]"),
        (["--eva_max_batches", "2"], "--eva_max_batches must be >= 3"),
        (["--method", "lora", "--eva_rho", "1"], "--eva_rho 1.0 has no effect with --method lora"),
        (["--method", "glora", "--eva_max_batches", "50"], "--eva_max_batches 50 has no effect with --method glora"),
        (["--budget_unit", "params"], "--method eva redistributes ranks"),
        (["--rank_budget", "30"], "EVA redistributes peft's budget lora_r x matrices = 48; --rank_budget 30"),
        (["--eva_rho", "9"], r"--eva_rho 9 x --lora_r 4 asks EVA for 36 components .* takes 32 inputs"),
    ],
)
def test_bad_eva_flags_are_refused_before_anything_is_written(tiny_bert, glue_dir, tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run(tiny_bert, glue_dir("sst2"), out, "--max_steps", "2", *change)
    assert not out.exists()


def test_eva_that_does_not_converge_within_its_batches_stops_naming_the_flag(tiny_bert, glue_dir, tmp_path):
    with pytest.raises(RuntimeError, match="has not converged after --eva_max_batches 3 forward passes"):
        run(tiny_bert, glue_dir("sst2"), tmp_path / "out", "--max_steps", "2", "--eva_max_batches", "3",
            "--eva_tau", "1")


def test_a_study_of_arm_eva_and_compare_runs_show_the_arm(tiny_bert, glue_dir, tmp_path, capsys):
    """hpo.py names the study and final folder after the arm; compare_runs.py prints it beside LoRA."""
    data, final_root = glue_dir("sst2", n_train=80), tmp_path / "final"
    flags = without(trial_args(tiny_bert, data, "sst2", "eva", "unused", "--eva_rho", "1"),
                    "--output_dir", "--learning_rate", "--per_device_train_batch_size")  # set or searched by hpo.py
    hpo.main([str(ROOT / "configs" / "search" / "cpu_lr_batch.yaml"), *flags, "--n_trials", "1", "--max_steps", "2",
              "--study_dir", str(tmp_path / "study"), "--final_root", str(final_root), "--final_seeds", "1",
              "--tuning_split_fraction", "0.25", "--sampler_seed", "0"])
    assert "== study sst2_eva_rho1" in capsys.readouterr().out
    final = final_root / "sst2" / "eva_rho1_seed1"
    assert ranks_of(final)["eva"]["rho"] == 1
    lora = final_root / "sst2" / "lora_seed1"
    run(tiny_bert, data, lora, "--max_steps", "2", "--seed", "1", "--tuning_split_fraction", "0.25", method="lora")
    assert compare_runs.main([str(final_root), "--no_figures", "--n_bootstrap", "10"]) == 0
    table = (final_root / "comparison" / "comparison.md").read_text()
    assert "EVA (eva_rho1)" in table and "LoRA" in table


def test_eva_rho_names_the_arm_so_a_study_may_not_search_it(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("run: {method: eva}\noptuna: {n_trials: 1, search_space: {eva_rho: {type: categorical, "
                     "choices: [1, 2]}}}\n")
    with pytest.raises(SystemExit, match="search_space.eva_rho names the arm"):
        hpo.main([str(space), "--task", "sst2", "--study_dir", str(tmp_path / "study")])
    assert not (tmp_path / "study").exists()
