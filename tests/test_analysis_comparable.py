"""Arms and comparable groups in compare_runs.py: two arms of one method are two rows, runs that are not comparable
(trial runs, another dev subset, other data, another length or model) are never pooled or compared, what is set
aside is said, and the bootstrap uses the rows the score was computed on."""
import dataclasses
import json
from pathlib import Path

import pytest

import compare_runs as cr
from analysis.runs import load_runs
from tests.test_compare_runs import N, predictions, sst2_metrics, write_run

ACC = {"lora": [0.70, 0.71, 0.72], "adalora": [0.80, 0.81, 0.82], "glora": [0.78, 0.79, 0.80]}


def recorded(arm=None, budget_unit="rank", data=None, training=None, resolved=None, results=None, peft=None):
    """(run_args sections, all_results keys) as a run of today writes them: the data selection, the training length
    and the resolved plan (arm, budget unit, optimizer steps); peft: the flags' block (write_run's by default).
    arm=None: a run written before arms were recorded."""
    args = {"model": {"model_name_or_path": "minilm"},
            "data": {"task": "sst2", "dataset_name": "nyu-mll/glue", "dataset_dir": "data/glue", "train_file": None,
                     "validation_file": None, "validation_mismatched_file": None, "max_train_samples": None,
                     "max_eval_samples": None, "tuning_split_fraction": 0.0, "tuning_split_max": 2000, **(data or {})},
            "training": {"max_steps": -1, "num_train_epochs": 1.0, **(training or {})},
            "resolved": {"budget_unit": budget_unit, "total_steps": 60, **({"arm": arm} if arm else {}),
                         **(resolved or {})}, **({"peft": peft} if peft else {})}
    res = {"budget_unit": budget_unit, "param_budget": 49152 if budget_unit == "params" else None,
           **({"arm": arm} if arm else {}), **(results or {})}
    return args, res


def arm_runs(root, method, accs, seeds=(1, 2, 3), prefix="", **record):
    """One finished run per seed of one arm; record: recorded()'s arguments."""
    args, res = recorded(**record)
    name = prefix + (record.get("arm") or method)
    return [write_run(root, f"{name}_s{seed}", "sst2", method, seed, sst2_metrics(acc), 100.0,
                      {"validation": predictions(acc)}, log=False, args=args, results=res)
            for seed, acc in zip(seeds, accs)]


def compare(root, *flags):
    assert cr.main([str(root), "--n_bootstrap", "100", "--no_figures", *flags]) == 0
    out = root / "comparison"
    return json.loads((out / "comparison.json").read_text()), (out / "comparison.md").read_text()


def row(data, arm, group=""):
    """The sst2 row of one arm in one comparable group (.get: the same test reads main's tables, which had none)."""
    (r,) = [r for r in data["table"] if r["task"] == "sst2" and r.get("arm", r["method"]) == arm
            and r.get("group", "") == group]
    return r


def default_arms(root, **record):
    for method, accs in ACC.items():
        arm_runs(root, method, accs, arm=method, **record)

# -----------------------------------------------------------------------------
# arms (issue 18, point 2)


def test_two_arms_of_one_method_and_budget_are_separate_rows(tmp_path):
    default_arms(tmp_path)
    arm_runs(tmp_path, "glora", [0.74, 0.75, 0.76], arm="glora_params", budget_unit="params")
    assert cr.main([str(tmp_path), "--n_bootstrap", "100"]) == 0  # figures too: one series per arm
    data = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    md = (tmp_path / "comparison" / "comparison.md").read_text()
    assert data["skipped"] == []
    assert [r.get("arm") for r in data["table"]] == ["lora", "adalora", "glora", "glora_params"]
    rank, params = row(data, "glora"), row(data, "glora_params")
    assert rank["n_seeds"] == params["n_seeds"] == 3 and params["seeds"] == "1 2 3"
    assert rank["score_mean"] == pytest.approx(0.79) and params["score_mean"] == pytest.approx(0.75)
    assert params["delta_vs_lora"] == pytest.approx(0.04) and params["vs_lora_arm"] == "lora"
    assert params["share_of_gain"] == pytest.approx(0.04 / 0.10) and params["share_adalora_arm"] == "adalora"
    assert "| sst2 | 32 | GLoRA (glora_params) | 3 |" in md and "| sst2 | 32 | GLoRA | 3 |" in md
    assert "**GLoRA (glora_params) recovers 40% of AdaLoRA's gain over LoRA**" in md
    pairs = [(s["a"], s["b"]) for s in data["significance"]]
    assert pairs == [("adalora", "lora"), ("glora", "lora"), ("glora_params", "lora"), ("glora", "adalora"),
                     ("glora_params", "adalora")]
    for stem in ("sst2_glora_params_confusion", "sst2_glora_params_score_vs_rank", "sst2_glora_score_vs_rank"):
        assert (tmp_path / "comparison" / f"{stem}.png").stat().st_size > 1000


def test_runs_without_an_arm_get_it_from_method_and_budget_unit(tmp_path):
    """Runs written before arms were recorded: glora under --budget_unit params is the glora_params arm."""
    for method, accs in ACC.items():
        arm_runs(tmp_path, method, accs)
    arm_runs(tmp_path, "glora", [0.74, 0.75, 0.76], budget_unit="params", prefix="params_")
    runs, skipped = load_runs([tmp_path])
    assert skipped == [] and len(runs) == 12
    assert sorted({r.arm for r in runs}) == ["adalora", "glora", "glora_params", "lora"]


def test_rank_pattern_arm_is_its_own_row_and_uniform_lora_stays_the_baseline(tmp_path):
    pattern = {"path": "oracle.json", "sha256": "1a2b3c4d" + "0" * 56, "source": "mapping"}
    arm_runs(tmp_path, "lora", [0.75, 0.76, 0.77], arm="lora_pattern-1a2b3c4d", results={"rank_pattern": pattern})
    default_arms(tmp_path)
    data, md = compare(tmp_path)
    assert [r.get("arm") for r in data["table"]] == ["lora", "lora_pattern-1a2b3c4d", "adalora", "glora"]
    oracle = row(data, "lora_pattern-1a2b3c4d")
    assert oracle["vs_lora_arm"] == "lora" and oracle["delta_vs_lora"] == pytest.approx(0.05)
    assert oracle["verdict_vs_lora"] == "significant"
    assert row(data, "glora")["share_of_gain"] == pytest.approx(0.08 / 0.10)  # against uniform LoRA, not the pattern
    assert "| sst2 | 32 | LoRA (lora_pattern-1a2b3c4d) | 3 |" in md


@pytest.mark.parametrize("labels, used", [(["lora", "lora_b"], "lora"), (["lora_a", "lora_b"], None)])
def test_several_uniform_lora_arms_name_the_baseline_or_refuse_it(tmp_path, labels, used):
    for label, accs in zip(labels, (ACC["lora"], [0.60, 0.61, 0.62])):
        arm_runs(tmp_path, "lora", accs, arm=label)
    arm_runs(tmp_path, "glora", ACC["glora"], arm="glora")
    data, md = compare(tmp_path)
    glora = row(data, "glora")
    (message,) = data.get("notes", [None])
    assert message.startswith("sst2 (R_total = 32): several uniform LoRA arms") and message in md
    if used:
        assert glora["vs_lora_arm"] == "lora" and glora["delta_vs_lora"] == pytest.approx(0.08)
        assert "the comparison uses lora" in message
    else:
        assert glora["vs_lora_arm"] == "" and glora["delta_vs_lora"] is None and data["significance"] == []
        assert "none labelled lora" in message and "--arm lora" in message


def test_one_arm_label_over_two_budget_units_is_set_aside(tmp_path):
    """--arm glora given to a rank-budget and a parameter-budget run: not one arm, so neither is pooled."""
    default_arms(tmp_path)
    arm_runs(tmp_path, "glora", [0.74, 0.75], seeds=(4, 5), arm="glora", budget_unit="params", prefix="params_")
    data, md = compare(tmp_path)
    assert not [r for r in data["table"] if r.get("arm", r["method"]) == "glora"]
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert len(reasons) == 5 and all("budget unit params vs rank" in r for r in reasons.values())
    assert "give them distinct --arm labels" in md

# -----------------------------------------------------------------------------
# comparable groups (issue 19, point 7)


def test_trial_runs_are_not_pooled_with_full_runs(tmp_path, capsys):
    default_arms(tmp_path)
    for method in ("lora", "glora"):  # two-step trial runs of other seeds in the same root
        arm_runs(tmp_path, method, [0.51, 0.52], seeds=(4, 5), arm=method, prefix="trial_",
                 training={"max_steps": 2}, resolved={"total_steps": 2})
    data, md = compare(tmp_path)
    full, trial = row(data, "lora", "g1"), row(data, "lora", "g2")
    assert full["n_seeds"] == 3 and full["seeds"] == "1 2 3" and full["score_mean"] == pytest.approx(0.71)
    assert trial["n_seeds"] == 2 and trial["seeds"] == "4 5"
    assert row(data, "glora", "g1")["share_of_gain"] == pytest.approx(0.08 / 0.10)
    assert {(s.get("group"), s["a"], s["b"]) for s in data["significance"]} == {
        ("g1", "adalora", "lora"), ("g1", "glora", "lora"), ("g1", "glora", "adalora"), ("g2", "glora", "lora")}
    (g2,) = [c for c in data.get("comparable_groups", []) if c["group"] == "g2"]
    assert g2["differs"] == "mode: trial run (--max_steps); length: max_steps 2"
    assert "## Comparable groups" in md and "| sst2 (g2) | 32 | LoRA | 2 |" in md
    assert "sst2 (g2), R_total = 32: compared on its own (mode: trial run" in capsys.readouterr().err


def test_trial_run_switch_belongs_to_the_trial_mode(tmp_path):
    """A trial run (its schedules may have been scaled into the run) is never pooled with a --max_steps run where the
    switch was off. The resolved value decides: --trial_run unset on a --max_steps run resolves to on and pools with
    an explicit --trial_run; a run recorded before the flag existed, or before its resolved value was, counts by its
    flag (absent: off)."""
    steps = {"training": {"max_steps": 2}, "resolved": {"total_steps": 2}}
    default_arms(tmp_path, **steps)  # written before --trial_run: no trial_run in run_args.json
    arm_runs(tmp_path, "lora", [0.73], seeds=(4,), arm="lora", prefix="plain_", resolved={"total_steps": 2},
             training={"max_steps": 2, "trial_run": False})
    arm_runs(tmp_path, "lora", [0.51, 0.52], seeds=(6, 7), arm="lora", prefix="trial_", resolved={"total_steps": 2},
             training={"max_steps": 2, "trial_run": True})
    arm_runs(tmp_path, "lora", [0.53], seeds=(8,), arm="lora", prefix="unset_", training={"max_steps": 2, "trial_run": None},
             resolved={"total_steps": 2, "trial_run": True})
    arm_runs(tmp_path, "lora", [0.74], seeds=(9,), arm="lora", prefix="off_", training={"max_steps": 2, "trial_run": False},
             resolved={"total_steps": 2, "trial_run": False})
    data, _ = compare(tmp_path)
    assert row(data, "lora", "g1")["seeds"] == "1 2 3 4 9" and row(data, "lora", "g2")["seeds"] == "6 7 8"
    (g2,) = [c for c in data["comparable_groups"] if c["group"] == "g2"]
    assert g2["differs"] == "mode: trial run (--max_steps, --trial_run)"


@pytest.mark.parametrize("differs, record, expected", [
    ("dev rows scored", {"data": {"max_eval_samples": 100}}, "dev rows: --max_eval_samples 100"),
    ("training rows", {"data": {"max_train_samples": 8000}}, "max train samples: --max_train_samples 8000"),
    ("tuning carve", {"data": {"tuning_split_fraction": 0.1}}, "tuning split: fraction 0.1, at most 2000"),
    ("data", {"data": {"dataset_dir": "other/glue"}}, "data: --dataset_dir other/glue"),
    ("epochs", {"training": {"num_train_epochs": 3.0}, "resolved": {"total_steps": 180}}, "length: num_train_epochs 3"),
])
def test_runs_that_differ_in_what_defines_a_run_are_not_pooled(tmp_path, differs, record, expected):
    default_arms(tmp_path)
    args, res = recorded(arm="lora", **{k: v for k, v in record.items() if k != "resolved"},
                         resolved=record.get("resolved"))
    for seed, acc in ((4, 0.90), (5, 0.91)):
        write_run(tmp_path, f"other_s{seed}", "sst2", "lora", seed, sst2_metrics(acc), 100.0,
                  {"validation": predictions(acc)}, log=False, args=args, results=res)
    data, md = compare(tmp_path)
    assert row(data, "lora", "g1")["seeds"] == "1 2 3", differs
    assert row(data, "lora", "g2")["seeds"] == "4 5"
    (g2,) = [c for c in data["comparable_groups"] if c["group"] == "g2"]
    assert expected in g2["differs"]


FINGERPRINT = {"train": {"rows": 60, "sha256": "a" * 64}, "validation": {"rows": 20, "sha256": "b" * 64}}


def test_runs_on_one_data_content_are_one_group_whatever_path_named_it_and_other_content_is_another(tmp_path):
    """The recorded data fingerprint decides, not --dataset_dir: an absolute and a relative name of one folder pool;
    the same path with other rows (a planted control regenerated there) does not."""
    absolute = str(Path("data/glue").resolve())
    for method, accs in ACC.items():
        args, res = recorded(arm=method, data={"dataset_dir": absolute})
        for seed, acc in zip((1, 2, 3), accs):
            name = f"{method}_s{seed}"
            args = {**args, "data_fingerprint": FINGERPRINT} if seed < 3 else {**recorded(arm=method)[0],
                                                                                "data_fingerprint": FINGERPRINT}
            write_run(tmp_path, name, "sst2", method, seed, sst2_metrics(acc), 100.0,
                      {"validation": predictions(acc)}, log=False, args=args, results=res)
    changed = {**FINGERPRINT, "train": {"rows": 60, "sha256": "c" * 64}}
    args, res = recorded(arm="lora")
    for seed, acc in ((4, 0.90), (5, 0.91)):
        write_run(tmp_path, f"changed_s{seed}", "sst2", "lora", seed, sst2_metrics(acc), 100.0,
                  {"validation": predictions(acc)}, log=False, args={**args, "data_fingerprint": changed}, results=res)
    data, md = compare(tmp_path)
    groups = {c["group"]: c["differs"] for c in data["comparable_groups"]}
    assert row(data, "lora", "g1")["seeds"] == "1 2 3" and row(data, "glora", "g1")["seeds"] == "1 2 3"
    assert row(data, "lora", "g2")["seeds"] == "4 5"
    assert groups["g2"].startswith("data: content ") and "(train 60, validation 20 rows)" in groups["g2"]


def test_a_run_recorded_before_the_data_fingerprint_is_grouped_by_its_data_path_as_before():
    from analysis.comparable import Setting
    from harness.records import RunArgs

    old = RunArgs.from_json(recorded(arm="lora")[0])
    assert old.data_fingerprint is None and Setting.of(old).data == "--dataset_dir data/glue"
    new = RunArgs.from_json({**recorded(arm="lora")[0], "data_fingerprint": FINGERPRINT})
    assert Setting.of(new).data.startswith("content ") and Setting.of(new) != Setting.of(old)


def test_glue_average_leaves_out_a_task_split_into_groups(tmp_path):
    default_arms(tmp_path)
    arm_runs(tmp_path, "lora", [0.5], seeds=(9,), arm="lora", prefix="trial_", training={"max_steps": 2})
    for task in ("rte", "qnli"):
        for method, accs in ACC.items():
            args, res = recorded(arm=method, data={"task": task})
            for seed, acc in zip((1, 2, 3), accs):
                write_run(tmp_path, f"{task}_{method}_s{seed}", task, method, seed, sst2_metrics(acc), 100.0,
                          {"validation": predictions(acc)}, log=False, args=args, results=res)
    data, md = compare(tmp_path)
    avg = [r for r in data["table"] if r["task"] == "GLUE avg"]
    assert len(avg) == 3 and {r["avg_over"] for r in avg} == {"qnli rte"}
    assert "GLUE avg at R_total = 32 leaves out sst2: runs in several comparable groups" in data.get("notes", [])

# -----------------------------------------------------------------------------
# predictions and the bootstrap


def test_truncated_predictions_are_left_out_of_the_bootstrap(tmp_path, capsys):
    default_arms(tmp_path)
    cut = tmp_path / "lora_s2" / "predictions_validation.csv"
    cut.write_text("\n".join(cut.read_text().splitlines()[: N // 2 + 1]) + "\n")  # header + 100 of 200 rows
    data, md = compare(tmp_path)
    s = next(s for s in data["significance"] if (s["a"], s["b"]) == ("glora", "lora"))
    assert (s["hier_n_a"], s["hier_n_b"]) == (3, 2)  # lora seed 2 left out, not every run cut to 100 rows
    assert s["n_examples"] == {"validation": N}
    assert s["delta_hier"] == pytest.approx(0.79 - (0.70 + 0.72) / 2)  # Δ of the runs the bootstrap used
    assert any("lora seed 2: predictions_validation.csv (100 of the 200 rows scored)" in n and "truncated" in n
               for n in s["notes"])
    (aside,) = [n for n in data.get("notes", []) if "lora_s2" in n]
    assert "left out of the bootstrap" in aside and aside in md
    assert "lora_s2" in capsys.readouterr().err


def test_predictions_of_fewer_dev_rows_are_left_out_even_when_their_score_matches(tmp_path):
    default_arms(tmp_path)
    path = tmp_path / "lora_s1" / "predictions_validation.csv"  # accuracy 0.70: 140 of 200 right
    df = predictions(0.70)
    right, wrong = df[df.label == df.prediction], df[df.label != df.prediction]
    df = df.drop(list(right.index[:7]) + list(wrong.index[:3]))  # 133 of 190 right: still 0.70
    df.to_csv(path, index=False)
    data, _ = compare(tmp_path)
    s = next(s for s in data["significance"] if (s["a"], s["b"]) == ("adalora", "lora"))
    assert (s["hier_n_a"], s["hier_n_b"]) == (3, 2) and s["n_examples"] == {"validation": N}
    assert "lora seed 1: predictions_validation.csv covers 190 of the 200 dev rows" in " ".join(s["notes"])


def test_share_interval_is_not_printed_with_too_few_seeds(tmp_path):
    for method, accs in ACC.items():
        arm_runs(tmp_path, method, accs[:2], seeds=(1, 2), arm=method)
    data, md = compare(tmp_path)
    glora = row(data, "glora")
    assert glora["verdict_vs_lora"].startswith("too few seeds")
    assert glora["share_of_gain"] == pytest.approx(0.08 / 0.10)
    assert glora["share_ci_low"] is None and glora["share_ci_high"] is None and glora.get("share_too_few_seeds")
    assert "**80%** [no interval: too few seeds]" in md and "CI" not in md.split("\n")[2]


def test_runs_of_the_release_and_of_today_at_the_new_defaults_are_one_group(tmp_path):
    """run_args.json as the release 6534415 wrote it (its real record: no new GLoRA flags nor resolved settings) and
    as today's harness writes it for the same command, less its data fingerprint: the runs of one arm pool, in one
    comparable group. With today's fingerprint kept they are two groups that differ in their data: a record saved
    before the fingerprint is grouped by its data path, one with it by content (docs/outputs.md), never guessed."""
    release = Path(__file__).parent / "data" / "release_identities"

    def write(root, keep_fingerprint):
        for method in ("lora", "glora"):
            for seed, version in ((1, "6534415"), (2, "6534415"), (3, "now")):
                identity = json.loads((release / f"{method}_{version}.json").read_text())
                if not keep_fingerprint:
                    identity.pop("data_fingerprint", None)
                write_run(root, f"{method}_{version}_s{seed}", "sst2", method, seed, sst2_metrics(ACC[method][seed - 1]),
                          100.0, {"validation": predictions(ACC[method][seed - 1])}, log=False, args=identity)

    write(tmp_path / "settings", keep_fingerprint=False)
    data, md = compare(tmp_path / "settings")
    assert not data["comparable_groups"] and "## Comparable groups" not in md
    assert row(data, "glora")["seeds"] == row(data, "lora")["seeds"] == "1 2 3"
    write(tmp_path / "content", keep_fingerprint=True)
    data, _ = compare(tmp_path / "content")
    assert sorted(group["differs"].split(":")[0] for group in data["comparable_groups"]) == ["data", "data"]

# -----------------------------------------------------------------------------
# the settings that define an arm (arguments.ArmPart): never pooled across, whatever the label


def glora_peft(**settings):
    """run_args.json's peft block of a GLoRA run of today at these settings (the rest at their defaults)."""
    from harness.arguments import PeftArguments

    return {"peft": {**dataclasses.asdict(PeftArguments(method="glora")), **settings}}


def test_one_arm_label_over_two_glora_signals_is_set_aside_naming_the_flag(tmp_path):
    """--arm glora given by hand to lora_b and sensitivity runs: not seeds of one arm. Every run of it is set aside,
    each with one line naming the arm, the flag, both values and the way out."""
    for method, accs in ACC.items():
        arm_runs(tmp_path, method, accs, arm=method, **(glora_peft() if method == "glora" else {}))
    arm_runs(tmp_path, "glora", [0.90, 0.91], seeds=(4, 5), arm="glora", prefix="sensitivity_",
             **glora_peft(glora_signal="sensitivity"))
    data, md = compare(tmp_path)
    assert not [r for r in data["table"] if r.get("arm", r["method"]) == "glora"]
    assert row(data, "lora")["seeds"] == "1 2 3"
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert sorted(reasons) == ["glora_s1", "glora_s2", "glora_s3", "sensitivity_glora_s4", "sensitivity_glora_s5"]
    assert set(reasons.values()) == {"set aside: arm glora on sst2 (R_total = 32) mixes runs that differ in "
                                     "--glora_signal lora_b vs sensitivity; give them distinct --arm labels"}
    assert "--glora_signal lora_b vs sensitivity" in md


@pytest.mark.parametrize("setting, differs", [
    ({"glora_calibration_steps": 8}, "--glora_calibration_steps 8 vs None"),
    ({"glora_score_norm": "per_entry"}, "--glora_score_norm per_entry vs raw"),
    ({"glora_max_rank": 16}, "--glora_max_rank 16 vs None"),
])
def test_runs_of_one_label_that_differ_in_any_arm_setting_are_not_pooled(tmp_path, setting, differs):
    arm_runs(tmp_path, "glora", [0.78, 0.79], seeds=(1, 2), arm="glora", **glora_peft())
    arm_runs(tmp_path, "glora", [0.90], seeds=(3,), arm="glora", prefix="other_", **glora_peft(**setting))
    runs, skipped = load_runs([tmp_path])
    assert runs == [] and len(skipped) == 3
    assert all(why.endswith(f"differ in {differs}; give them distinct --arm labels") for _, why in skipped)


def test_a_run_recorded_before_arms_gets_the_label_of_its_settings(tmp_path):
    """A run written before arms were recorded is labelled as today's harness would label it: its signal and
    calibration name a row of their own, beside the plain glora arm."""
    for method, accs in ACC.items():
        arm_runs(tmp_path, method, accs, **(glora_peft() if method == "glora" else {}))
    arm_runs(tmp_path, "glora", [0.90, 0.91, 0.92], prefix="cal_",
             **glora_peft(glora_signal="sensitivity", glora_calibration_steps=8))
    runs, skipped = load_runs([tmp_path])
    assert skipped == [] and len(runs) == 12
    assert sorted({r.arm for r in runs}) == ["adalora", "glora", "glora_sensitivity_cal8", "lora"]


def test_release_records_without_the_new_flags_pool_with_todays_runs_at_their_defaults(tmp_path):
    """run_args.json as the release 6534415 wrote it (no --glora_calibration_steps, --glora_signal_seed, ...) has the
    arm settings of today's run of the same command (ADDED_SINCE_RELEASE read at their defaults), so their seeds pool;
    a run of today asked otherwise is named. (The data fingerprint, recorded since, is left out of today's record here:
    a record without it is compared by its data path, a setting of its own.)"""
    release = Path(__file__).parent / "data" / "release_identities"
    old = json.loads((release / "glora_6534415.json").read_text())
    now = {k: v for k, v in json.loads((release / "glora_now.json").read_text()).items() if k != "data_fingerprint"}
    assert "glora_signal_seed" not in old["peft"] and now["peft"]["glora_signal_seed"] == 0
    for seed, args in ((1, old), (2, old), (3, now)):
        write_run(tmp_path, f"glora_s{seed}", "sst2", "glora", seed, sst2_metrics(0.8), 100.0,
                  {"validation": predictions(0.8)}, log=False, args=args)
    runs, skipped = load_runs([tmp_path])
    assert skipped == [] and [r.arm for r in runs] == ["glora"] * 3 and len({r.identity for r in runs}) == 1
    changed = {**now, "peft": {**now["peft"], "glora_signal_seed": 3}}
    write_run(tmp_path, "glora_s4", "sst2", "glora", 4, sst2_metrics(0.8), 100.0, {"validation": predictions(0.8)},
              log=False, args=changed)
    runs, skipped = load_runs([tmp_path])
    assert runs == [] and all("--glora_signal_seed 0 vs 3" in why for _, why in skipped)


def test_old_runs_keep_their_labels_and_pool_as_before():
    """The records of a15be9c (tests/data/old_runs: a peft block without the flags added since) load as the arms they
    were, two seeds each, nothing set aside."""
    runs, skipped = load_runs([Path(__file__).parent / "data" / "old_runs"])
    assert skipped == []
    assert sorted((r.arm, r.seed) for r in runs) == [(arm, seed) for arm in ("adalora", "glora", "glora_params", "lora")
                                                     for seed in (1, 2)]
