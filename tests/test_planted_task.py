"""--task planted (planted_task.py): a vector-label planting trains, evaluates, resumes, is compared and tuned through
the harness's own paths; its metrics equal a hand computation; bad folders are refused in one line before training."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, trial_args
from peft import PeftModel
from planted_fixture import write_planted_fixture
from safetensors.torch import load_file, save_file
from scipy.stats import pearsonr
from sklearn.metrics import r2_score
from transformers import AutoModel, AutoTokenizer

import run_glue_peft
from harness.glue_tasks import vector_metrics
from harness.planted_task import Planting, ReadoutModel, read_planting

TARGETS = ("features", "token_features")


@pytest.fixture(scope="module")
def plantings(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("plantings")
    return {target: write_planted_fixture(root / target, tiny_bert, target=target) for target in TARGETS}


def run(model_dir, folder, out, *extra, method="lora"):
    return run_glue_peft.main(trial_args(model_dir, folder, "planted", method, out, "--learning_rate", "1e-3", *extra))


def reloaded_outputs(model_dir, folder, out) -> np.ndarray:
    """The saved adapter on a fresh base encoder, with the planting's read-out applied by hand to its last hidden
    state ([CLS], or every real token): (rows, K) over the dev split, in order."""
    planting = read_planting(folder)
    model = PeftModel.from_pretrained(ReadoutModel(AutoModel.from_pretrained(model_dir), planting), out).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sentences = pd.read_parquet(folder / "planted" / "validation.parquet")["sentence"].tolist()
    batch = tokenizer(sentences, truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.get_base_model().bert(**batch).last_hidden_state.double()
    hidden = hidden[batch["attention_mask"].bool()] if planting.per_token else hidden[:, 0]
    return (hidden @ planting.weight.T + planting.bias).numpy()


@pytest.mark.parametrize("target", TARGETS)
def test_a_vector_label_task_trains_evaluates_and_its_metrics_equal_a_hand_computation(tiny_bert, plantings, tmp_path,
                                                                                        target):
    folder, out = plantings[target], tmp_path / "out"
    results = run(tiny_bert, folder, out, "--max_steps", "4")
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["task"] == "planted" and saved["trainable_params_head"] == 0  # no trainable head: the read-out is frozen
    assert saved["trainable_params"] == saved["trainable_params_adapter"] == saved["adapter_params_start"]
    # The written outputs are the saved adapter's, read out by hand, one row per example or real token, in order.
    written = np.load(out / "predictions_validation.npz")
    dev = pd.read_parquet(folder / "planted" / "validation.parquet")
    labels = np.concatenate([np.reshape(label, (-1, 3)) for label in dev["label"]])
    assert np.allclose(written["label"], labels, atol=1e-6)
    assert np.allclose(written["prediction"], reloaded_outputs(tiny_bert, folder, out), atol=1e-4)
    tokens = [len(label) // 3 for label in dev["label"]]
    assert written["example"].tolist() == [i for i, n in enumerate(tokens) for _ in range(n)]
    # Mean over the K outputs of R^2 and of Pearson r (sklearn, scipy), pooled over rows: eval_r2, eval_pearson.
    y, p = labels, written["prediction"].astype(np.float64)
    assert saved["eval_r2"] == pytest.approx(r2_score(y, p, multioutput="uniform_average"), abs=1e-4)
    assert saved["eval_pearson"] == pytest.approx(np.mean([pearsonr(y[:, k], p[:, k])[0] for k in range(3)]), abs=1e-4)
    # The share of the planted change recovered: 1 - squared error / the base model's (the data's column), the score.
    assert saved["eval_recovered"] == pytest.approx(1 - ((y - p) ** 2).sum() / dev["base_sq_error"].sum(), abs=1e-4)
    assert saved["eval_combined_score"] == saved["eval_recovered"] == results["eval_recovered"]
    assert np.array_equal(written["base_sq_error"], dev["base_sq_error"])
    # The CSV: one line per example with its MSE over its outputs and tokens.
    table = pd.read_csv(out / "predictions_validation.csv")
    assert table["idx"].tolist() == dev["idx"].tolist() and table["n_rows"].tolist() == tokens
    per_row = ((y - p) ** 2).mean(1)
    assert np.allclose(table["mse"], [per_row[written["example"] == i].mean() for i in range(len(dev))], rtol=1e-5)


def test_vector_metrics_by_hand():
    labels = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]])
    predictions = np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 1.0]])
    # output 0: mean 2, SST 2, SSE 0 + 1 + 1 = 2 -> R^2 0; r = cov / sd: centred (-1, 0, 1) and (-1, 1, 0) -> 1 / 2
    # output 1: mean 2, SST 4 + 1 + 9 = 14, SSE 1 + 0 + 16 = 17 -> R^2 -3/14; constant prediction -> r counts 0
    # recovered: SSE 2 + 17 = 19 over the base model's 8 + 30 = 38 -> 1/2
    metrics = vector_metrics(predictions, labels, base_sq_error=np.array([8.0, 0.0, 30.0]))
    assert metrics["r2"] == pytest.approx((0 - 3 / 14) / 2)
    assert metrics["pearson"] == pytest.approx((0.5 + 0) / 2)
    assert metrics["recovered"] == pytest.approx(1 / 2)
    assert vector_metrics(labels, labels, [0.0, 0.0, 0.0])["recovered"] == 0  # nothing planted on these rows


@pytest.mark.parametrize("target", TARGETS)
def test_the_untrained_base_model_recovers_nothing(tiny_bert, plantings, tmp_path, target):
    """At learning rate 0 LoRA's B stays 0: the run is the base model, whose squared error is the data's column, so
    eval_recovered is 0 up to float error (float32 outputs, other padding than the generator's)."""
    results = run(tiny_bert, plantings[target], tmp_path / "out", "--max_steps", "1", "--learning_rate", "0")
    dev = pd.read_parquet(plantings[target] / "planted" / "validation.parquet")
    written = np.load(tmp_path / "out" / "predictions_validation.npz")
    student = ((written["prediction"].astype(np.float64) - written["label"]) ** 2).sum()
    assert student == pytest.approx(dev["base_sq_error"].sum(), rel=1e-4)
    assert abs(results["eval_recovered"]) < 1e-4


@pytest.mark.parametrize("target", TARGETS)
def test_recovered_on_a_subset_of_dev_rows_divides_by_their_base_error(tiny_bert, plantings, tmp_path, target):
    """--max_eval_samples 5: eval_recovered's denominator is the base error of those 5 rows, not of the split."""
    results = run(tiny_bert, plantings[target], tmp_path / "out", "--max_steps", "3", "--max_eval_samples", "5")
    dev = pd.read_parquet(plantings[target] / "planted" / "validation.parquet")[:5]
    labels = np.concatenate([np.reshape(label, (-1, 3)) for label in dev["label"]])
    written = np.load(tmp_path / "out" / "predictions_validation.npz")
    assert len(written["idx"]) == 5 and np.allclose(written["label"], labels, atol=1e-6)
    student = ((written["prediction"].astype(np.float64) - labels) ** 2).sum()
    assert results["eval_recovered"] == pytest.approx(1 - student / dev["base_sq_error"].sum(), abs=1e-5)


@pytest.mark.parametrize("target", TARGETS)
def test_a_resumed_vector_label_run_ends_where_the_uninterrupted_one_did(tiny_bert, plantings, tmp_path, target):
    common = ["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3"]
    full = tmp_path / "full"
    finished = run(tiny_bert, plantings[target], full, *common)
    resumed = run(tiny_bert, plantings[target], tmp_path / "resumed", *common, "--resume_from_checkpoint",
                  str(full / "checkpoint-3"))
    reference, weights = load_file(full / "adapter_model.safetensors"), load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert reference.keys() == weights.keys()
    for key in reference:
        assert torch.equal(reference[key], weights[key]), key
    assert resumed["eval_recovered"] == finished["eval_recovered"] and resumed["train_loss"] == pytest.approx(finished["train_loss"])
    assert resumed["resumed_from_step"] == 3


def rewrite_label(folder, split, row, label):
    path = folder / "planted" / f"{split}.parquet"
    frame = pd.read_parquet(path)
    labels = frame["label"].tolist()
    labels[row] = label
    frame["label"] = labels
    frame.to_parquet(path, index=False)


def drop_base_error(folder, split):
    path = folder / "planted" / f"{split}.parquet"
    pd.read_parquet(path).drop(columns="base_sq_error").to_parquet(path, index=False)


def rewrite_base_error(folder, split, row, value):
    path = folder / "planted" / f"{split}.parquet"
    frame = pd.read_parquet(path)
    frame.loc[row, "base_sq_error"] = value
    frame.to_parquet(path, index=False)


def edit_truth(folder, **changes):
    path = folder / "ground_truth.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_update(folder, **tensors):
    path = folder / "planted_update.safetensors"
    saved = load_file(path)
    saved.update(tensors)
    save_file({k: v for k, v in saved.items() if v is not None}, str(path))


BAD_FOLDERS = {
    "no ground truth": (lambda f: (f / "ground_truth.json").unlink(), "no ground_truth.json; --task planted reads"),
    "scalar planting": (lambda f: edit_truth(f, task="sst2", target="class"), "task 'sst2', target 'class'"),
    "no num_outputs": (lambda f: edit_truth(f, num_outputs=None), "num_outputs must be a whole number >= 1, got None"),
    "no read-out file": (lambda f: (f / "planted_update.safetensors").unlink(), "no planted_update.safetensors"),
    "no read-out": (lambda f: edit_update(f, **{"readout.weight": None}), "lacks readout.weight"),
    "K differs": (lambda f: edit_truth(f, num_outputs=4), r"readout.weight \(3, 32\) .* do not fit num_outputs 4"),
    "other model": (lambda f: edit_update(f, **{"readout.weight": torch.zeros(3, 48, dtype=torch.float64)}),
                    "reads 48 features, the model's hidden size is 32"),
    "unknown matrix": (lambda f: edit_truth(f, planted={"bert.encoder.layer.7.output.dense": {}}),
                       "planted matrix bert.encoder.layer.7.output.dense is no module of this model"),
    "other length": (lambda f: edit_truth(f, max_seq_length=64), "--max_seq_length 32: .* at max_seq_length 64"),
    "label length": (lambda f: rewrite_label(f, "validation", 2, [0.0] * 4),
                     "validation row 2: label has 4 values, expected num_outputs 3"),
    "label text": (lambda f: rewrite_label(f, "train", 1, None), "train row 1: label None is not a list of numbers"),
    "no base error": (lambda f: drop_base_error(f, "validation"),
                      "validation split: no `base_sq_error` column .* regenerate it with python3 -m data.make_planted"),
    "negative base error": (lambda f: rewrite_base_error(f, "train", 4, -1.0),
                            r"train row 4: base_sq_error -1.0 is not a finite number >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_a_bad_planting_folder_is_refused_in_one_line_before_training(tiny_bert, plantings, tmp_path, case):
    folder = tmp_path / "planting"
    shutil.copytree(plantings["features"], folder)
    spoil, message = BAD_FOLDERS[case]
    spoil(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as caught:
        run(tiny_bert, folder, tmp_path / "out", "--max_steps", "2")
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()  # nothing written, nothing trained


def test_token_labels_that_do_not_follow_the_tokens_are_refused(tiny_bert, plantings, tmp_path):
    folder = tmp_path / "planting"
    shutil.copytree(plantings["token_features"], folder)
    label = pd.read_parquet(folder / "planted" / "train.parquet")["label"][5].tolist()
    rewrite_label(folder, "train", 5, label + [0.0] * 3)  # one token too many
    tokens = len(label) // 3
    with pytest.raises(ValueError, match=f"train row 5: label has {len(label) + 3} values, the sentence has {tokens} "
                                         f"tokens x num_outputs 3 = {len(label)}"):
        run(tiny_bert, folder, tmp_path / "out", "--max_steps", "2")
    assert not (tmp_path / "out").exists()


def test_task_planted_needs_a_dataset_dir(tiny_bert, tmp_path):
    flags = trial_args(tiny_bert, tmp_path, "planted", "lora", tmp_path / "out")
    at = flags.index("--dataset_dir")
    with pytest.raises(ValueError, match="--task planted reads a planting folder .*: give --dataset_dir OUT"):
        run_glue_peft.main(flags[:at] + flags[at + 2:])


def test_the_readout_model_predicts_the_frozen_affine_readout(tiny_bert):
    """Target features: W h_[CLS] + b; per token: W h_t + b with the attention mask beside; the MSE over real tokens."""
    weight, bias = torch.randn(2, 32, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    encoder = AutoModel.from_pretrained(tiny_bert).eval()
    batch = AutoTokenizer.from_pretrained(tiny_bert)(["the plot", "a very good movie"], padding=True, return_tensors="pt")
    hidden = encoder(**batch).last_hidden_state.detach()
    for target in TARGETS:
        planting = Planting("x", target, 2, 32, weight, bias, ())
        model = ReadoutModel(AutoModel.from_pretrained(tiny_bert), planting).eval()
        labels = torch.randn(2, hidden.shape[1], 2) if planting.per_token else torch.randn(2, 2)
        out = model(**batch, labels=labels)
        h = hidden if planting.per_token else hidden[:, 0]
        expected = h @ weight.float().T + bias.float()
        assert torch.allclose(out.logits, expected, atol=1e-5)
        real = batch["attention_mask"].bool()
        mse = ((expected - labels)[real] ** 2).mean() if planting.per_token else ((expected - labels) ** 2).mean()
        assert torch.allclose(out.loss, mse, atol=1e-5)
        assert (out.token_mask is not None) == planting.per_token
        assert not [n for n, p in model.named_parameters() if "readout" in n]  # a buffer, never trained


BUILD_TRAINER = run_glue_peft.build_trainer


def recorded_arm(monkeypatch, model_dir, data, out, *extra, task="sst2"):
    """(the input ids of every training batch, in order; the trainable head's initial weights) of one run."""
    batches, head = [], {}

    def recording_build(model, *args, **kwargs):
        head.update({n: p.detach().clone() for n, p in model.named_parameters()
                     if p.requires_grad and "lora_" not in n})
        trainer = BUILD_TRAINER(model, *args, **kwargs)
        collate = trainer.data_collator

        def recording_collate(features):
            batch = collate(features)
            if trainer.model.training:
                batches.append(batch["input_ids"].clone())
            return batch

        trainer.data_collator = recording_collate
        return trainer

    monkeypatch.setattr(run_glue_peft, "build_trainer", recording_build)
    run_glue_peft.main(trial_args(model_dir, data, task, "lora", out, "--num_train_epochs", "2", *extra))
    return batches, head


def test_arms_of_one_seed_see_the_same_batches_and_start_from_the_same_head(tiny_bert, glue_dir, tmp_path, monkeypatch):
    """Common random numbers: uniform LoRA and an oracle --rank_pattern (whose adapters draw other amounts of random
    numbers at initialisation) train on the same batches in the same order, epoch after epoch, from the same initial
    classifier; another seed changes both."""
    from transformers import AutoModelForSequenceClassification

    from harness.adapters import MATRIX_PATTERNS, resolve_targets

    data = glue_dir("sst2")
    targets = resolve_targets(AutoModelForSequenceClassification.from_pretrained(tiny_bert), list(MATRIX_PATTERNS))
    pattern = tmp_path / "oracle.json"
    pattern.write_text(json.dumps({name: 7 if i % 2 else 1 for i, name in enumerate(targets)}))  # 48 in all, as lora
    lora = recorded_arm(monkeypatch, tiny_bert, data, tmp_path / "lora")
    oracle = recorded_arm(monkeypatch, tiny_bert, data, tmp_path / "oracle", "--rank_pattern", str(pattern))
    other_seed = recorded_arm(monkeypatch, tiny_bert, data, tmp_path / "seed", "--seed", "7")
    assert len(lora[0]) == 2 * 8 and lora[1] and set(lora[1]) == set(oracle[1])  # 64 rows / 8: two epochs
    for first, second in zip(lora[0], oracle[0], strict=True):
        assert torch.equal(first, second)
    for name in lora[1]:
        assert torch.equal(lora[1][name], oracle[1][name]), name
    assert any(not torch.equal(a, b) for a, b in zip(lora[0], other_seed[0]))
    assert any(not torch.equal(lora[1][n], other_seed[1][n]) for n in lora[1])


def test_two_arms_of_a_planting_are_compared_by_seed(tiny_bert, plantings, tmp_path):
    """lora and the oracle pattern x seeds 1, 2 of a tiny token_features planting: compare_runs' table holds the mean
    share recovered of each arm (and its R^2 and Pearson's r), and beside Welch the paired t of the per-seed
    differences (scipy's ttest_rel); no verdict at 2 seeds, but the seeds+examples bootstrap reads
    predictions_validation.npz: its Δ is the recorded share's."""
    from scipy.stats import ttest_ind, ttest_rel

    import compare_runs

    folder, root = plantings["token_features"], tmp_path / "runs"
    # Under --budget_unit params both arms sit at LoRA's R_total, as in the control study (launch/control_study.sh):
    # a rank budget would record the oracle's own smaller total rank and compare it in another row.
    arms = {"lora": ["--budget_unit", "params", "--arm", "lora"],
            "oracle": ["--budget_unit", "params", "--rank_pattern", str(folder / "oracle_pattern.json"), "--arm", "oracle"]}
    results = {arm: [run(tiny_bert, folder, root / f"{arm}_seed{seed}", "--max_steps", "3", "--seed", str(seed),
                         *flags) for seed in (1, 2)] for arm, flags in arms.items()}
    score = {arm: [r["eval_recovered"] for r in done] for arm, done in results.items()}
    assert compare_runs.main([str(root), "--out_dir", str(tmp_path / "cmp"), "--n_bootstrap", "50",
                              "--no_learning_curves"]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv").set_index("arm")
    for arm, values in score.items():
        assert table.loc[arm, "task"] == "planted" and table.loc[arm, "main_metrics"] == "recovered"
        assert table.loc[arm, "recovered_mean"] == pytest.approx(np.mean(values)) == table.loc[arm, "score_mean"]
        for beside in ("r2", "pearson"):
            assert table.loc[arm, f"{beside}_mean"] == pytest.approx(np.mean([r[f"eval_{beside}"] for r in results[arm]]))
    (sig,) = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["significance"]
    assert (sig["a"], sig["b"], sig["n_paired_t"]) == ("oracle", "lora", 2)
    assert sig["p_paired_t"] == pytest.approx(ttest_rel(score["oracle"], score["lora"]).pvalue)
    assert sig["p_welch"] == pytest.approx(ttest_ind(score["oracle"], score["lora"], equal_var=False).pvalue)
    assert sig["verdict"] == "too few seeds (< 3 per method)"
    assert sig["hier_n_a"] == sig["hier_n_b"] == 2 and 0 < sig["p_hier"] <= 1
    assert sig["delta_hier"] == pytest.approx(np.mean(score["oracle"]) - np.mean(score["lora"]), rel=1e-5, abs=1e-7)
    assert table.loc["oracle", "p_paired_t_vs_lora"] == pytest.approx(sig["p_paired_t"])


def test_oracle_share_reads_a_plantings_share_recovered(tiny_bert, plantings, tmp_path, capsys):
    """launch.oracle_share on harness-made planted runs: an arm's score is its eval_recovered (records.Results.score,
    the task's main metric)."""
    from launch import oracle_share

    folder = plantings["features"]
    arms = {"lora": [], "oracle": ["--rank_pattern", str(folder / "oracle_pattern.json"), "--arm", "oracle"]}
    recovered = {arm: run(tiny_bert, folder, tmp_path / f"{arm}_seed1", "--max_steps", "2", *flags)["eval_recovered"]
                 for arm, flags in arms.items()}
    oracle_share.main(tmp_path, [])
    assert (f"lora 1 seeds, mean {100 * recovered['lora']:.2f}; oracle 1 seeds, mean {100 * recovered['oracle']:.2f}; "
            f"oracle - lora {100 * (recovered['oracle'] - recovered['lora']):+.2f}") in capsys.readouterr().out


def test_a_study_tunes_a_planting_on_its_tuning_split(tiny_bert, plantings, tmp_path):
    """hpo.py on --task planted: the trial scores the held-out tuning rows (eval_tuning_recovered, whose denominator
    is the base error of those training rows) and never dev; the study's value is that share. (The search stage only:
    a final run is run_glue_peft.py on dev, tested above.)"""
    import optuna
    from optuna.trial import TrialState

    import hpo
    from search.study import make_storage

    study_dir, final_root = tmp_path / "study", tmp_path / "final"
    flags = trial_args(tiny_bert, plantings["features"], "planted", "lora", "unused")
    for name in ("--output_dir", "--learning_rate", "--per_device_train_batch_size"):  # set or searched by hpo.py
        at = flags.index(name)
        del flags[at:at + 2]
    hpo.main([str(ROOT / "configs" / "search" / "cpu_lr_batch.yaml"), *flags, "--n_trials", "1", "--max_steps", "2",
              "--study_dir", str(study_dir), "--final_root", str(final_root), "--stage", "search",
              "--tuning_split_fraction", "0.25", "--sampler_seed", "0"])
    (trial,) = (study_dir / "trials").iterdir()
    scored = json.loads((trial / "all_results.json").read_text())
    assert "eval_tuning_r2" in scored and "eval_tuning_pearson" in scored and "eval_r2" not in scored
    assert sorted(p.name for p in trial.glob("predictions_*")) == ["predictions_tuning.csv", "predictions_tuning.npz"]
    assert len(pd.read_csv(trial / "predictions_tuning.csv")) == 12  # a quarter of the 48 training rows
    written = np.load(trial / "predictions_tuning.npz")  # idx: the rows' positions in train.parquet
    train = pd.read_parquet(plantings["features"] / "planted" / "train.parquet").set_index("idx")
    labels = np.stack(train.loc[written["idx"], "label"].to_list())
    assert np.allclose(written["label"], labels, atol=1e-6)
    student = ((written["prediction"].astype(np.float64) - labels) ** 2).sum()
    hand = 1 - student / train.loc[written["idx"], "base_sq_error"].sum()
    assert scored["eval_tuning_recovered"] == pytest.approx(hand, abs=1e-5) == scored["eval_tuning_combined_score"]
    (done,) = optuna.load_study(study_name="planted_lora", storage=make_storage(str(study_dir / "study.journal"))).trials
    assert done.state == TrialState.COMPLETE and done.value == pytest.approx(scored["eval_tuning_recovered"])


@pytest.mark.parametrize("target", TARGETS)
def test_eva_runs_on_a_planting_and_spends_loras_rank_budget(tiny_bert, plantings, tmp_path, target):
    """--method eva on a vector planting: EVA's batches are collated by the planted collator (which needs the label
    columns) and handed to peft with the model's inputs only; the run finishes, scored by recovered, at LoRA's total
    rank. (Raised KeyError 'label' before.)"""
    results = run(tiny_bert, plantings[target], tmp_path / "eva", "--max_steps", "2", "--lora_r", "1", "--eva_rho", "4",
                  method="eva")
    ranks = json.loads((tmp_path / "eva" / "ranks.json").read_text())["modules"]
    assert "eval_recovered" in results
    assert sum(m["final_rank"] for m in ranks.values()) == sum(m["initial_rank"] for m in ranks.values()) == len(ranks)


def test_the_readout_model_trains_without_the_encoders_dropout(tiny_bert, plantings):
    """The labels are the teacher's outputs without dropout: in training mode the read-out model gives the outputs
    of evaluation mode exactly (the encoder's dropout off, in its modules and its config), so a run regresses on the
    planted change, not on dropout's noise. (Before: train-mode outputs differed from eval-mode outputs.)"""
    from transformers import AutoModel

    model = ReadoutModel(AutoModel.from_pretrained(tiny_bert), read_planting(plantings["features"]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer(["a very good movie", "not bad at all"], padding=True, return_tensors="pt")
    with torch.no_grad():
        trained = model.train()(**batch).logits
        evaluated = model.eval()(**batch).logits
    assert torch.equal(trained, evaluated)
    dropouts = {k: v for k, v in vars(model.config).items() if "dropout" in k and isinstance(v, float)}
    assert dropouts and set(dropouts.values()) == {0.0}
