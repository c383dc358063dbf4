"""Every bad input stops before training, with one line naming the flag, file or row, and writes nothing."""

import copy
import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time

import pandas as pd
import pytest
from conftest import ROOT, trial_args

import run_glue_peft
from harness.arguments import (
    ADDED_SINCE_RELEASE,
    FLAG_GROUPS,
    RESUME_MAY_CHANGE,
    PeftArguments,
    added_since_release,
    check_args,
    flag_fields,
    parse_args,
)
from harness.checkpoints import checkpoint_problem, identity_differences, identity_of


def run(model_dir, data_dir, task, method, out, *extra):
    return run_glue_peft.main(trial_args(model_dir, data_dir, task, method, out, *extra))


def fails_before_writing(error, match, model_dir, data_dir, method, out, *extra):
    with pytest.raises(error, match=match):
        run(model_dir, data_dir, "sst2", method, out, *extra)
    assert not out.exists()  # not even run_args.json


# ---- offline: what could not be reached, and the flag that points to a local copy ----


def test_offline_model_names_the_model_and_the_flag(tiny_bert, glue_dir, tmp_path):
    args = trial_args(tiny_bert, glue_dir("sst2"), "sst2", "lora", tmp_path / "out", "--max_steps", "2")
    args[args.index("--model_name_or_path") + 1] = "fake-org/no-such-model"
    with pytest.raises(OSError, match="Could not load --model_name_or_path fake-org/no-such-model: not a local directory.*"
                                      "pass a local copy with --model_name_or_path DIR"):
        run_glue_peft.main(args)
    assert not (tmp_path / "out").exists()


def test_offline_data_names_the_dataset_and_the_flags(tiny_bert, tmp_path):
    args = trial_args(tiny_bert, tmp_path, "sst2", "lora", tmp_path / "out", "--dataset_name", "fake-org/no-such-glue")
    at = args.index("--dataset_dir")
    del args[at : at + 2]
    with pytest.raises(OSError, match=r"Could not load the sst2 data of --dataset_name fake-org/no-such-glue from the "
                                      r"Hugging Face Hub .* pass --dataset_dir DIR \(files DIR/sst2/<split>"):
        run_glue_peft.main(args)


# ---- data files ----


@pytest.mark.parametrize("fmt, content", [("parquet", None), ("csv", ""), ("csv", "sentence,label,idx\n"), ("jsonl", "\n")])
def test_empty_training_file_is_named(tiny_bert, glue_dir, tmp_path, fmt, content):
    data = glue_dir("sst2", fmt=fmt)
    train = data / "sst2" / f"train.{fmt}"
    if content is None:  # a Parquet file with the columns and no rows
        pd.read_parquet(train).iloc[:0].to_parquet(train)
    else:
        train.write_text(content)
    fails_before_writing(ValueError, f"{train}: no rows", tiny_bert, data, "lora", tmp_path / "out", "--max_steps", "2")


@pytest.mark.parametrize("text", [None, "", "  "])
def test_empty_text_is_named_by_file_row_and_column(tiny_bert, glue_dir, tmp_path, text):
    data = glue_dir("sst2")
    dev = data / "sst2" / "validation.parquet"
    frame = pd.read_parquet(dev)
    frame.loc[5, "sentence"] = text
    frame.to_parquet(dev)
    fails_before_writing(ValueError, f"{dev} row 5 .*column 'sentence' is empty", tiny_bert, data, "lora",
                         tmp_path / "out", "--max_steps", "2")


# ---- flags ----


@pytest.mark.parametrize("method, budget", [("lora", "0"), ("glora", "-5"), ("adalora", "-36"), ("glora", "0")])
def test_rank_budget_below_one_is_refused(method, budget):
    with pytest.raises(ValueError, match=f"--rank_budget must be >= 1 .*got {budget};"):
        check_args(parse_args(["--task", "sst2", "--method", method, "--rank_budget", budget]))


@pytest.mark.parametrize(
    "method, flag, value, owner",
    [("lora", "--glora_warmup_fraction", "0.5", "glora"), ("lora", "--glora_warmup_steps", "5", "glora"),
     ("adalora", "--glora_signal", "delta", "glora"), ("glora", "--tinit_fraction", "0.3", "adalora"),
     ("glora", "--tfinal", "3", "adalora"), ("lora", "--init_r", "12", "adalora"), ("glora", "--deltaT", "5", "adalora")],
)
def test_flag_of_another_method_is_refused(method, flag, value, owner):
    with pytest.raises(ValueError, match=f"^{flag} {value} has no effect with --method {method}: it applies to --method "
                                         f"{owner} only"):
        check_args(parse_args(["--task", "sst2", "--method", method, flag, value]))
    check_args(parse_args(["--task", "sst2", "--method", owner, flag, value]))  # its own method takes it


def test_method_only_flags_are_marked():
    marked = {f.name: f.metadata.get("methods") for f in PeftArguments.__dataclass_fields__.values()}
    for name in ("init_r", "tinit", "tinit_fraction", "tfinal", "tfinal_fraction", "deltaT", "beta1", "beta2",
                 "orth_reg_weight"):
        assert marked[name] == ("adalora",), name
    for name in (name for name in marked if name.startswith("glora_")):
        assert marked[name] == ("glora",), name


def test_flag_prefixes_are_not_accepted():
    with pytest.raises(ValueError, match=r"^Unknown argument\(s\) \['--glora_warmup', '5'\] \(did you mean "
                                         r"--glora_warmup_steps\?\)"):
        parse_args(["--task", "sst2", "--method", "glora", "--glora_warmup", "5"])


@pytest.mark.parametrize("flag, value", [("--max_train_samples", "0"), ("--max_train_samples", "-3"),
                                         ("--max_eval_samples", "0")])
def test_sample_counts_below_one_are_refused(tiny_bert, glue_dir, tmp_path, flag, value):
    fails_before_writing(ValueError, f"^{flag} must be >= 1 \\(the first N examples\\), got {value}", tiny_bert,
                         glue_dir("sst2"), "lora", tmp_path / "out", "--max_steps", "2", flag, value)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--glora_min_rank", "0"], r"^--glora_min_rank must be >= 1 \(a LoRA layer cannot have rank 0\), got 0"),
        (["--glora_max_rank", "2"], r"^--glora_max_rank 2 cannot hold the rank budget: 12 matrices x 2 = 24 < R_total 48; "
                                    r"give at least 4"),
        (["--glora_max_rank", "3", "--budget_unit", "params"],
         r"^--glora_max_rank 3 cannot hold the parameter budget: every matrix at rank 3 spends 2688 < 3584 parameters; "
         r"give at least 4"),
        (["--glora_min_rank", "3", "--glora_max_rank", "2"], r"^--glora_max_rank must be >= --glora_min_rank 3, got 2"),
    ],
)
def test_glora_rank_floor_and_cap_are_named(tiny_bert, glue_dir, tmp_path, extra, match):
    fails_before_writing(ValueError, match, tiny_bert, glue_dir("sst2"), "glora", tmp_path / "out", "--max_steps", "2",
                         *extra)


def test_binary_config_file_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ValueError, match=f"^{config}: not a text file \\(byte 0 is not UTF-8\\)"):
        parse_args([str(config), "--task", "sst2"])


def test_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tiny_bert, glue_dir, tmp_path, caplog):
    data, out = glue_dir("sst2"), tmp_path / "out"
    run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2")
    finished = snapshot(out)
    other = subprocess.Popen(["sleep", "60"])  # a run that is still going
    lock = tmp_path / "out.lock"
    lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "earlier"}))
    try:
        with pytest.raises(FileExistsError, match=f"^{out} is in use by another run \\(pid {other.pid} on "
                                                  f"{socket.gethostname()}, started earlier; lock file {lock}\\): wait"):
            run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2", "--overwrite_output_dir", "True")
        assert snapshot(out) == finished and lock.is_file()
    finally:
        other.kill()
        other.wait()
    # Killed without removing its lock: a dead process's lock on this host is taken over.
    run(tiny_bert, data, "sst2", "lora", out, "--max_steps", "2", "--overwrite_output_dir", "True")
    assert f"{lock}: left by a run that no longer runs (pid {other.pid}" in caplog.text
    assert not lock.exists() and (out / "all_results.json").is_file()


def test_two_runs_taking_over_one_stale_lock_at_once_let_exactly_one_in(tmp_path, monkeypatch):
    """Both judge a dead run's lock stale at the same moment; the second goes on 0.2 s later, when the first has put
    its own lock in place. Only the first enters the folder; the second is refused in one line."""
    from harness import run_folder

    out, lock = tmp_path / "out", tmp_path / "out.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    judged, finished = threading.Barrier(2), threading.Barrier(2)
    is_stale = run_folder._is_stale

    def judged_together(holder):
        stale = is_stale(holder)
        if judged.wait(timeout=30) == 1:
            time.sleep(0.2)  # the later taker: the first has taken the lock over by now
        return stale

    monkeypatch.setattr(run_folder, "_is_stale", judged_together)
    entered, refused = [], []

    def attempt():
        try:
            with run_folder.folder_lock(out):
                entered.append(json.loads(lock.read_text()))
                finished.wait(timeout=30)  # hold the folder until the other has tried
        except FileExistsError as error:
            refused.append(str(error))
            finished.wait(timeout=30)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(entered) == 1 and entered[0]["pid"] == os.getpid()
    assert refused == [f"{out} was taken by another run just now (lock file {lock})."]
    assert not lock.exists()  # the run that entered removed its lock when it ended


@pytest.mark.parametrize(
    "text, match",
    [
        ("task: sst2\nmethod: [glora\n", r"run.yaml, line 3: not valid YAML/JSON"),
        ("- task: sst2\n- method: glora\n", r"run.yaml: expected a mapping of flag names to values .*got a list"),
        ("task: sst2\nglora_warmup: 5\n", r"run.yaml: unknown key 'glora_warmup' \(did you mean glora_warmup_steps\?\)"),
        ("task: sst2\nseed: null\n", r"run.yaml: seed is null; give a value, or delete the line to use the default"),
        ("task: sst2\nseed:\n", r"run.yaml: seed is null"),
    ],
)
def test_bad_config_file_is_named(tmp_path, text, match):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        parse_args([str(config)])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Config file {tmp_path / 'none.yaml'} does not exist"):
        parse_args([str(tmp_path / "none.yaml")])


# ---- resume ----

RESUMED = ("--max_steps", "4", "--glora_warmup_steps", "3", "--save_strategy", "steps", "--save_steps", "2")


@pytest.fixture(scope="module")
def glora_checkpoints(tiny_bert, tmp_path_factory):
    """A finished GLoRA run with checkpoints before (2) and after (4) its reallocation at step 3. Its 4 steps end
    mid-epoch (64 examples, batch 8), where transformers' own bookkeeping would resume into the epoch."""
    from conftest import write_glue_fixture

    root = tmp_path_factory.mktemp("resume")
    data = write_glue_fixture(root / "glue", "sst2")
    write_glue_fixture(root / "glue", "rte")
    out = root / "full"
    run(tiny_bert, data, "sst2", "glora", out, *RESUMED)
    return data, out


def unfinished_copy(full, out, remove_checkpoint=None):
    """The run as a kill after its last checkpoint (during the final evaluation) leaves it."""
    shutil.copytree(full, out)
    (out / "all_results.json").unlink()
    if remove_checkpoint:
        shutil.rmtree(out / remove_checkpoint)
    return out


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_from_the_last_checkpoint_trains_nothing_and_records_the_whole_run(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "killed_in_final_evaluation")
    results = run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", str(out / "checkpoint-4"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]  # no step 5
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert (out / "adapter_model.safetensors").read_bytes() == (full / "adapter_model.safetensors").read_bytes()
    assert (out / "predictions_validation.csv").read_text() == (full / "predictions_validation.csv").read_text()
    finished = json.loads((full / "all_results.json").read_text())
    progress = json.loads((full / "checkpoint-4" / "checkpoint_complete.json").read_text())
    assert (results["resumed_from_step"], results["resumed_part_steps"]) == (4, 0)
    assert results["eval_accuracy"] == finished["eval_accuracy"] and results["epoch"] == finished["epoch"] == 0.5
    assert results["train_loss"] == pytest.approx(finished["train_loss"], rel=1e-6)
    assert results["train_runtime"] == pytest.approx(progress["train_runtime"] + results["resumed_part_train_runtime"])


def test_resume_mid_run_records_whole_run_figures(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    results = run(tiny_bert, data, "sst2", "glora", tmp_path / "resumed", *RESUMED,
                  "--resume_from_checkpoint", str(full / "checkpoint-2"))
    finished = json.loads((full / "all_results.json").read_text())
    # The loss of all 4 steps, as the uninterrupted run computed it; the Trainer's own covers steps 3-4 only.
    assert results["train_loss"] == pytest.approx(finished["train_loss"], rel=1e-6)
    assert results["resumed_part_train_loss"] != pytest.approx(finished["train_loss"], rel=1e-6)
    assert results["epoch"] == finished["epoch"] and results["resumed_part_steps"] == 2
    progress = json.loads((full / "checkpoint-2" / "checkpoint_complete.json").read_text())
    assert progress["global_step"] == 2 and progress["train_runtime"] > 0
    assert results["train_runtime"] == pytest.approx(progress["train_runtime"] + results["resumed_part_train_runtime"])
    # Rates over the whole run: the same 4 x 8 examples as the uninterrupted run.
    for run_results in (results, finished):
        assert run_results["train_samples_per_second"] * run_results["train_runtime"] == pytest.approx(32, rel=2e-3)
        assert run_results["train_steps_per_second"] * run_results["train_runtime"] == pytest.approx(4, rel=2e-3)


def test_a_checkpoint_from_before_the_resolved_trial_switch_resumes_when_its_flag_is_given(tiny_bert, glora_checkpoints,
                                                                                          tmp_path):
    """A checkpoint (and its folder's run_args.json) written while --trial_run was a plain switch (asked False, no
    resolved value) resumes with --trial_run false, which resolves to what it ran; left unset (now: on, for a --max_steps run) it is refused
    naming the flag, before anything is written."""
    from harness.checkpoints import SEAL_FILE, seal

    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "older")
    checkpoint = out / "checkpoint-2"
    identity = json.loads((checkpoint / "run_identity.json").read_text())
    assert identity["resolved"].pop("trial_run") is True and identity["training"]["trial_run"] is None
    identity["training"]["trial_run"] = False
    (checkpoint / "run_identity.json").write_text(json.dumps(identity))
    progress = {k: v for k, v in json.loads((checkpoint / SEAL_FILE).read_text()).items() if k != "files"}
    seal(checkpoint, progress)
    run_args = json.loads((out / "run_args.json").read_text())  # the folder's record, as that version wrote it
    run_args["resolved"].pop("trial_run")
    run_args["training"]["trial_run"] = False
    (out / "run_args.json").write_text(json.dumps(run_args))
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"is from another run \(--trial_run False there, None here\)"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", str(checkpoint))
    assert snapshot(out) == before
    results = run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--trial_run", "false",
                  "--resume_from_checkpoint", str(checkpoint))
    assert results["resumed_from_step"] == 2
    assert results["train_loss"] == pytest.approx(json.loads((full / "all_results.json").read_text())["train_loss"],
                                                  rel=1e-6)


def test_a_resume_on_training_data_changed_at_the_same_path_is_refused_naming_the_split(tiny_bert, tmp_path):
    """The issue's case: D/sst2/train.parquet rewritten with its labels flipped between the checkpoint and the resume.
    The data's content is in the run identity, so the resume is refused before anything is written, naming the split
    that changed. A checkpoint saved before the content was recorded still resumes (its data paths are compared)."""
    import pandas as pd
    from conftest import write_glue_fixture

    from harness.checkpoints import SEAL_FILE, seal

    data = write_glue_fixture(tmp_path / "glue", "sst2")
    out = tmp_path / "run"
    steps = ("--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1")
    run(tiny_bert, data, "sst2", "lora", out, *steps)
    (out / "all_results.json").unlink()
    recorded = json.loads((out / "run_args.json").read_text())["data_fingerprint"]
    assert set(recorded) == {"train", "validation"} and recorded["train"]["rows"] == 64
    train = data / "sst2" / "train.parquet"
    original = train.read_bytes()
    frame = pd.read_parquet(train)
    frame["label"] = 1 - frame["label"]
    frame.to_parquet(train)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"checkpoint-1 is from another run \(data_fingerprint\.train\.sha256 "
                                         r"[0-9a-f]{64} there, [0-9a-f]{64} here\): a resume may change only"):
        run(tiny_bert, data, "sst2", "lora", out, *steps, "--resume_from_checkpoint", str(out / "checkpoint-1"))
    assert snapshot(out) == before

    train.write_bytes(original)  # the same data, and a checkpoint and record of a version without the fingerprint
    checkpoint = out / "checkpoint-1"
    for record in (checkpoint / "run_identity.json", out / "run_args.json"):
        content = json.loads(record.read_text())
        del content["data_fingerprint"]
        record.write_text(json.dumps(content))
    seal(checkpoint, {k: v for k, v in json.loads((checkpoint / SEAL_FILE).read_text()).items() if k != "files"})
    results = run(tiny_bert, data, "sst2", "lora", out, *steps, "--resume_from_checkpoint", str(checkpoint))
    assert results["resumed_from_step"] == 1


# ---- checkpoints of the release 6534415: real records (tests/data/make_release_identities.py) ----

RELEASE_IDENTITIES = ROOT / "tests" / "data" / "release_identities"


def release_identity(method, version="6534415"):
    """checkpoint-2/run_identity.json of one short run, as the release 6534415 wrote it or as today's harness does."""
    return json.loads((RELEASE_IDENTITIES / f"{method}_{version}.json").read_text())


def as_the_release_wrote(record: dict, released: dict) -> dict:
    """A record of today (run_args.json or run_identity.json) without the keys of today's identity that the
    release's record `released` lacks, in each block and in resolved.glora."""
    out = copy.deepcopy(record)
    today = identity_of(record)
    for block in (*FLAG_GROUPS, "resolved"):
        for key in set(today[block]) - set(released[block]):
            del out[block][key]
    for key in set(today["resolved"]["glora"]) - set(released["resolved"]["glora"]):
        del out["resolved"]["glora"][key]
    return out


@pytest.mark.parametrize("method", ["lora", "adalora", "glora"])
def test_a_release_identity_equals_todays_when_the_new_settings_are_at_their_defaults(method):
    old, now = release_identity(method), release_identity(method, "now")
    assert set(now["peft"]) - set(old["peft"]) == set(ADDED_SINCE_RELEASE["peft"])  # what the real records differ in
    assert identity_differences(old, now) == []
    asked = copy.deepcopy(now)
    asked["peft"]["glora_signal_seed"] = 7
    assert identity_differences(old, asked) == ["--glora_signal_seed 0 there, 7 here"]
    if method == "glora":
        assert set(now["resolved"]["glora"]) - set(old["resolved"]["glora"]) == set(ADDED_SINCE_RELEASE["glora"])
        asked = copy.deepcopy(now)
        asked["resolved"]["glora"]["warn_share"] = 0.5  # no flag sets it: named as the resolved plan's difference
        differs = identity_differences(old, asked)
        assert differs == ["resolved glora.warn_share 0.25 there, 0.5 here"]


def test_every_flag_added_since_the_release_is_listed_at_the_default_the_harness_resolves():
    """The harness's own flag blocks (TrainingArguments' are transformers'): a flag added since the release and not in
    ADDED_SINCE_RELEASE would refuse every checkpoint of the release; the listed defaults are what today's harness
    records for a run that leaves those flags unset."""
    old, asked = release_identity("lora"), parse_args(["--task", "sst2", "--method", "glora"]).asked()
    for block in ("model", "data", "peft"):
        assert set(asked[block]) - RESUME_MAY_CHANGE - set(old[block]) == set(ADDED_SINCE_RELEASE.get(block, ()))
    from harness.plan import resolve_glora

    resolved = dataclasses.asdict(resolve_glora(PeftArguments(method="glora"), rank_budget=8, param_budget=None,
                                                total_steps=90, trial_run=False))
    defaults = added_since_release()
    assert defaults["peft"] == {flag: asked["peft"][flag] for flag in ADDED_SINCE_RELEASE["peft"]}
    assert defaults["glora"] == {key: resolved[key] for key in ADDED_SINCE_RELEASE["glora"]}


def test_a_checkpoint_of_the_release_resumes_at_the_new_defaults_and_is_refused_otherwise(tiny_bert, glora_checkpoints,
                                                                                          tmp_path):
    """A checkpoint and its folder's run_args.json in the shape the release 6534415 wrote them (no new GLoRA flags
    nor resolved settings) resume with those settings at their defaults, to the uninterrupted run's loss; asked
    otherwise, the setting is named and nothing is written."""
    from harness.checkpoints import SEAL_FILE, seal

    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "release")
    checkpoint, released = out / "checkpoint-2", release_identity("glora")
    for record in (checkpoint / "run_identity.json", out / "run_args.json"):
        record.write_text(json.dumps(as_the_release_wrote(json.loads(record.read_text()), released)))
    assert "glora_signal_seed" not in json.loads((out / "run_args.json").read_text())["peft"]
    seal(checkpoint, {k: v for k, v in json.loads((checkpoint / SEAL_FILE).read_text()).items() if k != "files"})
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"another run.* \(--glora_signal_seed 0 there, 3 here\)"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--glora_signal_seed", "3",
            "--resume_from_checkpoint", str(checkpoint))
    assert snapshot(out) == before
    results = run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", str(checkpoint))
    assert results["resumed_from_step"] == 2
    assert results["train_loss"] == pytest.approx(json.loads((full / "all_results.json").read_text())["train_loss"],
                                                  rel=1e-6)


def test_checkpoints_record_the_run_identity(glora_checkpoints):
    _, full = glora_checkpoints
    run_args = json.loads((full / "run_args.json").read_text())
    for step in (2, 4):
        identity = json.loads((full / f"checkpoint-{step}" / "run_identity.json").read_text())
        assert identity == identity_of(run_args)
        assert identity["peft"]["glora_warmup_steps"] == 3 and identity["training"]["seed"] == 42
        assert "output_dir" not in identity["training"] and "output_dir" not in identity["resolved"]


def test_run_identity_is_every_flag_but_those_a_resume_may_change():
    args = parse_args(["--task", "sst2", "--method", "glora"])
    run_args = {**args.asked(), "resolved": {"output_dir": "out", "total_steps": 8}, "world_size": 1}
    identity = identity_of(run_args)
    assert RESUME_MAY_CHANGE < set(flag_fields())  # no misspelt name
    assert {flag for group in FLAG_GROUPS for flag in identity[group]} == set(flag_fields()) - RESUME_MAY_CHANGE
    assert identity["resolved"] == {"total_steps": 8} and identity["world_size"] == 1
    # Deny by default: the --arm label is part of it, and so is a flag added later without being listed anywhere.
    assert "arm" in identity["peft"] and "rank_pattern" in identity["peft"]
    run_args["peft"]["future_flag"] = "x"
    assert identity_differences(identity, identity_of(run_args)) == ["--future_flag (absent) there, x here"]


@pytest.mark.parametrize(
    "change, named",
    [
        (["--task", "rte"], "--task sst2 there, rte here"),
        (["--lora_alpha", "4"], r"--lora_alpha 16(\.0)? there, 4\.0 here"),
        (["--glora_warmup_steps", "2"], r"--glora_warmup_steps 3 there, 2 here"),
        (["--seed", "7"], "--seed 42 there, 7 here"),
        (["--max_train_samples", "48"], "--max_train_samples None there, 48 here"),
        (["--learning_rate", "1e-3", "--lora_dropout", "0.1"],
         r"--lora_dropout 0\.0 there, 0\.1 here; --learning_rate 0\.005 there, 0\.001 here"),
    ],
)
def test_resume_that_changes_what_is_trained_is_refused_naming_each_flag(tiny_bert, glora_checkpoints, tmp_path,
                                                                        change, named):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished", remove_checkpoint="checkpoint-4")
    before = snapshot(out)
    task = change[1] if change[0] == "--task" else "sst2"
    with pytest.raises(ValueError, match=f"checkpoint-2 is from another run \\({named}\\): a resume may change only"):
        run(tiny_bert, data, task, "glora", out, *RESUMED, "--resume_from_checkpoint", str(out / "checkpoint-2"),
            *change)
    assert snapshot(out) == before  # run_args.json included


def test_resume_may_change_how_the_run_reports_and_checkpoints(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished", remove_checkpoint="checkpoint-4")
    run_args = (out / "run_args.json").read_bytes()
    run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "4", "--glora_warmup_steps", "3", "--save_strategy",
        "steps", "--save_steps", "1", "--save_total_limit", "5", "--logging_steps", "2", "--per_device_eval_batch_size",
        "5", "--run_name", "again", "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert (out / "run_args.json").read_bytes() == run_args  # a resume keeps the run's own record
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert json.loads((out / "ranks.json").read_text())["modules"] == json.loads((full / "ranks.json").read_text())["modules"]


def test_a_failed_resume_leaves_run_args_json_as_it_was(tiny_bert, glora_checkpoints, tmp_path, monkeypatch):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished", remove_checkpoint="checkpoint-4")
    run_args = (out / "run_args.json").read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(run_glue_peft.GlueTrainer, "train", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--logging_steps", "2",
            "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert (out / "run_args.json").read_bytes() == run_args


def test_resume_into_the_folder_of_another_run_is_refused(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    other = tmp_path / "other"
    run(tiny_bert, data, "sst2", "glora", other, *RESUMED, "--seed", "5", "--save_steps", "3")
    (other / "all_results.json").unlink()
    with pytest.raises(ValueError, match=f"{other}/run_args.json is another run's \\(--seed 5 there, 42 here\\)"):
        run(tiny_bert, data, "sst2", "glora", other, *RESUMED, "--resume_from_checkpoint", str(full / "checkpoint-2"))


@pytest.mark.parametrize(
    "method, extra, match",
    [
        ("lora", [], "--method glora there, lora here"),
        ("glora", ["--rank_budget", "30"], r"--rank_budget None there, 30 here"),
        ("glora", ["--target_modules", "query", "value", "--rank_budget", "48"],
         r"--target_modules \['query', 'key', .*\] there, \['query', 'value'\] here; --rank_budget None there, 48 here"),
        ("glora", ["--lora_r", "2"], r"--lora_r 4 there, 2 here"),
    ],
)
def test_resume_from_another_run_is_refused_before_writing(tiny_bert, glora_checkpoints, tmp_path, method, extra, match):
    data, full = glora_checkpoints
    out = tmp_path / "resumed"
    extra = [flag for flag in extra] + (["--glora_warmup_steps", "3"] if method == "glora" else [])
    fails_before_writing(ValueError, match, tiny_bert, data, method, out, "--max_steps", "4", "--save_strategy", "steps",
                         "--save_steps", "2", "--resume_from_checkpoint", str(full / "checkpoint-2"), *extra)


def test_resume_from_another_model_is_refused(tiny_bert, tiny_deberta, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    with pytest.raises(ValueError, match=f"--model_name_or_path {tiny_bert} there, {tiny_deberta} here"):
        run(tiny_deberta, data, "sst2", "glora", tmp_path / "out", *RESUMED,
            "--resume_from_checkpoint", str(full / "checkpoint-2"))
    assert not (tmp_path / "out").exists()


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda c: (c / "glora_state.json").write_text(""), r"glora_state.json holds 0 bytes, the checkpoint saved \d+: truncated"),
        (lambda c: truncate(c / "run_identity.json"), r"run_identity.json holds \d+ bytes, the checkpoint saved \d+: truncated"),
        (lambda c: truncate(c / "adapter_model.safetensors"), r"adapter_model.safetensors holds \d+ bytes, the checkpoint saved"),
        (lambda c: truncate(c / "optimizer.pt"), r"optimizer.pt holds \d+ bytes, the checkpoint saved \d+"),
        (lambda c: (c / "adapter_model.safetensors").unlink(), r"adapter_model.safetensors is missing \(the checkpoint held"),
        (lambda c: (c / "checkpoint_complete.json").write_text('{"files": {"ad'), "checkpoint_complete.json is not valid JSON"),
        (lambda c: (c / "checkpoint_complete.json").unlink(missing_ok=True),
         "checkpoint_complete.json is missing: the checkpoint is incomplete \\(its save was interrupted\\) or was "
         "written by a version without checkpoint seals"),
    ],
    ids=["empty_glora_state", "truncated_identity", "truncated_adapter", "truncated_optimizer", "missing_adapter",
         "truncated_seal", "unsealed"],
)
def test_damaged_checkpoint_is_named_before_anything_is_written(tiny_bert, glora_checkpoints, tmp_path, damage, match):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished")
    damage(out / "checkpoint-4")
    before = snapshot(out)
    with pytest.raises(ValueError, match=f"^--resume_from_checkpoint {out / 'checkpoint-4'}: .*{match}.*; the newest "
                                         f"complete checkpoint there is {out / 'checkpoint-2'}\\.$"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", str(out / "checkpoint-4"))
    assert snapshot(out) == before


def test_resume_from_a_missing_folder_is_refused(tiny_bert, glora_checkpoints, tmp_path):
    data, _ = glora_checkpoints
    fails_before_writing(FileNotFoundError, r"--resume_from_checkpoint .*checkpoint-9: no such checkpoint folder",
                         tiny_bert, data, "glora", tmp_path / "out", *RESUMED,
                         "--resume_from_checkpoint", str(tmp_path / "checkpoint-9"))


def test_unfinished_run_asks_for_resume_or_overwrite(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished", remove_checkpoint="checkpoint-4")  # stopped between the two
    run_args = (out / "run_args.json").read_text()
    with pytest.raises(FileExistsError, match=f"{out} holds an unfinished run .*pass --resume_from_checkpoint "
                                              f"{out / 'checkpoint-2'} to continue it, or --overwrite_output_dir True"):
        run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "4", "--glora_warmup_steps", "3")
    assert (out / "run_args.json").read_text() == run_args
    # As the message says: resuming it finishes the run with the uninterrupted run's ranks.
    run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    ranks = json.loads((out / "ranks.json").read_text())["modules"]
    assert ranks == json.loads((full / "ranks.json").read_text())["modules"]


def test_overwrite_with_a_resume_from_inside_the_folder_is_refused(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "unfinished")
    before = snapshot(out)
    with pytest.raises(ValueError, match=f"--overwrite_output_dir would move {out} aside, and with it the checkpoint "
                                         f"--resume_from_checkpoint {out / 'checkpoint-2'} continues from"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--overwrite_output_dir", "True",
            "--resume_from_checkpoint", str(out / "checkpoint-2"))
    assert snapshot(out) == before and not (tmp_path / "unfinished.replaced").exists()


def test_a_checkpoint_cut_short_by_a_kill_is_skipped_for_the_newest_complete_one(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = unfinished_copy(full, tmp_path / "killed_while_saving")
    (out / "checkpoint-4" / "checkpoint_complete.json").unlink(missing_ok=True)  # killed before the save ended
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    with pytest.raises(FileExistsError, match=f"no all_results.json, skipping incomplete checkpoint-4 .*: pass "
                                              f"--resume_from_checkpoint {out / 'checkpoint-2'} to continue it"):
        run(tiny_bert, data, "sst2", "glora", out, *RESUMED)
    run(tiny_bert, data, "sst2", "glora", out, *RESUMED, "--resume_from_checkpoint", "True")
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert (out / "adapter_model.safetensors").read_bytes() == (full / "adapter_model.safetensors").read_bytes()
    assert checkpoint_problem(out / "checkpoint-4") is None  # rewritten and sealed


# ---- LR warm-up of a trial run ----


def test_trial_run_scales_lr_warmup_into_the_run(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "out"
    run(tiny_bert, glue_dir("sst2"), "sst2", "lora", out, "--max_steps", "20", "--trial_run", "--warmup_steps", "1000")
    rates = [log["learning_rate"] for log in json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "learning_rate" in log]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(5e-3) and 0 < peak < 5  # the trial's --learning_rate, reached early
    assert rates[:peak + 1] == sorted(rates[:peak + 1]) and rates[-1] < max(rates)
    assert json.loads((out / "run_args.json").read_text())["resolved"]["lr_warmup_steps"] == 2


def test_full_run_lr_warmup_that_never_ends_is_refused(tiny_bert, glue_dir, tmp_path):
    fails_before_writing(ValueError, "--warmup_steps 1000 never ends in a run of 8 optimizer steps", tiny_bert,
                         glue_dir("sst2"), "lora", tmp_path / "out", "--num_train_epochs", "1", "--warmup_steps", "1000")


def test_trial_run_false_refuses_an_lr_warmup_that_does_not_fit_a_max_steps_run(tiny_bert, glue_dir, tmp_path):
    """--trial_run false turns a --max_steps run's scaling back into the error a run over epochs gets."""
    fails_before_writing(ValueError, r"^--warmup_steps 1000 never ends in a run of 20 optimizer steps: give fewer steps "
                         r"or a ratio of the run \(e\.g\. 0\.06\); a trial of the code path \(--max_steps N, "
                         r"--trial_run unset or true\) scales it into the run\.$", tiny_bert, glue_dir("sst2"), "lora",
                         tmp_path / "out", "--max_steps", "20", "--warmup_steps", "1000", "--trial_run", "false")


def test_max_steps_alone_is_a_trial_run_that_says_so_and_records_it(tiny_bert, glue_dir, tmp_path, caplog):
    """--trial_run unset resolves to on for a --max_steps run, with a log line; run_args.json keeps what was asked
    (null) and what it resolved to (true), and the LR warm-up of 1000 steps is scaled to 10 % of 20 steps."""
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        run(tiny_bert, glue_dir("sst2"), "sst2", "lora", out, "--max_steps", "20", "--warmup_steps", "1000")
    assert ("--max_steps 20 without --trial_run: a trial run; a schedule that does not fit is scaled into it with a "
            "log line (--trial_run false makes that an error).") in caplog.text
    assert "LR warm-up 1000 >= max_steps 20: trial run, warming up over 2 steps." in caplog.text
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["training"]["trial_run"] is None and run_args["resolved"]["trial_run"] is True
    assert run_args["resolved"]["lr_warmup_steps"] == 2


def test_a_run_over_epochs_is_never_a_trial_run(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "out"
    run(tiny_bert, glue_dir("sst2"), "sst2", "lora", out, "--num_train_epochs", "1")
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["training"]["trial_run"] is None and run_args["resolved"]["trial_run"] is False


# ---- steps or a fraction of the run: one flag each, one meaning each ----


@pytest.mark.parametrize("method, flag, fraction_flag", [("adalora", "tinit", "tinit_fraction"),
                                                         ("adalora", "tfinal", "tfinal_fraction"),
                                                         ("glora", "glora_warmup_steps", "glora_warmup_fraction")])
def test_a_fraction_given_to_a_steps_flag_names_the_fraction_flag(tmp_path, method, flag, fraction_flag):
    with pytest.raises(ValueError, match=rf"^--{flag}: 0\.1 is not a whole number of optimizer steps; for a fraction "
                                         rf"of the run give --{fraction_flag} 0\.1\.$"):
        parse_args(["--task", "sst2", "--method", method, f"--{flag}", "0.1"])
    with pytest.raises(ValueError, match=rf"^--{flag}: 1\.0 is not a whole number of optimizer steps; give whole "
                                         rf"steps, or --{fraction_flag} in \(0, 1\) for a fraction of the run\.$"):
        parse_args(["--task", "sst2", "--method", method, f"--{flag}", "1.0"])  # once "one step"; now no meaning
    (tmp_path / "run.yaml").write_text(f"task: sst2\nmethod: {method}\n{flag}: 0.5\n")
    with pytest.raises(ValueError, match=rf"^--{flag}: 0\.5 is not a whole number of optimizer steps; for a fraction of "
                                         rf"the run give --{fraction_flag} 0\.5\.$"):
        parse_args([str(tmp_path / "run.yaml")])  # a config file's key says the same


@pytest.mark.parametrize("method, flag, fraction_flag", [("adalora", "tinit", "tinit_fraction"),
                                                         ("adalora", "tfinal", "tfinal_fraction"),
                                                         ("glora", "glora_warmup_steps", "glora_warmup_fraction")])
def test_both_flags_of_a_pair_are_refused_in_one_line(method, flag, fraction_flag):
    args = parse_args(["--task", "sst2", "--method", method, f"--{flag}", "3", f"--{fraction_flag}", "0.25"])
    with pytest.raises(ValueError, match=rf"^--{flag} 3 and --{fraction_flag} 0\.25 are both given: give the optimizer "
                                         r"steps or the fraction of the run, not both\.$"):
        check_args(args)


@pytest.mark.parametrize("change, line", [
    (["--method", "adalora", "--tinit_fraction", "1"], r"^--tinit_fraction is a fraction of the run in \(0, 1\), got 1; "
                                                       r"for optimizer steps give --tinit\.$"),
    (["--method", "adalora", "--tfinal_fraction", "0"], r"^--tfinal_fraction is a fraction of the run in \(0, 1\), got 0;"),
    (["--method", "glora", "--glora_warmup_fraction", "1.5"], r"^--glora_warmup_fraction is a fraction of the run in "),
    (["--method", "adalora", "--tinit", "-1"], r"^--tinit must be >= 0 optimizer steps, got -1\.$"),
    (["--method", "glora", "--glora_warmup_steps", "0"], r"^--glora_warmup_steps must be >= 1 optimizer steps, got 0\.$"),
    (["--trial_run"], r"^--trial_run scales schedules into a --max_steps run: give --max_steps N too"),
])
def test_bad_steps_fractions_and_trial_switch_are_refused_in_one_line(change, line):
    with pytest.raises(ValueError, match=line):
        check_args(parse_args(["--task", "sst2", *change]))


def test_each_pair_defaults_to_todays_fractions_in_steps():
    """Neither flag of a pair: the default fraction, rounded to steps as before (1/3, 10 %, 20 % of the run)."""
    from harness.plan import resolve_adalora, resolve_glora, schedule_steps

    args = parse_args(["--task", "sst2"])
    assert (args.peft.tinit, args.peft.tinit_fraction, args.peft.glora_warmup_steps) == (None, None, None)
    assert [schedule_steps(args.peft, "glora_warmup_steps", n) for n in (2, 3, 8, 234, 6315)] == [1, 1, 3, 78, 2105]
    assert [schedule_steps(args.peft, "tinit", n) for n in (2, 8, 234, 6315)] == [0, 1, 23, 632]
    assert [schedule_steps(args.peft, "tfinal", n) for n in (2, 8, 234, 6315)] == [0, 2, 47, 1263]
    adalora = resolve_adalora(args.peft, rank_budget=72, param_budget=None, unit_costs=[10] * 12, total_steps=234,
                              trial_run=False)
    assert (adalora.tinit, adalora.tfinal, adalora.total_step) == (23, 47, 234)
    glora = resolve_glora(args.peft, rank_budget=72, param_budget=None, total_steps=234, trial_run=False)
    assert glora.warmup_steps == 78
    given = parse_args(["--task", "sst2", "--tinit", "30", "--tfinal_fraction", "0.5", "--glora_warmup_fraction", "0.25"])
    assert [schedule_steps(given.peft, f, 234) for f in ("tinit", "tfinal", "glora_warmup_steps")] == [30, 117, 58]


def test_run_identity_and_study_flags_cover_the_new_flags():
    """A changed fraction or trial switch is another run for a resume, and another study for hpo.py (deny by default:
    the flags are compared as asked, so an unset --trial_run and an explicit one differ even where both resolve to on)."""
    from search.identity import differences, fixed_run_flags

    def identity(*flags):
        args = parse_args(["--task", "sst2", "--method", "glora", "--max_steps", "8", *flags])
        return identity_of({**args.asked(), "resolved": {}}), fixed_run_flags(args, searched=())

    (base, base_flags), (changed, changed_flags) = identity("--glora_warmup_fraction", "0.25"), identity(
        "--glora_warmup_fraction", "0.5", "--trial_run")
    assert identity_differences(base, changed) == ["--glora_warmup_fraction 0.25 there, 0.5 here",
                                                   "--trial_run None there, True here"]
    assert differences(base_flags, changed_flags) == ["glora_warmup_fraction 0.25 there, 0.5 now",
                                                      "trial_run None there, True now"]
    steps, _ = identity("--glora_warmup_steps", "2")
    assert identity_differences(base, steps) == ["--glora_warmup_steps None there, 2 here",
                                                 "--glora_warmup_fraction 0.25 there, None here"]


@pytest.mark.parametrize("flags, line", [
    (["--rank_budget", "11"], "--rank_budget 11 is below GLoRA's floor: --glora_min_rank 1 on each of the 12 matrices "
                              "needs R_total >= 12; give a larger --rank_budget or a smaller --glora_min_rank."),
    (["--rank_budget", "23", "--glora_min_rank", "2"], "--rank_budget 23 is below GLoRA's floor: --glora_min_rank 2 on "
                                                       "each of the 12 matrices needs R_total >= 24; give a larger "
                                                       "--rank_budget or a smaller --glora_min_rank."),
    (["--budget_unit", "params", "--param_budget", "767"],
     "--param_budget 767 is below GLoRA's floor: --glora_min_rank 1 on each of the 12 matrices costs 1 x sum(d_in + "
     "d_out) = 768 parameters; give a larger --param_budget or a smaller --glora_min_rank."),
])
def test_a_glora_budget_below_its_floor_is_refused_naming_the_flags(flags, line):
    from harness.plan import resolve_plan

    args = parse_args(["--task", "sst2", "--method", "glora", "--max_steps", "8", *flags])
    with pytest.raises(ValueError) as refused:
        resolve_plan(args, [f"m{i}" for i in range(12)], [64] * 12, (), num_train_examples=64)
    assert str(refused.value) == line


def test_a_changed_rank_pattern_is_refused_naming_what_differs_not_the_whole_pattern_twice():
    """The same --rank_pattern path with one module's rank changed: the refusal names the file's hash and that
    module's rank, not the pattern's every module twice."""
    modules = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "key", "value")]
    args = parse_args(["--task", "sst2", "--rank_pattern", "p.json"])

    def identity(sha, ranks):
        pattern = {"path": "p.json", "sha256": sha, "source": "mapping", "ranks": [[m, r] for m, r in zip(modules, ranks)]}
        return identity_of({**args.asked(), "resolved": {"total_steps": 8, "trial_run": False,
                                                   "rank_pattern": pattern}})

    saved, now = identity("a" * 64, [4] * 18), identity("b" * 64, [4] * 17 + [2])
    assert identity_differences(saved, now) == [
        f"resolved rank_pattern.sha256 {'a' * 64} there, {'b' * 64} here",
        f"resolved rank_pattern.ranks.{modules[-1]} 4 there, 2 here"]
    many = identity("c" * 64, [1] * 18)
    lines = identity_differences(saved, many)
    assert len(lines) == 7 and lines[-1] == "and 13 more" and modules[0] in lines[1]


def test_reordered_target_modules_naming_the_same_matrices_are_one_run_and_one_study():
    from search.identity import differences, fixed_run_flags, run_differences

    def identity(*targets):
        args = parse_args(["--task", "sst2", "--target_modules", *targets])
        return identity_of({**args.asked(), "resolved": {"trial_run": False}}), fixed_run_flags(args, searched=())

    (run_a, study_a), (run_b, study_b) = identity("query", "value", "ffn_in"), identity("ffn_in", "value", "query", "value")
    assert identity_differences(run_a, run_b) == [] and differences(study_a, study_b) == []
    recorded = {**study_a, "target_modules": ["value", "query", "ffn_in"]}  # as an older hpo.py stored them
    assert run_differences("lora", recorded, "lora", study_b) == []
    (run_c, study_c) = identity("query", "key")
    assert identity_differences(run_a, run_c) == ["--target_modules ['query', 'value', 'ffn_in'] there, "
                                                  "['query', 'key'] here"]


# ---- the quickstart ----


def test_quickstart_tiny_mode(tiny_bert, glue_dir, tmp_path, python_for_launchers):
    """launch/quickstart.sh end to end on fixtures: three methods, progress lines, then the comparison table."""
    root = tmp_path / "quickstart"
    env = {**os.environ, "PYTHON": python_for_launchers, "QUICKSTART_ROOT": str(root), "QUICKSTART_MODEL": str(tiny_bert),
           "QUICKSTART_DATA": str(glue_dir("sst2", n_train=32, n_eval=16)),
           "QUICKSTART_EXTRA_ARGS": "--max_steps 2 --max_seq_length 32 --logging_steps 1"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "quickstart.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for method in ("lora", "adalora", "glora"):
        assert f"== {method}: training" in done.stdout
        assert (root / method / "all_results.json").is_file()
    assert done.stdout.count("progress: step") == 6 and done.stdout.count("dev accuracy") == 3
    assert "   progress: step 2/2 (100%), loss " in done.stdout and done.stdout.count(" s elapsed, ETA ") == 6
    assert done.stdout.count("gradnorm_rank reallocated ranks at step 1:") == 1  # GLoRA's, shown (half of 2 steps)
    assert done.stdout.count(" s CPU") == 3 and "noise-bound" in done.stdout
    assert "| sst2 |" in done.stdout and "GLoRA" in (root / "comparison" / "comparison.md").read_text()
    assert list((root / "comparison").glob("*.png")) and f"figures: {root}/comparison/*.png" in done.stdout
