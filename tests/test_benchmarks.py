"""The benchmark scripts in their tiny modes: they run, time every method and print finite positive ratios; the GPU
check (benchmarks/gpu_check.sh) as a CPU dry run, end to end."""

import importlib
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, write_glue_fixture

METHODS = ["lora", "adalora", "glora_lora_b", "glora_lora_ab", "glora_delta", "glora_after"]


def finite_positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_step_time_tiny_times_every_method(capsys):
    from benchmarks import step_time

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
    from benchmarks import data_pipeline

    data_dir = tmp_path / "glue"
    for task in ("rte", "sst2"):
        write_glue_fixture(data_dir, task, n_train=40)
    results = data_pipeline.main(["--tiny", "--model", str(tiny_bert), "--data_dir", str(data_dir), "--tasks", "rte",
                                  "sst2"])
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


def test_data_pipeline_defaults_to_the_shipped_sst2_and_names_a_missing_task_in_one_line(tiny_bert):
    """Its default data is the repository's own data/glue (SST-2 only); a task that folder lacks is refused before
    any model loads, naming the flag and the file."""
    from benchmarks import data_pipeline

    args = data_pipeline.parse_args([])
    assert Path(args.data_dir) == ROOT / "data" / "glue" and args.tasks == ["sst2"]
    assert (Path(args.data_dir) / "sst2" / "train.parquet").is_file()
    with pytest.raises(SystemExit, match=r"^--data_dir \S+data/glue has no rte/train\.parquet: give --data_dir a GLUE "
                                         r"root that holds rte \(the shipped data/glue holds sst2 only\), or other "
                                         r"--tasks\.$"):
        data_pipeline.main(["--tiny", "--model", str(tiny_bert), "--tasks", "rte"])


@pytest.mark.parametrize("script", ["step_time", "data_pipeline"])
def test_every_flag_has_help(script):
    parser = importlib.import_module(f"benchmarks.{script}").make_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings


def make_wheel(folder, name, version, requires=()):
    """A minimal pure-Python wheel (one module) that pip can install."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{dist}/RECORD"])
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_kit_install_installs_only_what_is_missing_or_must_match(tmp_path, monkeypatch):
    from packaging.specifiers import SpecifierSet

    from benchmarks import gpu_kit

    make_wheel(tmp_path, "datasets", "5.2.0",
               ["fsspec<=2026.9.0", "dill<0.4.2", "pyarrow>=24", "new-dep", "huggingface-hub>=1.31"])
    for name, version in [("fsspec", "2026.9.0"), ("dill", "0.4.1"), ("new-dep", "1.0"), ("same", "2.0"),
                          ("huggingface-hub", "2.4.0")]:
        make_wheel(tmp_path, name, version)
    wheels = [gpu_kit.Wheel(p) for p in sorted(tmp_path.glob("*.whl"))]
    here = {"datasets": "4.0.0", "fsspec": "2027.1.0", "dill": "0.3.9", "same": "2.0", "pyarrow": "21.0.0",
            "huggingface-hub": "1.20.0"}
    required_here = {"huggingface-hub": [("transformers", SpecifierSet("<2.0,>=1.5.0"))]}
    monkeypatch.setattr(gpu_kit, "installed_version", here.get)  # this machine as the test describes it
    monkeypatch.setattr(gpu_kit, "installed_requirements", lambda name: required_here.get(name, []))
    install, keep = gpu_kit.plan(wheels, {"datasets"})
    assert sorted(w.name for w, _ in install) == ["datasets", "fsspec", "new-dep"]  # pin, excluded, missing
    # dill 0.3.9 satisfies dill<0.4.2: the system's stays; hub 2.4.0 would break transformers: not installed.
    assert sorted(name for name, _, _ in keep) == ["dill", "huggingface-hub", "same"]
    assert any("NOT installing 2.4.0: transformers needs" in reason for _, _, reason in keep)
    problems = gpu_kit.unmet(wheels, {"datasets"}, install)
    assert len(problems) == 2 and "pyarrow>=24" in problems[0] and "21.0.0" in problems[0], problems
    assert "huggingface-hub>=1.31" in problems[1] and "1.20.0" in problems[1]


def run_gpu_check(tmp_path, kit, *args, **env):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_KIT": str(kit), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), *args, str(out)], env=env,
                          capture_output=True, text=True, timeout=400)
    return proc, out


def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The whole GPU check at tiny sizes on CPU, bf16 autocast: kit preparation (data and tokenizer; a stand-in
    wheel instead of the download), the offline install, the random model, step-time tables for every method and
    length, and the end-to-end runs with their checks (finite losses, budget, GLoRA reallocated, adapter reloads)."""
    glue = write_glue_fixture(tmp_path / "glue", "sst2", n_train=80, n_eval=24)
    kit = tmp_path / "kit"
    env = {**os.environ, "PYTHON": sys.executable, "GLUE_DIR": str(glue), "KIT_TRAIN_ROWS": "64"}
    prep = subprocess.run(["bash", str(ROOT / "benchmarks" / "prepare_gpu_check.sh"), "--no-wheels", str(kit)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    assert "kit total:" in prep.stdout and (kit / "tokenizer" / "tokenizer.json").is_file()
    assert (kit / "data" / "sst2" / "validation.parquet").is_file()
    make_wheel(kit / "wheels", "gpucheck-probe", "1.0", ["packaging"])

    proc, out = run_gpu_check(tmp_path, kit, "--dry-run")
    text = proc.stdout
    assert proc.returncode == 0, text[-4000:] + proc.stderr[-2000:]
    for part in ("env", "install", "model", "step_time", "e2e"):
        assert re.search(rf"^{part}: ok, \d+ s", text, re.M), part
    assert "install gpucheck-probe 1.0 (missing)" in text and (out / "site" / "gpucheck_probe").is_dir()
    assert "keep    gpucheck-probe" not in text and "gpu_check: PASSED" in text
    # Step time: both lengths, every method of the issue, finite positive ratios; the JSON is kept.
    methods = ["lora", "adalora", "glora_lora_b", "glora_delta", "glora_after"]
    log = (out / "step_time.log").read_text()
    for length in (32, 64):
        assert f"length {length}, cpu bf16 autocast" in log
    rows = [f for f in map(str.split, log.splitlines()) if f and f[0] in methods and "ms" not in f]
    assert sorted(r[0] for r in rows) == sorted(methods * 2)
    assert all(math.isfinite(float(r[3])) and float(r[3]) > 0 for r in rows), rows
    assert (out / "step_time.json").is_file()
    # End to end: one line per method, budget kept, 3 finite logged losses (6 steps, every 2), same ranks reloaded.
    lines = {m: line for m in ("lora", "adalora", "glora") for line in text.splitlines()
             if line.startswith(f"sst2 {m} bf16: ")}
    assert len(lines) == 3, text[-3000:]
    budget = 4 * 2 * 6  # r x (2 layers x 6 matrices)
    for line in lines.values():
        assert f"total rank {budget}/{budget}" in line and "(3 losses logged)" in line, line
        assert "reload: same ranks" in line and "CHECK FAILED" not in line, line
    assert "reallocated at step 3" in lines["glora"] and "(per matrix 4-4" not in lines["glora"]
    assert (out / "e2e" / "sst2" / "glora_bf16" / "adapter_model.safetensors").is_file()
    assert "gpu_check: PASSED" in (out / "gpu_check.log").read_text()


def test_gpu_check_keeps_going_after_a_failed_part(tmp_path):
    """A part that fails (no tokenizer in the kit) does not stop the next one, and the exit status says so."""
    proc, out = run_gpu_check(tmp_path, tmp_path / "empty_kit", "--dry-run", GPU_CHECK_PARTS="model env")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert re.search(r"^model: FAILED \(rc \d+\)", proc.stdout, re.M) and re.search(r"^env: ok", proc.stdout, re.M)
    assert "gpu_check: FAILED" in proc.stdout and (out / "model.log").is_file()


def test_tested_scripts_call_the_interpreter_given_not_bare_python():
    """Scripts the tests run, and the sweep, call "$PYTHON" (the tests pass sys.executable), never a `python` or
    `accelerate` found on PATH, which may be another interpreter without torch."""
    scripts = [*sorted((ROOT / "benchmarks").glob("*.sh")),
               *(ROOT / "launch" / f"{name}.sh" for name in ("cpu_study", "sweep", "run"))]
    assert len(scripts) >= 6
    bare = re.compile(r"(^|[\s;&|(`])(python[0-9.]*|accelerate)\s")
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
            assert not bare.search(code), f"{script.name}:{number}: {line.strip()}"


@pytest.mark.parametrize("method, unit", [("glora", "params"), ("adalora", "params"), ("glora", "rank")])
def test_e2e_check_holds_each_run_to_its_own_budget(tiny_bert, glue_dir, tmp_path, method, unit):
    """Under a parameter budget the final ranks need not sum to R_total: GLoRA spends the parameters (less than one
    rank unit below them), AdaLoRA's ranks sum to its target; a record that breaks its budget is named."""
    from conftest import trial_args

    import run_glue_peft
    from benchmarks import e2e_check
    from harness.records import Results

    out = tmp_path / "out"
    # AdaLoRA: 2,700 parameters is closest to target rank 3 over tiny BERT's 12 matrices, not lora_r 4
    extra = ["--tinit", "1", "--tfinal", "1", "--deltaT", "1", "--param_budget", "2700"] if method == "adalora" else []
    run_glue_peft.main(trial_args(tiny_bert, glue_dir("sst2"), "sst2", method, out, "--max_steps", "6",
                                  "--budget_unit", unit, "--save_strategy", "no", *extra))
    results = Results.read(out)
    if unit == "params":
        assert results.final_rank_total != results.rank_budget  # the rank-sum rule would fail this run
    summary, failures = e2e_check.check(out, str(tiny_bert))
    assert failures == [] and (summary["realloc"] == 2) == (method == "glora")  # a third of 6 steps
    broken = {**results.to_json(), "rank_budget": results.rank_budget + 1,
              "param_budget": (results.param_budget or 0) - 1}
    (out / "all_results.json").write_text(json.dumps(broken))
    _, failures = e2e_check.check(out, str(tiny_bert))
    if method == "adalora":  # its target rank is in run_args.json, untouched
        assert failures == []
    else:
        assert len(failures) == 1 and ("budget" in failures[0])
