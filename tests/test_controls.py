"""The planted-structure control: the generator (data/make_planted.py) and allocation quality (analysis/allocation.py)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import allocation_quality
from analysis.allocation import GroundTruth, recall_at_k, run_quality, shares
from data import make_planted
from harness.records import ModuleRanks, RankRecord, Results

PLANTED = ["bert.encoder.layer.0.attention.self.value", "bert.encoder.layer.1.intermediate.dense"]


def generate(model_dir, out, *extra):
    return make_planted.main(["--out_dir", str(out), "--model_name_or_path", str(model_dir), "--source_dir",
                              str(ROOT / "data" / "glue" / "sst2"), "--planted", "0:value", "1:ffn_in", "--rank", "2",
                              "--relative_norm", "0.5", "--train_rows", "150", "--dev_rows", "40", "--max_seq_length",
                              "32", "--seed", "3", *extra])


def test_generator_is_deterministic_for_a_seed(tiny_bert, tmp_path):
    first, second = generate(tiny_bert, tmp_path / "a"), generate(tiny_bert, tmp_path / "b")
    other = generate(tiny_bert, tmp_path / "c", "--seed", "4")
    for truth in (first, second, other):
        truth["args"].pop("out_dir")
    assert first == second and first != other
    for split in ("train", "validation"):
        a, b = (pd.read_parquet(tmp_path / d / "sst2" / f"{split}.parquet") for d in "ab")
        pd.testing.assert_frame_equal(a, b)
    tensors = [load_file(tmp_path / d / "planted_update.safetensors") for d in "ab"]
    assert tensors[0].keys() == tensors[1].keys() and all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


@pytest.mark.parametrize("target", ["class", "regression"])
def test_ground_truth_matches_the_teachers_weights_and_labels(tiny_bert, tmp_path, target):
    truth = generate(tiny_bert, tmp_path, "--target", target)
    task = {"class": "sst2", "regression": "stsb"}[target]
    assert truth["task"] == task and sorted(truth["planted"]) == PLANTED
    tensors = load_file(tmp_path / "planted_update.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1).eval()
    modules = dict(model.named_modules())
    for name, entry in truth["planted"].items():
        u, sigma, v = (tensors[f"{name}.{part}"] for part in ("U", "sigma", "V"))
        delta = (u * sigma) @ v.T
        weight = modules[name].weight
        assert entry["rank"] == 2 == torch.linalg.matrix_rank(delta).item()
        assert torch.allclose(u.T @ u, torch.eye(2, dtype=u.dtype), atol=1e-12)
        assert torch.allclose(v.T @ v, torch.eye(2, dtype=v.dtype), atol=1e-12)
        assert delta.norm().item() / weight.detach().double().norm().item() == pytest.approx(0.5, rel=1e-9)
        assert entry["relative_norm"] == pytest.approx(0.5, rel=1e-9) and sigma.tolist() == entry["singular_values"]
        with torch.no_grad():
            weight += delta.to(weight.dtype)  # the teacher, rebuilt from the ground truth alone
    # The teacher's [CLS] feature read along the recorded direction reproduces every label.
    frames = {split: pd.read_parquet(tmp_path / task / f"{split}.parquet") for split in ("train", "validation")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    readout = truth["readout"]
    for frame in frames.values():
        texts = frame["sentence"].tolist() if task == "sst2" else (frame["sentence1"].tolist(), frame["sentence2"].tolist())
        h = make_planted.cls_features(model.base_model, tokenizer, texts, 32, 64)
        value = (h @ tensors["readout.direction"].numpy() - readout["centre"]) / readout["scale"]
        # Other batches pad differently, which moves float32 features by ~1e-6: labels agree to 1e-3 (in units of the
        # read-out's std), and a class label may differ only within that distance of the threshold.
        if target == "class":
            differs = (value > readout["class_threshold"]).astype(int) != frame["label"].to_numpy()
            assert (np.abs(value - readout["class_threshold"])[differs] < 1e-3).all()
        else:
            assert np.allclose(2.5 + value, frame["label"].to_numpy(), atol=1e-3)
    assert truth["rows"] == {"train": 150, "validation": 40} and len(frames["validation"]) == 40
    # The control's difficulty is recorded: linear probes on the base model's and the teacher's features, on dev. The
    # regression label is linear in the teacher's feature (on the packaged MiniLM its probe reaches 0.9995).
    if target == "regression":
        assert truth["probes"]["teacher_features"]["dev_pearson"] > truth["probes"]["base_features"]["dev_pearson"]
    else:
        assert all(0 <= truth["probes"][kind]["dev_accuracy"] <= 1 for kind in ("base_features", "teacher_features"))
    oracle = json.loads((tmp_path / "oracle_pattern.json").read_text())
    assert len(oracle) == 12 and {n: r for n, r in oracle.items() if r != 1} == {n: 2 for n in PLANTED}


def test_negative_control_spreads_the_same_squared_norm_over_every_matrix(tiny_bert, tmp_path):
    positive = generate(tiny_bert, tmp_path / "pos")
    negative = generate(tiny_bert, tmp_path / "neg", "--spread_evenly", "--spread_rank", "1")
    assert len(negative["planted"]) == 12 and {e["rank"] for e in negative["planted"].values()} == {1}
    energy = [sum((e["relative_norm"] * e["weight_norm"]) ** 2 for e in t["planted"].values()) for t in (positive, negative)]
    relative = [sum(e["relative_norm"] ** 2 for e in t["planted"].values()) for t in (positive, negative)]
    assert relative[0] == pytest.approx(relative[1], rel=1e-9)  # 2 x 0.5^2 == 12 x (0.5 sqrt(2/12))^2
    assert energy[1] > 0


def test_recall_at_k_counts_ties_at_the_boundary_fractionally():
    planted = {"a", "b"}
    assert recall_at_k({"a": 5, "b": 4, "c": 3, "d": 1}, planted) == 1.0
    assert recall_at_k({"a": 1, "b": 0, "c": 3, "d": 2}, planted) == 0.0
    assert recall_at_k({"a": 5, "b": 2, "c": 2, "d": 1}, planted) == 0.75  # a, then b or c for the last place
    assert recall_at_k({"a": 2, "b": 2, "c": 2, "d": 2}, planted) == 0.5  # uniform: chance, k / N
    with pytest.raises(ValueError, match="k = 0"):
        recall_at_k({"a": 1}, set())


def write_run(folder, ranks, costs, method, scores=None, arm=None, seed=1):
    """A finished run's records (records.py) with the given final ranks and, for GLoRA, scores."""
    folder.mkdir(parents=True)
    modules = {n: ModuleRanks(layer=0, matrix="query", d_in=costs[n] // 2, d_out=costs[n] - costs[n] // 2,
                              initial_rank=2, final_rank=r, score=scores[n] if scores else None)
               for n, r in ranks.items()}
    record = RankRecord(modules=modules, glora={"signal": "lora_b", "score_norm": "raw"} if scores else None)
    record.write(folder)
    Results(task="sst2", method=method, arm=arm or method, seed=seed, rank_budget=8, train_runtime=1.0,
            trainable_params=record.adapter_params(), final_rank_total=record.final_rank_total).write(folder)
    return folder


def test_allocation_quality_on_a_hand_made_allocation_is_exact(tmp_path):
    costs = {"a": 10, "b": 10, "c": 30, "d": 30}  # a, c planted
    (tmp_path / "truth").mkdir()
    (tmp_path / "truth" / "ground_truth.json").write_text(json.dumps({"planted": {"a": {}, "c": {}}}))
    (tmp_path / "truth" / "oracle_pattern.json").write_text(json.dumps({"a": 4, "b": 1, "c": 4, "d": 1}))
    truth = GroundTruth.read(tmp_path / "truth" / "ground_truth.json")
    assert shares({"a": 4, "b": 1, "c": 4, "d": 1}, costs, truth.planted) == (0.8, 160 / 200)

    glora = write_run(tmp_path / "glora", {"a": 3, "b": 2, "c": 2, "d": 1}, costs, "glora",
                      scores={"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}, arm="glora_params")
    row = run_quality(glora, truth)
    assert row["rank_share"] == 5 / 8 and row["param_share"] == (30 + 60) / (30 + 20 + 60 + 30)
    assert row["oracle_rank_share"] == 0.8 and row["oracle_param_share"] == 0.8
    assert row["uniform_rank_share"] == 0.5 and row["uniform_param_share"] == 40 / 80
    assert row["recall_at_k_score"] == 0.5 and row["planted_score_places"] == [1, 3]
    assert row["recall_at_k_rank"] == 0.75  # a (3) first, then b or c (2) for the last place
    assert row["arm"] == "glora_params" and row["seed"] == 1

    lora = write_run(tmp_path / "lora", {"a": 2, "b": 2, "c": 2, "d": 2}, costs, "lora")
    table = allocation_quality.main([str(tmp_path / "truth" / "ground_truth.json"), str(lora), str(glora),
                                     "--out_dir", str(tmp_path / "out"), "--allow_unfingerprinted"])  # no data here
    assert table["recall_at_k_rank"].tolist() == [0.5, 0.75] and table["recall_at_k_score"].isna().tolist() == [True, False]
    assert "| lora | lora | 1 |" in (tmp_path / "out" / "allocation_quality.md").read_text()
    assert len(pd.read_csv(tmp_path / "out" / "allocation_quality.csv")) == 2

    # Per arm: the means over its runs; a second GLoRA seed ranks a and c first (rank share 6/8, recall 1).
    write_run(tmp_path / "glora2", {"a": 3, "b": 1, "c": 3, "d": 1}, costs, "glora",
              scores={"a": 0.4, "b": 0.1, "c": 0.3, "d": 0.2}, arm="glora_params", seed=2)
    allocation_quality.main([str(tmp_path / "truth" / "ground_truth.json"), str(lora), str(glora),
                             str(tmp_path / "glora2"), "--out_dir", str(tmp_path / "out"), "--allow_unfingerprinted"])
    by_arm = pd.read_csv(tmp_path / "out" / "allocation_by_arm.csv").set_index("arm")
    assert by_arm.loc["glora_params", "runs"] == 2
    assert by_arm.loc["glora_params", "rank_share"] == pytest.approx((5 / 8 + 6 / 8) / 2)
    assert by_arm.loc["glora_params", "recall_at_k_rank"] == pytest.approx((0.75 + 1.0) / 2)
    assert by_arm.loc["glora_params", "recall_at_k_score"] == pytest.approx((0.5 + 1.0) / 2)
    assert by_arm.loc["lora", "rank_share"] == 0.5 and pd.isna(by_arm.loc["lora", "recall_at_k_score"])
    assert "| glora_params | 2 | 68.8% |" in (tmp_path / "out" / "allocation_quality.md").read_text()


def test_allocation_quality_refuses_runs_trained_on_other_data_than_its_ground_truth(tmp_path, capsys):
    """The ground truth's folder holds the task's data; each run's recorded data fingerprint must be that folder's
    under the run's own row selection. Another planting at the same path, or a run without a fingerprint, is refused
    in one line (the latter scored with a note under --allow_unfingerprinted)."""
    from dataclasses import asdict

    from conftest import write_glue_fixture

    from harness.arguments import DataArguments
    from harness.glue_data import data_fingerprint, load_glue_data
    from harness.records import RunArgs

    costs = {"a": 10, "b": 10, "c": 30, "d": 30}
    truth = tmp_path / "truth"
    write_glue_fixture(truth, "sst2")
    write_glue_fixture(tmp_path / "other", "sst2", seed=1)  # another planting of the same shape
    (truth / "ground_truth.json").write_text(json.dumps({"planted": {"a": {}, "c": {}}}))
    (truth / "oracle_pattern.json").write_text(json.dumps({"a": 4, "b": 1, "c": 4, "d": 1}))

    def trained_on(folder, name, **selection):
        run = write_run(tmp_path / name, {"a": 2, "b": 2, "c": 2, "d": 2}, costs, "lora")
        data = DataArguments(task="sst2", dataset_dir=str(folder), **selection)
        RunArgs(data=asdict(data), data_fingerprint=data_fingerprint(load_glue_data(data), "sst2")).write(run)
        return str(run)

    ground_truth = str(truth / "ground_truth.json")
    same = [trained_on(truth, "same"), trained_on(truth, "first_40", max_train_samples=40)]
    assert len(allocation_quality.main([ground_truth, *same])) == 2
    other = trained_on(tmp_path / "other", "other_run")
    with pytest.raises(SystemExit) as refused:
        allocation_quality.main([ground_truth, *same, other])
    assert str(refused.value) == (f"{other} trained on other data than {truth} holds (train, validation differ under "
                                  "its own data flags): it is not a run of this ground truth; score it against the "
                                  "ground truth of the data it trained on.")
    old = write_run(tmp_path / "old", {"a": 2, "b": 2, "c": 2, "d": 2}, costs, "lora")
    with pytest.raises(SystemExit, match=rf"^{old} records no data fingerprint .* pass --allow_unfingerprinted"):
        allocation_quality.main([ground_truth, str(old)])
    assert len(allocation_quality.main([ground_truth, str(old), "--allow_unfingerprinted"])) == 1
    assert f"note: {old} records no data fingerprint" in capsys.readouterr().out


def test_control_study_launcher_dry_run(tiny_bert, tmp_path, python_for_launchers):
    """launch/control_study.sh end to end on the tiny model: the planted data, tuning per arm, the chosen rates, final
    runs (the oracle from the generated pattern), one signal ablation, and both reports."""
    import os
    import subprocess

    root = tmp_path / "controls"
    env = {**os.environ, "PYTHON": python_for_launchers, "STUDY_ROOT": str(root), "STUDY_MODEL": str(tiny_bert),
           "STUDY_SOURCE": str(ROOT / "data" / "glue" / "sst2"), "STUDY_GRID": "1e-3 4e-3", "STUDY_SEEDS": "1",
           "STUDY_SIGNALS": "lora_ab", "STUDY_NORMS": "per_entry",
           "STUDY_GENERATOR_ARGS": "--planted 0:value 1:ffn_in --rank 2 --train_rows 80 --dev_rows 24 --max_seq_length 32",
           "STUDY_EXTRA_ARGS": "--max_steps 3 --max_seq_length 32"}
    # STUDY_STAGE=tune stops after the chosen rates; the whole study then reuses its tuning runs.
    done = subprocess.run(["bash", str(ROOT / "launch" / "control_study.sh"), "positive"], env={**env, "STUDY_STAGE": "tune"},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    positive = root / "positive"
    tuned = json.loads((positive / "chosen_rates.json").read_text())
    assert not (positive / "final").exists() and len(list((positive / "tuning").glob("*/lr*/all_results.json"))) == 8
    done = subprocess.run(["bash", str(ROOT / "launch" / "control_study.sh"), "positive"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    started = re.findall(r"^\d\d:\d\d:\d\d start (\S+)$", done.stdout, re.M)
    assert len(started) == 5 and "tuning" not in " ".join(started)  # the 4 finals and the ablation: no tuning again
    chosen = json.loads((positive / "chosen_rates.json").read_text())
    assert chosen == tuned
    assert set(chosen) == {"lora", "oracle", "glora_params", "adalora_params"} and set(chosen.values()) <= {1e-3, 4e-3}
    oracle = json.loads((positive / "final" / "oracle_seed1" / "ranks.json").read_text())
    pattern = json.loads((positive / "data" / "oracle_pattern.json").read_text())
    assert {n: m["final_rank"] for n, m in oracle["modules"].items()} == pattern
    assert json.loads((positive / "final" / "oracle_seed1" / "all_results.json").read_text())["arm"] == "oracle"
    for arm, lr in chosen.items():
        run_args = json.loads((positive / "final" / f"{arm}_seed1" / "run_args.json").read_text())
        assert run_args["training"]["learning_rate"] == lr and run_args["resolved"]["arm"] == arm
        assert run_args["data"]["task"] == "stsb" and run_args["resolved"]["budget_unit"] == "params"
    ablation = json.loads((positive / "signals" / "lora_ab_per_entry" / "ranks.json").read_text())
    assert ablation["glora"]["signal"] == "lora_ab" and ablation["glora"]["score_norm"] == "per_entry"
    quality = pd.read_csv(positive / "allocation" / "allocation_quality.csv")
    assert sorted(quality["arm"]) == sorted(["lora", "oracle", "glora_params", "adalora_params", "glora_lora_ab_per_entry"])
    assert quality.set_index("arm").loc["oracle", "rank_share"] == pytest.approx(
        quality.set_index("arm").loc["oracle", "oracle_rank_share"])
    assert (positive / "comparison" / "comparison.md").is_file()

    # The negative control with the positive control's rates: no tuning, no oracle arm (it would be uniform LoRA),
    # every matrix planted at rank 2.
    env["STUDY_RATES_FROM"] = str(positive / "chosen_rates.json")
    done = subprocess.run(["bash", str(ROOT / "launch" / "control_study.sh"), "negative"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    negative = root / "negative"
    assert json.loads((negative / "chosen_rates.json").read_text()) == {a: chosen[a] for a in
                                                                         ("lora", "glora_params", "adalora_params")}
    assert not (negative / "tuning").exists() and sorted(p.name for p in (negative / "final").iterdir() if p.is_dir()) == [
        "adalora_params_seed1", "glora_params_seed1", "lora_seed1"]
    truth = json.loads((negative / "data" / "ground_truth.json").read_text())
    assert len(truth["planted"]) == 12 and {e["rank"] for e in truth["planted"].values()} == {2}


def test_control_study_refuses_an_unknown_arm_or_stage_in_one_line(tmp_path):
    """A misspelt STUDY_ARMS entry or STUDY_STAGE stops the launcher before anything runs, naming the value and the
    known ones."""
    import os
    import subprocess

    env = {**os.environ, "STUDY_ROOT": str(tmp_path), "STUDY_MODEL": "unused", "STUDY_ARMS": "lora glora_paramz"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "control_study.sh"), "positive"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and not list(tmp_path.iterdir())
    assert done.stderr.count("\n") == 1 and "unknown arm 'glora_paramz'" in done.stderr
    assert {"eva", "eva_rho1", "glora_cal", "glora_un", "lora_r1", "lora_r4", "glora_params"} <= set(done.stderr.split("choose from ")[1].split())
    env = {**os.environ, "STUDY_ROOT": str(tmp_path), "STUDY_MODEL": "unused", "STUDY_STAGE": "tuning"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "control_study.sh"), "positive"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and not list(tmp_path.iterdir())
    assert done.stderr == "control_study.sh: STUDY_STAGE is all, tune, train or report, got 'tuning'\n"


def test_oracle_share_is_the_arms_gain_over_the_oracles(tmp_path, capsys):
    from launch import oracle_share

    scores = {"lora": [0.70, 0.72, 0.74], "oracle": [0.80, 0.82, 0.84], "glora_params": [0.75, 0.77, 0.79]}
    for arm, values in scores.items():
        for seed, value in enumerate(values, 1):
            (tmp_path / f"{arm}_seed{seed}").mkdir()
            Results(task="stsb", method="lora", arm=arm, seed=seed, rank_budget=8, train_runtime=1.0,
                    trainable_params=1, metrics={"eval_pearson": value, "eval_spearmanr": value,
                                                 "eval_combined_score": value}).write(tmp_path / f"{arm}_seed{seed}")
    oracle_share.main(tmp_path, ["glora_params"])
    out = capsys.readouterr().out
    assert "oracle - lora +10.00" in out
    assert "paired by seed (3 seeds, differences +10.00, +10.00, +10.00)" in out
    row = next(line for line in out.splitlines() if line.startswith("| glora_params"))
    assert "| 1,2,3 | 77.00 | +5.00 | +10.00 | 0.50 |" in row  # (77 - 72) / (82 - 72)
    assert row.endswith("| nan (3) |")  # equal differences: no paired t


def test_oracle_share_pairs_the_arms_by_seed(tmp_path, capsys):
    """The paired t-test over the seeds both arms ran (seed 4 of the oracle has no lora twin), as scipy's ttest_rel."""
    from scipy.stats import ttest_rel

    from launch import oracle_share

    scores = {"lora": {1: 0.70, 2: 0.75, 3: 0.71}, "oracle": {1: 0.74, 2: 0.77, 3: 0.76, 4: 0.90},
              "glora_params": {1: 0.72, 2: 0.74, 3: 0.74}}
    for arm, values in scores.items():
        for seed, value in values.items():
            Results(task="stsb", method="lora", arm=arm, seed=seed, rank_budget=8, train_runtime=1.0,
                    trainable_params=1, metrics={"eval_combined_score": value}).write(
                        (tmp_path / f"{arm}_seed{seed}").mkdir() or tmp_path / f"{arm}_seed{seed}")
    oracle_share.main(tmp_path, ["glora_params"])
    out = capsys.readouterr().out
    expected = ttest_rel([0.74, 0.77, 0.76], [0.70, 0.75, 0.71])
    assert f"paired by seed (3 seeds, differences +4.00, +2.00, +5.00): t {expected.statistic:.3g}, p " \
           f"{expected.pvalue:.3g}" in out
    row = next(line for line in out.splitlines() if line.startswith("| glora_params"))
    assert row.endswith(f"| {ttest_rel([0.72, 0.74, 0.74], [0.70, 0.75, 0.71]).pvalue:.3g} (3) |")


def test_oracle_share_refuses_a_folder_without_lora_or_oracle_runs_and_two_runs_of_one_arm_and_seed(tmp_path):
    from harness.records import RunArgs
    from launch import oracle_share

    def final_run(name, arm, seed, value, sha="a"):
        folder = tmp_path / name
        folder.mkdir()
        Results(task="stsb", method="lora", arm=arm, seed=seed, rank_budget=8, train_runtime=1.0, trainable_params=1,
                metrics={"eval_combined_score": value}).write(folder)
        RunArgs(data_fingerprint={"train": {"rows": 80, "sha256": sha * 64}}).write(folder)

    final_run("lora_seed1", "lora", 1, 0.7)
    with pytest.raises(SystemExit, match=rf"^{tmp_path}: no finished run of arm oracle \(all_results.json"):
        oracle_share.main(tmp_path, ["glora_params"])
    final_run("oracle_seed1", "oracle", 1, 0.8)
    final_run("other_data_lora_seed1", "lora", 1, 0.9, sha="b")  # the same arm and seed on other data
    with pytest.raises(SystemExit, match=rf"^{tmp_path}: its runs trained on 2 data contents"):
        oracle_share.main(tmp_path, ["glora_params"])
    RunArgs().write(tmp_path / "other_data_lora_seed1")  # no recorded content: still never silently one run
    with pytest.raises(SystemExit, match=rf"^{tmp_path}: arm lora has two runs of seed 1 \({tmp_path / 'lora_seed1'}, "):
        oracle_share.main(tmp_path, ["glora_params"])
