"""launch/frontier.py: the uniform-rank frontier, each arm's distance from it, and the learning-rate curves."""

import json
import math

import pandas as pd
import pytest

from launch import frontier

COLUMNS = ["task", "arm", "n_seeds", "adapter_params_effective", "train_time_mean", "train_cpu_time_mean",
           "score_mean", "score_std"]


def write_comparison(path, rows):
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def test_an_arm_is_scored_against_the_uniform_frontier_interpolated_at_its_parameters_with_its_error(tmp_path, capsys):
    csv = write_comparison(tmp_path / "comparison.csv", [
        ("planted", "lora_r1", 3, 50, 60.0, 30.0, 0.40, 0.01),
        ("planted", "lora", 3, 100, 70.0, 35.0, 0.50, 0.01),
        ("planted", "lora_r3", 3, 150, 80.0, 40.0, 0.55, 0.01),
        ("planted", "glora_params", 3, 120, 75.0, 38.0, 0.60, 0.02),
        ("planted", "oracle", 3, 40, 65.0, 33.0, 0.70, 0.01),
    ])
    frontier.main([str(csv), "--out_dir", str(tmp_path / "out")])
    table = frontier.frontier_table(frontier.read_comparisons([csv])).set_index("arm")
    # the frontier at 120 parameters: 0.50 + (0.55 - 0.50) * 20 / 50 = 0.52, so GLoRA is 8 points above it
    assert table.loc["glora_params", "minus uniform frontier x100"] == pytest.approx(8.0)
    assert table.loc["lora", "minus uniform frontier x100"] == pytest.approx(0.0)
    assert math.isnan(table.loc["oracle", "minus uniform frontier x100"])  # below the uniform range: no claim
    # its SE: sqrt(0.02^2/3 + (0.6^2 + 0.4^2) x 0.01^2/3) = 0.012275 (seeds independent); uniform arms have none
    assert table.loc["glora_params", "2 SE x100"] == pytest.approx(2.45)
    assert math.isnan(table.loc["lora", "2 SE x100"]) and math.isnan(table.loc["oracle", "2 SE x100"])
    assert "train_cpu_time_mean" in table.columns
    written = (tmp_path / "out" / "frontier.md").read_text()
    assert "| planted | glora_params |" in written and "8" in written.split("glora_params")[1].split("\n")[0]
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0


def test_an_arm_in_two_comparisons_is_refused_naming_both_files(tmp_path):
    a = write_comparison(tmp_path / "a.csv", [("planted", "lora", 3, 100, 70.0, 35.0, 0.5, 0.01)])
    b = write_comparison(tmp_path / "b.csv", [("planted", "lora", 3, 100, 70.0, 35.0, 0.6, 0.01)])
    with pytest.raises(SystemExit, match=r"arm 'lora' of task 'planted' is in more than one comparison: .*a\.csv, .*b\.csv"):
        frontier.main([str(a), str(b), "--out_dir", str(tmp_path / "out")])


def test_lr_curves_read_each_arms_tuning_runs_at_their_last_evaluation(tmp_path):
    csv = write_comparison(tmp_path / "comparison.csv", [("planted", "lora", 1, 100, 70.0, 35.0, 0.5, 0.0)])
    root = tmp_path / "study"
    scores = {"lora": {1e-3: 0.52, 3e-3: 0.60}, "eva": {1e-3: 0.50, 3e-3: 0.58}}
    for arm, by_lr in scores.items():
        for lr, score in by_lr.items():
            run = root / "tuning" / arm / f"lr{lr:g}"
            run.mkdir(parents=True)
            lines = [{"step": 5, "max_steps": 10, "metrics": {"recovered": 0.0}},
                     {"step": 10, "max_steps": 10, "metrics": {"recovered": score}}]
            (run / "eval_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    frontier.main([str(csv), "--out_dir", str(tmp_path / "out"), "--tuning", str(root)])
    curves = frontier.lr_curves([root], "recovered")
    got = {(r["arm"], r["learning rate"]): r["tuning recovered"] for _, r in curves.iterrows()}
    assert got == {(arm, lr): s for arm, by_lr in scores.items() for lr, s in by_lr.items()}
    assert "0.58" in (tmp_path / "out" / "lr_curves.md").read_text()
    assert (tmp_path / "out" / "lr_curves.png").stat().st_size > 0
