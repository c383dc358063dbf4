"""Tests for lora_resize: growing and shrinking peft LoRA layers in place, and saving/reloading mixed ranks."""

import re

import pytest
import torch
from conftest import Tiny
from peft import LoraConfig, PeftModel, get_peft_model

from gradnorm_rank.lora_resize import components_to_keep, resize_lora_layer, resize_to_ranks
from harness.adapters import head_modules, lora_layers, resolve_targets

TOL = 1e-6


def tiny_lora(r=4, alpha=8, use_rslora=False, seed=0):
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["up", "down"], use_rslora=use_rslora)
    return get_peft_model(Tiny(), config)


def train_lora(model, steps=20, seed=1):
    """A few Adam steps towards a random target so that every A and B is non-zero and not at its init."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=gen)
    target = torch.randn(32, 5, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    for layer in lora_layers(model).values():
        assert layer.lora_B["default"].weight.abs().min() > 0  # really trained away from B = 0
    return x


def snapshot(model):
    return {
        name: dict(A=layer.lora_A["default"].weight.detach().clone(), B=layer.lora_B["default"].weight.detach().clone(),
                   scaling=layer.scaling["default"], r=layer.r["default"])
        for name, layer in lora_layers(model).items()
    }


# ---------------------------------------------------------------- growing


@pytest.mark.parametrize("use_rslora", [False, True])
def test_grow_keeps_output_and_components(use_rslora):
    model = tiny_lora(use_rslora=use_rslora)
    x = train_lora(model)
    model.eval()
    with torch.no_grad():
        before = model(x)
    old = snapshot(model)

    resized = resize_to_ranks(model, {"up": 7, "down": 9})

    assert {r.name: (r.old_rank, r.new_rank) for r in resized} == {"up": (4, 7), "down": (4, 9)}
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= TOL
    config = model.peft_config["default"]
    for name, layer in lora_layers(model).items():
        new_r = {"up": 7, "down": 9}[name]
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert layer.r["default"] == new_r
        assert A.shape == (new_r, old[name]["A"].shape[1]) and B.shape == (old[name]["B"].shape[0], new_r)
        assert torch.equal(A[:4], old[name]["A"])  # kept rows of A, in their order
        assert torch.equal(B[:, :4], old[name]["B"])  # kept columns of B
        assert torch.count_nonzero(B[:, 4:]) == 0  # new columns of B are zero
        assert torch.count_nonzero(A[4:]) > 0  # new rows of A are initialised (else they never learn)
        assert layer.scaling["default"] == pytest.approx(old[name]["scaling"], rel=1e-12)
        assert A.requires_grad and B.requires_grad
        # The new rank and alpha are recorded for save_pretrained -> from_pretrained.
        assert config.rank_pattern[re.escape(name)] == new_r
        alpha = config.alpha_pattern[re.escape(name)]
        expected_scaling = alpha / (new_r**0.5 if use_rslora else new_r)
        assert expected_scaling == pytest.approx(old[name]["scaling"], rel=1e-12)
    # Every resized layer reports the parameters the optimizer rebuild needs.
    for r in resized:
        layer = lora_layers(model)[r.name]
        assert r.new_A is layer.lora_A["default"].weight and r.new_B is layer.lora_B["default"].weight
        assert torch.equal(r.kept, torch.arange(4))
        assert torch.equal(r.old_A.detach(), old[r.name]["A"])


def test_grown_layer_trains_and_optimizer_sees_new_parameters():
    model = tiny_lora()
    x = train_lora(model, steps=3)
    resize_to_ranks(model, {"up": 6})
    layer = lora_layers(model)["up"]
    model.zero_grad()
    model(x).pow(2).mean().backward()
    # B's new columns get a gradient (A's new rows are non-zero), so the new components start learning.
    assert layer.lora_B["default"].weight.grad[:, 4:].abs().sum() > 0


def test_resize_to_same_rank_is_a_no_op():
    model = tiny_lora()
    train_lora(model, steps=3)
    A_param = lora_layers(model)["up"].lora_A["default"].weight
    assert resize_to_ranks(model, {"up": 4, "down": 4}) == []
    assert lora_layers(model)["up"].lora_A["default"].weight is A_param
    assert not model.peft_config["default"].rank_pattern


def test_unknown_layer_name_raises():
    model = tiny_lora()
    with pytest.raises(ValueError, match="No LoRA layer named"):
        resize_to_ranks(model, {"nope": 2})


# ---------------------------------------------------------------- shrinking


def set_components(layer, a_norms, b_norms, seed=0):
    """A's rows and B's columns with random directions and the given exact-ish norms."""
    gen = torch.Generator().manual_seed(seed)
    A = layer.lora_A["default"].weight
    B = layer.lora_B["default"].weight
    with torch.no_grad():
        dirs_a = torch.randn(A.shape, generator=gen, dtype=torch.float64)
        dirs_b = torch.randn(B.shape, generator=gen, dtype=torch.float64)
        A.copy_(dirs_a / dirs_a.norm(dim=1, keepdim=True) * torch.tensor(a_norms, dtype=torch.float64)[:, None])
        B.copy_(dirs_b / dirs_b.norm(dim=0, keepdim=True) * torch.tensor(b_norms, dtype=torch.float64)[None, :])


def lora_output(layer, x, indices):
    """base(x) + scaling * sum over `indices` of the rank-one terms B[:, i] A[i, :] x, computed by hand."""
    A = layer.lora_A["default"].weight.detach()
    B = layer.lora_B["default"].weight.detach()
    out = layer.get_base_layer()(x)
    for i in indices:
        out = out + layer.scaling["default"] * (x @ A[i][:, None]) @ B[:, i][None, :]
    return out


def test_shrink_keeps_largest_products_of_norms():
    model = tiny_lora()
    layer = lora_layers(model)["up"]
    # ||A_i|| = [10, 1, 4, 5], ||B_i|| = [0.35, 3, 1, 0.1] -> products [3.5, 3, 4, 0.5].
    # Top 2 by product: {0, 2}; by ||A|| alone it would be {0, 3}, by ||B|| alone {1, 2}.
    set_components(layer, [10.0, 1.0, 4.0, 5.0], [0.35, 3.0, 1.0, 0.1])
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(3))
    old_A = layer.lora_A["default"].weight.detach().clone()
    old_B = layer.lora_B["default"].weight.detach().clone()
    expected = lora_output(layer, x, [0, 2])
    scaling = layer.scaling["default"]

    (resized,) = resize_to_ranks(model, {"up": 2})

    assert resized.kept.tolist() == [0, 2]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert A.shape == (2, 6) and B.shape == (10, 2) and layer.r["default"] == 2
    assert torch.equal(A, old_A[[0, 2]]) and torch.equal(B, old_B[:, [0, 2]])  # original order kept
    assert layer.scaling["default"] == pytest.approx(scaling, rel=1e-12)
    with torch.no_grad():
        assert (layer(x) - expected).abs().max().item() <= TOL * 10  # outputs ~ 30: 1e-5 absolute is float32 noise


def test_shrink_to_three_and_to_one():
    for new_rank, kept in [(3, [0, 1, 2]), (1, [2])]:
        model = tiny_lora()
        layer = lora_layers(model)["down"]
        set_components(layer, [10.0, 1.0, 4.0, 5.0], [0.35, 3.0, 1.0, 0.1], seed=new_rank)
        x = torch.randn(8, 10, generator=torch.Generator().manual_seed(4))
        expected = lora_output(layer, x, kept)
        (resized,) = resize_to_ranks(model, {"down": new_rank})
        assert resized.kept.tolist() == kept
        with torch.no_grad():
            assert (layer(x) - expected).abs().max().item() <= 1e-5


def test_equal_importance_keeps_earlier_components():
    A = torch.zeros(4, 6)
    B = torch.zeros(5, 4)
    for i, (a, b) in enumerate([(2.0, 1.0), (1.0, 2.0), (4.0, 0.5), (1.0, 1.0)]):  # products [2, 2, 2, 1]
        A[i, i] = a
        B[i, i] = b
    assert components_to_keep(A, B, 2).tolist() == [0, 1]
    assert components_to_keep(A, B, 3).tolist() == [0, 1, 2]
    assert components_to_keep(A, B, 4).tolist() == [0, 1, 2, 3]
    assert components_to_keep(A, B, 6).tolist() == [0, 1, 2, 3]


def test_resize_lora_layer_directly_records_rank():
    model = tiny_lora()
    train_lora(model, steps=3)
    config = model.peft_config["default"]
    layer = lora_layers(model)["down"]
    result = resize_lora_layer(layer, "down", 2, config)
    assert (result.old_rank, result.new_rank) == (4, 2)
    assert config.rank_pattern == {"down": 2}
    assert config.alpha_pattern == {"down": pytest.approx(8 / 4 * 2)}


# ---------------------------------------------------------------- save -> reload with mixed ranks


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_deberta"])
def test_save_and_reload_non_uniform_ranks_gives_identical_logits(arch, request, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = request.getfixturevalue(arch)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    targets = resolve_targets(base, ["query", "value", "ffn_out"])
    # The head as run_glue_peft trains it: the classifier, and DeBERTa's pooler (random, not in the checkpoint).
    config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets,
                        modules_to_save=head_modules(base))
    model = get_peft_model(base, config)
    names = list(lora_layers(model))
    assert len(names) == 6
    with torch.no_grad():  # non-zero adapters, so the reload must restore real weights
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.5)
    ranks = dict(zip(names, [1, 7, 4, 2, 9, 1]))  # grow, shrink and one unchanged layer (4)
    resize_to_ranks(model, ranks)
    with torch.no_grad():  # the grown layers' new components too
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.5)
    scalings = {name: layer.scaling["default"] for name, layer in lora_layers(model).items()}

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["a very good movie", "the plot was awful and the actor not fine"], padding=True,
                      return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")

    torch.manual_seed(123)  # a different classifier init: the reload must bring the saved head back
    fresh = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    reloaded.eval()
    assert {n: int(layer.r["default"]) for n, layer in lora_layers(reloaded).items()} == ranks
    for name, layer in lora_layers(reloaded).items():
        assert layer.scaling["default"] == pytest.approx(scalings[name], rel=1e-12)
    with torch.no_grad():
        reloaded_logits = reloaded(**batch).logits
    assert logits.abs().max() > 0
    torch.testing.assert_close(reloaded_logits, logits, rtol=0, atol=1e-6)
