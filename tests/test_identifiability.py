"""Identifiability diagnostics (analysis/identifiability.py, data/identifiability.py), exact on hand-made linear teachers
whose answers are derived by hand, and the script on a generated planting."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT

from analysis import identifiability as ident
from data import identifiability as script
from data import make_planted


def orthonormal(rows, cols, seed):
    return make_planted.orthonormal(rows, cols, torch.Generator().manual_seed(seed))


class Branches(torch.nn.Module):
    """Parallel branches: branch i maps x[:, i] by its own matrix. A change of one branch moves only its outputs."""

    def __init__(self, d, n):
        super().__init__()
        self.branch = torch.nn.ModuleList([torch.nn.Linear(d, d, bias=False, dtype=torch.float64) for _ in range(n)])

    def forward(self, x):
        return torch.stack([layer(x[:, i]) for i, layer in enumerate(self.branch)], 1)


class Chain(torch.nn.Module):
    """y = W2 W1 x."""

    def __init__(self, d):
        super().__init__()
        self.first = torch.nn.Linear(d, d, bias=False, dtype=torch.float64)
        self.second = torch.nn.Linear(d, d, bias=False, dtype=torch.float64)

    def forward(self, x):
        return self.second(self.first(x))


def planting_of(model, names, planted, inputs):
    """A Planting whose labels are the teacher's outputs (the model with every planted update added), computed here."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        originals = {name: modules[name].weight.clone() for name in planted}
        for name, (u, sigma, v) in planted.items():
            modules[name].weight += (u * sigma) @ v.T
        labels = model(inputs).detach()
        for name, weight in originals.items():
            modules[name].weight.copy_(weight)
    return ident.Planting(model=model, names=names, planted=planted, predict=lambda x: model(x).reshape(-1),
                          rows=lambda idx: (inputs[idx], labels[idx].reshape(-1)), n_rows=len(inputs))


def branch_planting(planted_branches, d=6, n=3, rows=40, rank=2):
    torch.manual_seed(0)
    model = Branches(d, n)
    inputs = torch.randn(rows, n, d, dtype=torch.float64)
    planted = {f"branch.{i}": (orthonormal(d, rank, 10 + i), torch.tensor([0.8, 0.5], dtype=torch.float64),
                               orthonormal(d, rank, 20 + i)) for i in planted_branches}
    return model, inputs, planting_of(model, [f"branch.{i}" for i in range(n)], planted, inputs)


def test_one_planted_update_is_all_of_the_change():
    _, _, planting = branch_planting([1])
    result = ident.additivity(planting, 40, 16)
    entry = result["per_matrix"]["branch.1"]
    assert entry["share"] == pytest.approx(1, abs=1e-12) and entry["r2"] == pytest.approx(1, abs=1e-12)
    assert result["sum_of_singles"] == pytest.approx({"explained": 1, "cosine": 1, "norm_ratio": 1}, abs=1e-12)
    assert result["label_gap"] < 1e-12 and result["entries"] == 40 * 3 * 6
    assert result["start_loss"] == pytest.approx(result["joint_effect"] ** 2, rel=1e-12)  # labels: the teacher's


def test_additivity_of_two_planted_updates_is_each_ones_share_of_the_change():
    model, inputs, planting = branch_planting([0, 2])
    result = ident.additivity(planting, 40, 16)
    # By hand: branch i's update moves only outputs [:, i] by x_i dW_i^T; the joint change is their sum.
    changes = {}
    for i in (0, 2):
        u, sigma, v = planting.planted[f"branch.{i}"]
        d = torch.zeros(40, 3, 6, dtype=torch.float64)
        d[:, i] = inputs[:, i] @ ((u * sigma) @ v.T).T
        changes[i] = d.reshape(-1).numpy()
    joint = changes[0] + changes[2]
    for i in (0, 2):
        entry = result["per_matrix"][f"branch.{i}"]
        assert entry["share"] == pytest.approx(changes[i] @ changes[i] / (joint @ joint), rel=1e-10)
        assert entry["r2"] == pytest.approx(np.corrcoef(changes[i], joint)[0, 1] ** 2, rel=1e-10)
        assert entry["effect"] == pytest.approx(np.sqrt(np.mean(changes[i] ** 2)), rel=1e-10)
    assert result["sum_of_singles"]["explained"] == pytest.approx(1, abs=1e-12)
    assert sum(e["share"] for e in result["per_matrix"].values()) == pytest.approx(1, abs=1e-12)
    assert all(torch.equal(model.branch[i].weight, w) for i, w in enumerate(  # the base weights are restored
        [branch_planting([0, 2])[0].branch[j].weight for j in range(3)]))


def test_mean_gradient_of_a_planted_first_layer_is_the_update_times_the_input_covariance():
    """y = W2 W1 x with W2 orthogonal and dW planted on W1: the mean squared error over n rows and d outputs has
    gradient G1 = -(2/d) W2^T W2 dW C = -(2/d) dW C, C = X^T X / n. So -G1 lies in dW's column space (share 1) and its
    row-space share, cosine with dW follow from dW C alone."""
    d, n, rank = 8, 64, 2
    torch.manual_seed(1)
    model = Chain(d)
    with torch.no_grad():
        model.second.weight.copy_(orthonormal(d, d, 5))
    mixing = torch.randn(d, d, dtype=torch.float64)
    inputs = torch.randn(n, d, dtype=torch.float64) @ mixing  # correlated inputs: C is not a multiple of I
    u, v, sigma = orthonormal(d, rank, 6), orthonormal(d, rank, 7), torch.tensor([1.0, 0.3], dtype=torch.float64)
    planting = planting_of(model, ["first", "second"], {"first": (u, sigma, v)}, inputs)
    gradient = ident.mean_gradient(planting, n, 16)
    delta = ((u * sigma) @ v.T).numpy()
    expected = -(2 / d) * delta @ (inputs.T @ inputs).numpy() / n
    assert np.allclose(gradient["first"].numpy(), expected, atol=1e-12)
    found = ident.gradient_alignment(gradient["first"], u, sigma, v)
    descent, vv = -expected, v.numpy()
    assert found["column_share"] == pytest.approx(1, abs=1e-12)
    assert found["row_share"] == pytest.approx(np.sum((descent @ vv) ** 2) / np.sum(descent ** 2), rel=1e-10)
    assert found["row_share"] < 0.99  # C mixes the planted row space with the rest: a real test of the row share
    assert found["both_share"] == pytest.approx(found["row_share"], rel=1e-10)  # U U^T (-G) = -G
    assert found["cosine"] == pytest.approx(np.sum(descent * delta) / np.linalg.norm(descent) / np.linalg.norm(delta),
                                            rel=1e-10)
    assert (found["random_column_share"], found["random_both_share"]) == (rank / d, rank ** 2 / d ** 2)


def test_change_scores_are_the_relative_norm_and_the_top_k_singular_energy():
    left, right = orthonormal(5, 3, 1), orthonormal(4, 3, 2)
    change = (left * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ right.T
    weight = torch.full((5, 4), 0.5, dtype=torch.float64)  # ||W|| = sqrt(20) / 2
    for k, share in ((1, 9 / 14), (2, 13 / 14), (3, 1.0)):
        scores = ident.change_scores({"a": change, "still": torch.zeros(5, 4)}, {"a": weight, "still": weight}, k)
        assert scores["top_k_share"] == pytest.approx({"a": share, "still": 0.0}, rel=1e-12)
        assert scores["relative_change"] == pytest.approx({"a": np.sqrt(14) / (np.sqrt(20) / 2), "still": 0.0})


def test_the_verdict_rule_needs_three_of_four_planted_matrices_in_the_top_four():
    scores = {name: float(value) for name, value in zip("abcdefgh", range(8, 0, -1))}  # a highest
    found = ident.placement(scores, {"a", "b", "d", "f"})  # places 1, 2, 4, 6
    assert (found["hits"], found["places"], found["mean_place"], found["identifiable"]) == (3, [1, 2, 4, 6], 3.25, True)
    assert not ident.placement(scores, {"a", "e", "f", "g"})["identifiable"]  # 1 of 4
    assert ident.placement(scores, {"a", "b", "e", "f"})["hits"] == 2
    tied = ident.placement({"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.0}, {"a", "b"})
    assert tied["places"] == [1, 3] and tied["hits"] == pytest.approx(1 + 1 / 3)  # b, c, d share places 2-4
    assert [ident.required_hits(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 3, 3, 4, 6]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_training_moves_only_the_planted_branch(kind):
    """In parallel branches only the planted branch has a loss, so its change is the only non-zero one: recall 1, place 1
    by both scores at every step, for full fine-tuning and for LoRA (whose B stays exactly zero elsewhere)."""
    _, _, planting = branch_planting([1])
    before = {n: m.weight.detach().clone() for n, m in planting.modules().items()}
    if kind == "full":
        runs = ident.full_finetuning(planting, (3, 6), 1e-2, 8, 0, report=lambda line: None)
    else:
        runs = ident.lora_finetuning(planting, (3, 6), 4, 8.0, 1e-2, 8, 0, report=lambda line: None)
    localised = ident.localisation(planting, runs, before, 2)
    for step in ("3", "6"):
        assert localised[step]["scores"]["relative_change"]["branch.0"] == 0.0
        assert localised[step]["scores"]["relative_change"]["branch.1"] > 0
        for score in ("relative_change", "top_k_share"):
            assert (localised[step][score]["recall"], localised[step][score]["mean_place"]) == (1.0, 1.0)
            assert localised[step][score]["identifiable"]
    assert localised["6"]["loss"] < localised["3"]["loss"]
    assert all(torch.equal(m.weight, before[n]) for n, m in planting.modules().items())  # restored, hooks removed
    assert torch.equal(planting.model(planting.rows([0])[0]), branch_planting([1])[0](planting.rows([0])[0]))


@pytest.mark.parametrize("target", ["features", "token_features"])
def test_script_writes_the_block_and_the_report(tiny_bert, tmp_path, target):
    out = tmp_path / "planting"
    make_planted.main(["--out_dir", str(out), "--model_name_or_path", str(tiny_bert), "--source_dir",
                       str(ROOT / "data" / "glue" / "sst2"), "--target", target, "--num_outputs", "6", "--num_planted",
                       "4", "--rank", "2", "--train_rows", "60", "--dev_rows", "10", "--max_seq_length", "24",
                       "--effect_rows", "32", "--effect_iterations", "1"])
    before = json.loads((out / "ground_truth.json").read_text())
    block = script.main([str(out), "--steps", "2", "4", "--rows", "40", "--batch_size", "16", "--additivity_rows", "24",
                         "--gradient_rows", "24", "--lora_rank", "4"])
    after = json.loads((out / "ground_truth.json").read_text())
    assert {k: v for k, v in after.items() if k != "identifiability"} == before
    assert after["identifiability"]["verdict"] == block["verdict"] and sorted(after["identifiability"]["lora"]) == ["2", "4"]
    assert block["additivity"]["label_gap"] < 1e-3  # the planting's labels are its teacher's read-out
    assert set(block["mean_gradient"]["per_matrix"]) == set(before["planted"]) and block["required_hits"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth.json", "identifiability.md", "oracle_pattern.json",
                                                     "planted", "planted_update.safetensors"]  # no temporary file left
    assert "## Verdict" in (out / "identifiability.md").read_text()


def test_script_refuses_a_scalar_planting(tiny_bert, tmp_path):
    make_planted.main(["--out_dir", str(tmp_path), "--model_name_or_path", str(tiny_bert), "--source_dir",
                       str(ROOT / "data" / "glue" / "sst2"), "--train_rows", "30", "--dev_rows", "10", "--rank", "2", "--planted", "0:value",
                       "--max_seq_length", "24"])
    with pytest.raises(SystemExit, match="target 'class'; the diagnostic needs a vector target"):
        script.main([str(tmp_path), "--steps", "2"])
