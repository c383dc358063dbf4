"""The benchmark scripts in their tiny modes: they run, time every method and print finite positive ratios."""

import math
import subprocess

import pytest
from conftest import ROOT, write_glue_fixture

METHODS = ["lora", "adalora", "glora_lora_b", "glora_lora_ab", "glora_delta", "glora_after"]


def finite_positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_step_time_tiny_times_every_method(capsys):
    import step_time

    results = step_time.main(["--tiny", "--iters", "2"])
    rows = results["by_seq_len"][32]
    assert list(rows) == METHODS
    for name, row in rows.items():
        for key in ("median_ms", "ratio_median", "ratio_p25", "ratio_p75", "ratio_of_means"):
            assert finite_positive(row[key]), (name, key, row[key])
        assert row["steps_timed"] == 2
        assert row["resident_mb"]["model"] > 0 and row["resident_mb"]["optimizer"] > 0
    assert rows["lora"]["ratio_median"] == 1.0
    # The same budget: GLoRA starts as LoRA; AdaLoRA's tensors are 1.5x wider; delta keeps a d_out x d_in buffer each.
    assert rows["glora_lora_b"]["adapter_params"] == rows["lora"]["adapter_params"]
    assert rows["adalora"]["adapter_params"] > rows["lora"]["adapter_params"]
    assert rows["glora_delta"]["resident_mb"]["method"] > rows["glora_lora_b"]["resident_mb"]["method"]
    assert rows["adalora"]["resident_mb"]["method"] > 0
    # Item 2: every GLoRA model was really reallocated, and its cost is expressed in LoRA steps.
    reallocations = results["reallocation"]
    assert [r["model"] for r in reallocations] == ["glora_after", "glora_lora_b", "glora_lora_ab", "glora_delta"]
    for r in reallocations:
        assert finite_positive(r["seconds"]) and finite_positive(r["lora_steps"][32])
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name} " in out
    assert "goal glora_lora_b/lora <= 1.02" in out and "GLoRA reallocation" in out


def test_data_pipeline_tiny_measures_both_paddings(tiny_bert, tmp_path, capsys):
    import data_pipeline

    data_dir = tmp_path / "glue"
    for task in ("rte", "sst2"):
        write_glue_fixture(data_dir, task, n_train=40)
    results = data_pipeline.main(["--tiny", "--model", str(tiny_bert), "--data_dir", str(data_dir)])
    for task in ("rte", "sst2"):
        r = results["tasks"][task]
        assert r["tokenise"]["rows"] == 40
        for key in ("load_s", "tokenise_dynamic_s", "tokenise_padded_s", "reload_dynamic_s"):
            assert finite_positive(r["tokenise"][key]), key
        for mode in ("dynamic", "padded", "grouped"):
            assert finite_positive(r["training"][mode]["samples_per_s"])
        assert r["training"]["padded"]["mean_batch_len"] == 64  # --tiny pads to 64
        assert r["training"]["dynamic"]["mean_batch_len"] < 64  # fixture sentences are short
        assert finite_positive(r["training"]["speedup_dynamic"]) and finite_positive(r["training"]["speedup_grouped"])
        assert r["lengths"]["token_slot_ratio"]["dynamic"] > 1
        assert r["lengths"]["token_slot_ratio"]["grouped"] >= r["lengths"]["token_slot_ratio"]["dynamic"]
    assert "dynamic / padded samples/s" in capsys.readouterr().out


def test_gpu_script_tiny_runs_on_cpu():
    """benchmarks/gpu.sh --tiny: the GPU command's code path (bf16 autocast, two lengths) with a tiny DeBERTa on CPU."""
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--iters", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "cpu bf16 autocast" in out
    for length in (32, 64):
        assert f"length {length}, cpu bf16" in out
    # Table rows: method, median ms, mean ms, ratio, ... (the reallocation lines also start with a method name).
    table_lines = [f for f in map(str.split, out.splitlines()) if f and f[0] in METHODS and "ms" not in f]
    assert len(table_lines) == 2 * len(METHODS)
    for fields in table_lines:
        ratio = float(fields[3])
        assert math.isfinite(ratio) and ratio > 0, fields


@pytest.mark.parametrize("script", ["step_time", "data_pipeline"])
def test_every_flag_has_help(script):
    parser = __import__(script).make_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings


def test_gpu_e2e_script_on_cpu(tiny_deberta, tmp_path):
    """benchmarks/gpu_e2e.sh dry-run on CPU with bf16 autocast: every method trains, GLoRA reallocates under
    autocast, every run keeps the rank budget and writes its results."""
    import os

    data = write_glue_fixture(tmp_path / "glue", "mnli", n_train=64, n_eval=16)
    env = {**os.environ, "E2E_ROOT": str(tmp_path / "e2e"), "E2E_PRECISIONS": "bf16", "E2E_STEPS": "6",
           "E2E_DEVICE_ARGS": "--use_cpu True", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_e2e.sh"), str(tiny_deberta), str(data), "mnli",
                           "--max_seq_length", "32", "--lora_r", "4", "--per_device_train_batch_size", "8"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("mnli ")]
    assert len(lines) == 3, proc.stdout
    for line in lines:
        budget = 4 * 2 * 6  # r x (2 layers x 6 matrices)
        assert f"total rank {budget}/{budget}" in line and "eval_accuracy_mm" in line, line
    glora = next(line for line in lines if line.startswith("mnli glora bf16"))
    assert "reallocated at step" in glora and "(per matrix 4-4" not in glora, glora
    assert (tmp_path / "e2e" / "mnli" / "glora_bf16" / "all_results.json").is_file()
