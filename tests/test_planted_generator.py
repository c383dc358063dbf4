"""data/make_planted.py's vector targets (features, token_features): the files the harness's planted task reads
(PLANTED_CONTRACT), equal-effect updates, matrices drawn per seed, determinism and refusals."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data import make_planted
from harness.adapters import MATRIX_PATTERNS

SOURCE = str(ROOT / "data" / "glue" / "sst2")


def generate(model_dir, out, *extra):
    return make_planted.main(["--out_dir", str(out), "--model_name_or_path", str(model_dir), "--source_dir", SOURCE,
                              "--rank", "2", "--train_rows", "80", "--dev_rows", "20", "--max_seq_length", "24",
                              "--effect_rows", "40", "--seed", "3", *extra])


def teacher_states(model_dir, truth, tensors, sentences, per_token):
    """The teacher rebuilt from the update file alone; each sentence run on its own (no padding), float64."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in truth["planted"]:
            u, sigma, v = (tensors[f"{name}.{part}"] for part in ("U", "sigma", "V"))
            modules[name].weight.copy_(modules[name].weight.double() + (u * sigma) @ v.T)
        out = []
        for sentence in sentences:
            batch = tokenizer(sentence, truncation=True, max_length=truth["max_seq_length"], return_tensors="pt")
            hidden = model.base_model(**batch).last_hidden_state[0].double()
            out.append(hidden if per_token else hidden[:1])
    return out


@pytest.mark.parametrize("target", ["features", "token_features"])
def test_labels_are_the_standardised_readout_of_the_rebuilt_teacher(tiny_bert, tmp_path, target):
    truth = generate(tiny_bert, tmp_path, "--target", target, "--num_outputs", "5", "--planted", "0:value", "1:ffn_out")
    tensors = load_file(tmp_path / "planted_update.safetensors")
    weight, bias = tensors["readout.weight"], tensors["readout.bias"]
    assert weight.dtype == bias.dtype == torch.float64 and weight.shape == (5, 32) and bias.shape == (5,)
    assert (truth["task"], truth["target"], truth["num_outputs"], truth["max_seq_length"]) == ("planted", target, 5, 24)
    assert truth["readout"]["kind"] == "moved_most"
    train_labels = []
    for split, rows in (("train", 80), ("validation", 20)):
        frame = pd.read_parquet(tmp_path / "planted" / f"{split}.parquet")
        assert list(frame.columns) == ["sentence", "idx", "label", "base_sq_error"] and frame["idx"].tolist() == list(range(rows))
        states = teacher_states(tiny_bert, truth, tensors, frame["sentence"].tolist(), target == "token_features")
        for label, hidden in zip(frame["label"], states):
            assert len(label) == len(hidden) * 5  # token t's 5 outputs at t*5 .. t*5+4
            expected = hidden @ weight.T + bias
            # other batches pad differently, which moves float32 features by ~1e-6: in units of the outputs' std
            assert np.allclose(np.asarray(label).reshape(-1, 5), expected.numpy(), atol=1e-3)
            if split == "train":
                train_labels.append(np.asarray(label).reshape(-1, 5))
    entries = np.concatenate(train_labels)  # standardised over the training rows' entries (every real token)
    assert np.allclose(entries.mean(0), 0, atol=1e-9) and np.allclose(entries.var(0), 1, atol=1e-9)
    assert truth["tokens"]["train"] == len(entries)


@pytest.mark.parametrize("target", ["features", "token_features"])
def test_base_sq_error_is_the_base_models_squared_error_of_each_row(tiny_bert, tmp_path, target):
    """base_sq_error, recomputed from the base model alone (each sentence on its own) and the written labels: the sum
    over the row's outputs (and real tokens) of (read-out of the base model - label)^2; base_mse its mean per entry."""
    truth = generate(tiny_bert, tmp_path, "--target", target, "--num_outputs", "3", "--planted", "0:value", "1:ffn_out",
                     "--relative_norm", "1.0")
    tensors = load_file(tmp_path / "planted_update.safetensors")
    weight, bias = tensors["readout.weight"], tensors["readout.bias"]
    for split in ("train", "validation"):
        frame = pd.read_parquet(tmp_path / "planted" / f"{split}.parquet")
        assert list(frame.columns) == ["sentence", "idx", "label", "base_sq_error"]
        base = teacher_states(tiny_bert, {**truth, "planted": {}}, tensors, frame["sentence"].tolist(),
                              target == "token_features")
        expected = np.array([((hidden @ weight.T + bias).numpy() - np.reshape(label, (-1, 3))) ** 2
                             for hidden, label in zip(base, frame["label"])], dtype=object)
        expected = np.array([e.sum() for e in expected])
        assert expected.min() > 1e-4  # a planting that moves every row: the comparison is not of float noise
        assert np.allclose(frame["base_sq_error"], expected, rtol=1e-4)
        assert truth["base_mse"][split] == pytest.approx(expected.sum() / (truth["tokens"][split] * 3), rel=1e-4)


def test_identity_readout_of_every_varying_hidden_dim(tiny_bert, tmp_path):
    truth = generate(tiny_bert, tmp_path, "--target", "features", "--planted", "0:query")
    weight = load_file(tmp_path / "planted_update.safetensors")["readout.weight"]
    assert truth["readout"]["kind"] == "identity" and truth["num_outputs"] == 32
    assert truth["readout"]["constant_dims_left_out"] == []
    assert torch.count_nonzero(weight - torch.diag(torch.diagonal(weight))) == 0 and (torch.diagonal(weight) > 0).all()


def test_varying_dims_leave_out_a_constant_dim():
    h = np.random.default_rng(0).normal(size=(50, 6))
    h[:, 2] = 0.7
    h[:, 4] = 0.7 + 1e-9 * np.random.default_rng(1).normal(size=50)  # float noise around a constant
    assert make_planted.varying_dims(h).tolist() == [0, 1, 3, 5]


def single_effect(model_dir, truth, tensors, name, sentences, weight):
    """RMS change of the read-out outputs when only `name`'s update is planted, computed from scratch."""
    alone = {**truth, "planted": {name: truth["planted"][name]}}
    planted = np.concatenate(teacher_states(model_dir, alone, tensors, sentences, True))
    base = np.concatenate(teacher_states(model_dir, {**truth, "planted": {}}, tensors, sentences, True))
    return float(np.sqrt(np.mean(((planted - base) @ weight.T) ** 2)))


def test_planted_updates_have_equal_effect_within_the_recorded_spread(tiny_bert, tmp_path):
    planted = ["0:value", "1:ffn_in", "1:attention_output"]
    norm = generate(tiny_bert, tmp_path / "norm", "--target", "token_features", "--num_outputs", "6", "--planted",
                    *planted, "--equal", "norm")
    effect = generate(tiny_bert, tmp_path / "effect", "--target", "token_features", "--num_outputs", "6", "--planted",
                      *planted)
    assert effect["equal"] == "effect" and norm["equal"] == "norm"
    tensors = load_file(tmp_path / "effect" / "planted_update.safetensors")
    sentences = pd.read_parquet(tmp_path / "effect" / "planted" / "train.parquet")["sentence"].tolist()[:40]
    for name, entry in effect["planted"].items():
        found = single_effect(tiny_bert, effect, tensors, name, sentences, tensors["readout.weight"].numpy())
        assert entry["effect"] == pytest.approx(found, rel=1e-3)
    effects = [e["effect"] for e in effect["planted"].values()]
    assert effect["effect_spread"] == pytest.approx(max(effects) / min(effects))
    assert effect["effect_spread"] < norm["effect_spread"] and effect["effect_spread"] < 1.25
    # the budget: the sum of squared relative norms is 3 x 0.25^2 under both
    for truth in (norm, effect):
        assert sum(e["relative_norm"] ** 2 for e in truth["planted"].values()) == pytest.approx(3 * 0.25 ** 2, rel=1e-9)
    assert [e["relative_norm"] for e in norm["planted"].values()] == pytest.approx([0.25] * 3, rel=1e-9)


def test_negative_control_spends_the_positive_controls_budget_over_every_matrix(tiny_bert, tmp_path):
    negative = generate(tiny_bert, tmp_path, "--target", "features", "--num_outputs", "4", "--num_planted", "3",
                        "--spread_evenly", "--spread_rank", "1", "--effect_iterations", "1")
    assert len(negative["planted"]) == 12 and {e["rank"] for e in negative["planted"].values()} == {1}
    assert sum(e["relative_norm"] ** 2 for e in negative["planted"].values()) == pytest.approx(3 * 0.25 ** 2, rel=1e-9)
    assert all(e["effect"] > 0 for e in negative["planted"].values())


def bert_targets(layers):
    kinds = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_output": "attention.output.dense", "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
    assert set(kinds) == set(MATRIX_PATTERNS)
    return [f"bert.encoder.layer.{layer}.{path}" for layer in range(layers) for path in kinds.values()]


def test_num_planted_draws_matrices_spread_over_layers_and_types_per_seed():
    targets = bert_targets(6)
    places = {seed: [make_planted.module_matrix(n) for n in make_planted.draw_planted(targets, 4, seed)]
              for seed in range(3)}
    for drawn in places.values():
        assert len({layer for layer, _ in drawn}) == 4 and len({kind for _, kind in drawn}) == 4
    assert places[0] == [make_planted.module_matrix(n) for n in make_planted.draw_planted(targets, 4, 0)]
    assert len({tuple(p) for p in places.values()}) == 3  # three seeds, three different draws
    every = [make_planted.module_matrix(n) for n in make_planted.draw_planted(targets, 12, 5)]
    assert sorted(np.bincount([layer for layer, _ in every]).tolist()) == [2] * 6
    assert sorted(np.unique([kind for _, kind in every], return_counts=True)[1].tolist()) == [2] * 6


def test_vector_planting_files_are_byte_identical_for_a_seed(tiny_bert, tmp_path):
    files = ["ground_truth.json", "oracle_pattern.json", "planted_update.safetensors", "planted/train.parquet",
             "planted/validation.parquet"]
    args = ("--target", "token_features", "--num_outputs", "4", "--num_planted", "2", "--effect_iterations", "1")
    generate(tiny_bert, tmp_path, *args)
    first = {f: (tmp_path / f).read_bytes() for f in files}
    generate(tiny_bert, tmp_path, *args)
    assert {f: (tmp_path / f).read_bytes() for f in files} == first
    other = generate(tiny_bert, tmp_path / "other", *args, "--seed", "4")
    assert (tmp_path / "other" / "planted_update.safetensors").read_bytes() != first["planted_update.safetensors"]
    assert other["seed"] == 4


def test_make_planted_refuses_rank_0(tiny_bert, tmp_path):
    """Issue 29: --rank 0 wrote a full control whose teacher is the base model (flags the old generator knew)."""
    with pytest.raises(SystemExit, match=r"^--rank 0: must be at least 1"):
        make_planted.main(["--out_dir", str(tmp_path), "--model_name_or_path", str(tiny_bert), "--source_dir", SOURCE,
                           "--planted", "0:value", "--rank", "0", "--train_rows", "40", "--dev_rows", "10"])
    assert not tmp_path.joinpath("ground_truth.json").exists()


@pytest.mark.parametrize("flags, message", [
    (["--rank", "-2"], r"^--rank -2: must be at least 1"),
    (["--relative_norm", "0"], r"^--relative_norm 0.0: must be a positive number"),
    (["--relative_norm", "nan"], r"^--relative_norm nan: must be a positive number"),
    (["--spread_evenly", "--spread_rank", "0"], r"^--spread_rank 0: must be at least 1"),
    (["--planted", "0:nonsense"], r"^--planted 0:nonsense: expected LAYER:MATRIX"),
    (["--planted", "7:value"], r"^--planted 7:value: the model has no layer 7 value matrix"),
    (["--planted", "0:value", "0:value"], r"^--planted names a matrix twice"),
    (["--num_planted", "0"], r"^--num_planted 0: must be at least 1"),
    (["--num_planted", "13"], r"^--num_planted 13: the model has only 12 adapted matrices"),
    (["--num_planted", "2", "--planted", "0:value"], r"^--planted and --num_planted both given"),
    (["--rank", "40", "--planted", "0:value"], r"^--rank 40 exceeds .* smaller side 32"),
    (["--target", "features", "--num_outputs", "33", "--planted", "0:value"], r"^--num_outputs 33: the model's hidden size is 32"),
    (["--target", "features", "--num_outputs", "0"], r"^--num_outputs 0: must be at least 1"),
    (["--target", "features", "--num_outputs", "8", "--feature_directions", "identity", "--planted", "0:value"],
     r"^--feature_directions identity reads every hidden dim: --num_outputs 8"),
    (["--target", "class", "--num_outputs", "8"], r"^--num_outputs/--feature_directions apply to --target features"),
    (["--target", "regression", "--equal", "effect"], r"^--equal effect needs a vector target"),
    (["--target", "features", "--effect_rows", "0"], r"^--effect_rows 0: must be at least 1"),
    (["--target", "features", "--effect_iterations", "-1"], r"^--effect_iterations -1: must be 0 or more"),
])
def test_make_planted_refuses_meaningless_settings_in_one_line(tiny_bert, tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message) as refused:
        generate(tiny_bert, tmp_path, *flags)
    assert "\n" not in str(refused.value) and not tmp_path.joinpath("ground_truth.json").exists()


def test_relative_norm_defaults_by_target():
    vector = make_planted.parse_args(["--out_dir", "x", "--model_name_or_path", "m", "--target", "features"])
    scalar = make_planted.parse_args(["--out_dir", "x", "--model_name_or_path", "m"])
    assert (vector.relative_norm, vector.equal, scalar.relative_norm, scalar.equal) == (0.25, "effect", 1.0, "norm")
    assert math.isfinite(vector.relative_norm)
