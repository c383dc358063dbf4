"""Capacity (effective adapter parameters) and tuning effort (run_args.json "hpo") on synthetic runs."""
import json

import pytest

import compare_runs as cr
from analysis.runs import aggregate, load_runs
from tests.test_compare_runs import LAYOUT, predictions, sst2_metrics, write_run

ACC = {"lora": [0.70, 0.71, 0.72], "adalora": [0.80, 0.81, 0.82], "glora": [0.78, 0.79, 0.80]}


def sweep(root, hpo=None, glora_effective=None, adalora_from_ranks_din=None):
    """sst2, 3 seeds per method. hpo: method -> hpo block. glora_effective: all_results.json's
    adapter_params_effective for GLoRA. adalora_from_ranks_din: d_in written into AdaLoRA's ranks.json."""
    for method, accs in ACC.items():
        for seed, acc in enumerate(accs):
            d = write_run(root, f"{method}_s{seed}", "sst2", method, seed, sst2_metrics(acc), 100.0,
                          {"validation": predictions(acc)}, log=False)
            if hpo and method in hpo:
                args = json.loads((d / "run_args.json").read_text())
                (d / "run_args.json").write_text(json.dumps({**args, "hpo": hpo[method]}))
            if method == "glora" and glora_effective is not None:
                res = json.loads((d / "all_results.json").read_text())
                (d / "all_results.json").write_text(json.dumps({**res, "adapter_params_effective": glora_effective}))
            if method == "adalora" and adalora_from_ranks_din is not None:
                ranks = json.loads((d / "ranks.json").read_text())
                for m in ranks["modules"].values():
                    m["d_in"] = adalora_from_ranks_din
                (d / "ranks.json").write_text(json.dumps(ranks))
    return root


def compare(root):
    assert cr.main([str(root), "--n_bootstrap", "100", "--no_figures"]) == 0
    out = root / "comparison"
    return json.loads((out / "comparison.json").read_text()), (out / "comparison.md").read_text()


def test_effective_params_from_ranks_when_missing(tmp_path):
    runs, _ = load_runs([sweep(tmp_path, glora_effective=12345)])
    groups = aggregate(runs)
    # no field in all_results.json: sum of final_rank * (d_in + d_out) = 32 * (768 + 768)
    assert groups[("sst2", 32, "", "lora")].mean_of("adapter_params_effective") == 32 * 1536
    assert groups[("sst2", 32, "", "glora")].mean_of("adapter_params_effective") == 12345  # the field wins


def test_unequal_capacity_marked(tmp_path):
    # AdaLoRA's matrices read 800 wide in ranks.json: 32 * (800 + 768) = 50,176 vs 49,152 (+2.1 %)
    data, md = compare(sweep(tmp_path, adalora_from_ranks_din=800))
    table = {r["method"]: r for r in data["table"]}
    assert table["adalora"]["adapter_params_effective"] == 32 * (800 + 768)
    assert "| 50,176 |" in md and "| 49,152 |" in md
    sig = {(s["a"], s["b"]): s["capacity"] for s in data["significance"]}
    assert sig[("adalora", "lora")].startswith("unequal capacity") and sig[("glora", "adalora")].startswith("unequal")
    assert sig[("glora", "lora")] == ""  # equal: 49,152 both
    assert table["glora"]["share_capacity"].startswith("unequal capacity")
    assert "unequal capacity" in md


def test_equal_capacity_within_two_percent(tmp_path):
    data, md = compare(sweep(tmp_path, adalora_from_ranks_din=780))  # 50,176 -> 49,536: +0.8 %
    assert all(s["capacity"] == "" for s in data["significance"]) and "unequal capacity (" not in md


def hpo_block(n_trials, tuned_on="tuning_split"):
    return {"study_name": "s", "storage": "sqlite:///x.db", "n_trials": n_trials, "n_complete": n_trials - 2,
            "n_pruned": 2, "best_params": {"learning_rate": 3e-4}, "tuned_on": tuned_on}


@pytest.mark.parametrize("hpo, expected", [
    ({"lora": hpo_block(20), "adalora": hpo_block(20), "glora": hpo_block(50)}, "different numbers of trials"),
    ({"lora": hpo_block(20), "adalora": hpo_block(20)}, "GLoRA not tuned"),
])
def test_unequal_tuning_effort_warned(tmp_path, capsys, hpo, expected):
    data, md = compare(sweep(tmp_path, hpo=hpo))
    (warning,) = data["tuning_warnings"]
    assert "unequal tuning effort" in warning and expected in warning
    assert f"**warning:** {warning}" in md and f"warning: {warning}" in capsys.readouterr().err
    assert "## Tuning" in md and "20 trials (18 complete, 2 pruned), tuned on tuning_split" in md


def test_equal_tuning_no_warning_and_dev_tuning_is_optimistic(tmp_path):
    data, md = compare(sweep(tmp_path, hpo={m: hpo_block(20) for m in ACC}))
    assert data["tuning_warnings"] == [] and "## Tuning" in md
    data, md = compare(sweep(tmp_path / "dev", hpo={m: hpo_block(20, "dev") for m in ACC}))
    (warning,) = data["tuning_warnings"]
    assert "dev numbers are optimistic" in warning and "LoRA, AdaLoRA, GLoRA" in warning


def test_untuned_runs_have_no_tuning_section(tmp_path):
    data, md = compare(sweep(tmp_path))
    assert data["tuning_warnings"] == [] and "## Tuning" not in md
    assert {r["tuning"] for r in data["table"] if r["task"] == "sst2"} == {"not tuned"}
    assert len(LAYOUT) == 4  # the layout the capacity numbers above assume


def test_pruning_rates_further_apart_than_the_margin_are_warned(tmp_path):
    pruned = {"lora": 2, "adalora": 6, "glora": 2}
    hpo = {m: {**hpo_block(8), "n_complete": 8 - p, "n_pruned": p} for m, p in pruned.items()}
    data, md = compare(sweep(tmp_path, hpo=hpo))
    (warning,) = data["tuning_warnings"]
    assert "pruning rates differ by more than 25%" in warning
    assert "LoRA 2/8 (25%), AdaLoRA 6/8 (75%), GLoRA 2/8 (25%)" in warning and f"**warning:** {warning}" in md
    assert cr.main([str(tmp_path), "--n_bootstrap", "100", "--no_figures", "--pruning_rate_margin", "0.5"]) == 0
    assert json.loads((tmp_path / "comparison" / "comparison.json").read_text())["tuning_warnings"] == []
