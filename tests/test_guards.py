"""Every bad input stops before training, with one line naming the flag, file or row, and writes nothing."""

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest
from conftest import ROOT, trial_args

import run_glue_peft
from arguments import PeftArguments, check_args, parse_args


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
    [("lora", "--glora_warmup_steps", "0.5", "glora"), ("adalora", "--glora_signal", "delta", "glora"),
     ("glora", "--tinit", "0.3", "adalora"), ("lora", "--init_r", "12", "adalora"), ("glora", "--deltaT", "5", "adalora")],
)
def test_flag_of_another_method_is_refused(method, flag, value, owner):
    with pytest.raises(ValueError, match=f"^{flag} {value} has no effect with --method {method}: it applies to --method "
                                         f"{owner} only"):
        check_args(parse_args(["--task", "sst2", "--method", method, flag, value]))
    check_args(parse_args(["--task", "sst2", "--method", owner, flag, value]))  # its own method takes it


def test_method_only_flags_are_marked():
    marked = {f.name: f.metadata.get("methods") for f in PeftArguments.__dataclass_fields__.values()}
    for name in ("init_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight"):
        assert marked[name] == ("adalora",), name
    for name in (name for name in marked if name.startswith("glora_")):
        assert marked[name] == ("glora",), name


def test_flag_prefixes_are_not_accepted():
    with pytest.raises(ValueError, match=r"^Unknown argument\(s\) \['--glora_warmup', '5'\] \(did you mean "
                                         r"--glora_warmup_steps\?\)"):
        parse_args(["--task", "sst2", "--method", "glora", "--glora_warmup", "5"])


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


@pytest.fixture(scope="module")
def glora_checkpoints(tiny_bert, tmp_path_factory):
    """A finished GLoRA run with checkpoints before (2) and after (4) its reallocation at step 3."""
    from conftest import write_glue_fixture

    root = tmp_path_factory.mktemp("resume")
    data = write_glue_fixture(root / "glue", "sst2")
    out = root / "full"
    run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "4", "--glora_warmup_steps", "3",
        "--save_strategy", "steps", "--save_steps", "2")
    return data, out


def test_checkpoints_record_the_run_identity(tiny_bert, glora_checkpoints):
    _, full = glora_checkpoints
    for step in (2, 4):
        identity = json.loads((full / f"checkpoint-{step}" / "run_identity.json").read_text())
        assert identity == {"method": "glora", "arm": "glora", "budget_unit": "rank", "budget": 48,
                            "target_modules": sorted(PeftArguments().target_modules), "model": str(tiny_bert)}


@pytest.mark.parametrize(
    "method, extra, match",
    [
        ("lora", [], "holds glora_state.json: it was written by a --method glora run, which --method lora cannot continue"),
        ("glora", ["--rank_budget", "30"], r"is from another run \(budget 48 there, 30 here\)"),
        ("glora", ["--target_modules", "query", "value", "--rank_budget", "48"],
         r"is from another run \(target_modules \['attention_output', .*\] there, \['query', 'value'\] here\)"),
        ("glora", ["--lora_r", "2"], r"budget 48 there, 24 here"),
    ],
)
def test_resume_from_another_run_is_refused_before_writing(tiny_bert, glora_checkpoints, tmp_path, method, extra, match):
    data, full = glora_checkpoints
    out = tmp_path / "resumed"
    fails_before_writing(ValueError, match, tiny_bert, data, method, out, "--max_steps", "4", "--save_strategy", "steps",
                         "--save_steps", "2", "--resume_from_checkpoint", str(full / "checkpoint-2"), *extra)


def test_resume_from_another_model_is_refused(tiny_bert, tiny_deberta, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    with pytest.raises(ValueError, match=f"model {tiny_bert} there, {tiny_deberta} here"):
        run(tiny_deberta, data, "sst2", "glora", tmp_path / "out", "--max_steps", "4",
            "--resume_from_checkpoint", str(full / "checkpoint-2"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "remove, error, match",
    [
        (None, FileNotFoundError, r"--resume_from_checkpoint .*checkpoint-9: no such checkpoint folder"),
        ("glora_state.json", ValueError, r"checkpoint-2 has no glora_state.json: it was not written by a --method glora run"),
        ("run_identity.json", FileNotFoundError, r"checkpoint-2/run_identity.json is missing: cannot check"),
    ],
)
def test_resume_from_an_incomplete_checkpoint_is_refused(tiny_bert, glora_checkpoints, tmp_path, remove, error, match):
    data, full = glora_checkpoints
    checkpoint = tmp_path / "checkpoint-9"
    if remove:
        checkpoint = tmp_path / "checkpoint-2"
        shutil.copytree(full / "checkpoint-2", checkpoint)
        (checkpoint / remove).unlink()
    fails_before_writing(error, match, tiny_bert, data, "glora", tmp_path / "out", "--max_steps", "4",
                         "--resume_from_checkpoint", str(checkpoint))


def test_unfinished_run_asks_for_resume_or_overwrite(tiny_bert, glora_checkpoints, tmp_path):
    data, full = glora_checkpoints
    out = tmp_path / "unfinished"
    shutil.copytree(full, out)
    (out / "all_results.json").unlink()
    shutil.rmtree(out / "checkpoint-4")  # stopped between its two checkpoints
    run_args = (out / "run_args.json").read_text()
    with pytest.raises(FileExistsError, match=f"{out} holds an unfinished run .*pass --resume_from_checkpoint "
                                              f"{out / 'checkpoint-2'} to continue it, or --overwrite_output_dir True"):
        run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "4", "--glora_warmup_steps", "3")
    assert (out / "run_args.json").read_text() == run_args
    # As the message says: resuming it finishes the run with the uninterrupted run's ranks.
    run(tiny_bert, data, "sst2", "glora", out, "--max_steps", "4", "--glora_warmup_steps", "3", "--save_strategy",
        "steps", "--save_steps", "2", "--resume_from_checkpoint", str(out / "checkpoint-2"))
    ranks = json.loads((out / "ranks.json").read_text())["modules"]
    assert ranks == json.loads((full / "ranks.json").read_text())["modules"]


# ---- LR warm-up of a trial run ----


def test_trial_run_scales_lr_warmup_into_the_run(tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "out"
    run(tiny_bert, glue_dir("sst2"), "sst2", "lora", out, "--max_steps", "20", "--warmup_steps", "1000")
    rates = [log["learning_rate"] for log in json.loads((out / "trainer_state.json").read_text())["log_history"]
             if "learning_rate" in log]
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(5e-3) and 0 < peak < 5  # the trial's --learning_rate, reached early
    assert rates[:peak + 1] == sorted(rates[:peak + 1]) and rates[-1] < max(rates)
    assert json.loads((out / "run_args.json").read_text())["resolved"]["lr_warmup_steps"] == 2


def test_full_run_lr_warmup_that_never_ends_is_refused(tiny_bert, glue_dir, tmp_path):
    fails_before_writing(ValueError, "--warmup_steps 1000 never ends in a run of 8 optimizer steps", tiny_bert,
                         glue_dir("sst2"), "lora", tmp_path / "out", "--num_train_epochs", "1", "--warmup_steps", "1000")


# ---- the quickstart ----


def test_quickstart_tiny_mode(tiny_bert, glue_dir, tmp_path):
    """launch/quickstart.sh end to end on fixtures: three methods, progress lines, then the comparison table."""
    root = tmp_path / "quickstart"
    env = {**os.environ, "QUICKSTART_ROOT": str(root), "QUICKSTART_MODEL": str(tiny_bert),
           "QUICKSTART_DATA": str(glue_dir("sst2", n_train=32, n_eval=16)),
           "QUICKSTART_EXTRA_ARGS": "--max_steps 2 --max_seq_length 32 --logging_steps 1"}
    done = subprocess.run(["bash", str(ROOT / "launch" / "quickstart.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for method in ("lora", "adalora", "glora"):
        assert f"== {method}: training" in done.stdout
        assert (root / method / "all_results.json").is_file()
    assert done.stdout.count("{'loss'") == 6 and done.stdout.count("dev accuracy") == 3
    assert "| sst2 |" in done.stdout and "GLoRA" in (root / "comparison" / "comparison.md").read_text()
    assert list((root / "comparison").glob("*.png")) and f"figures: {root}/comparison/*.png" in done.stdout
