"""The signal family (gradnorm_rank.signals) against hand computations on a tiny BERT, the nulls' seeds, and the
calibration timing (gradnorm_rank.GradNormRank.calibrate; --glora_calibration_steps in the harness)."""

import json

import pytest
import torch
from conftest import Tiny, glora_plan, trial_args, write_glue_fixture

import run_glue_peft
from gradnorm_rank import GradNormRank
from harness.adapters import lora_layers

DAMPING = 1e-2


def method(model, signal, **changes):
    return GradNormRank(model, glora_plan(8 * 4, 5, signal=signal, signal_damping=DAMPING, **changes))


def explicit_statistics(model, batches):
    """Per LoRA layer, by hand: the frozen weight's autograd gradient (the weight unfrozen), and the stacked inputs
    and output gradients of the unpadded tokens of both micro-batches."""
    layers = lora_layers(model)
    inputs, outputs, captured = {n: [] for n in layers}, {n: [] for n in layers}, []
    for layer in layers.values():
        layer.get_base_layer().weight.requires_grad_(True)

    def capture(name):
        def hook(module, args, output):
            output.retain_grad()
            captured.append((name, args[0].detach(), output))
        return hook

    handles = [layer.register_forward_hook(capture(n)) for n, layer in layers.items()]
    model.zero_grad()
    for batch in batches:
        captured.clear()
        model(**batch).loss.backward()
        keep = batch["attention_mask"].reshape(-1).bool()
        for name, x, out in captured:
            inputs[name].append(x.reshape(-1, x.shape[-1])[keep].double())
            outputs[name].append(out.grad.reshape(-1, out.shape[-1])[keep].double())
    for h in handles:
        h.remove()
    grads = {n: layer.get_base_layer().weight.grad.double().clone() for n, layer in layers.items()}
    weights = {n: layer.get_base_layer().weight.detach().double() for n, layer in layers.items()}
    for layer in layers.values():
        layer.get_base_layer().weight.requires_grad_(False)
        layer.get_base_layer().weight.grad = None
    return grads, weights, {n: torch.cat(v) for n, v in inputs.items()}, {n: torch.cat(v) for n, v in outputs.items()}


def inverse_sqrt(c):
    """C^{-1/2} of a damped covariance, from its eigendecomposition (independent of the Cholesky route)."""
    c = c + DAMPING * torch.trace(c) / c.shape[0] * torch.eye(c.shape[0], dtype=c.dtype)
    values, vectors = torch.linalg.eigh(c)
    return vectors @ torch.diag(values.rsqrt()) @ vectors.T


def hand_values(signal, grads, weights, inputs, outputs, rank=4):
    out = []
    for name, g in grads.items():
        x, dy = inputs[name], outputs[name]
        if signal == "weight_grad":
            out.append(g.norm())
        elif signal == "sensitivity":
            out.append((weights[name] * g).abs().sum())
        elif signal == "whitened":
            out.append((g @ inverse_sqrt(x.T @ x / len(x))).norm())
        elif signal == "kfac":
            out.append((inverse_sqrt(dy.T @ dy / len(dy)) @ g @ inverse_sqrt(x.T @ x / len(x))).norm())
        elif signal == "activation_variance":
            singular = torch.linalg.svdvals(x - x.mean(0))
            out.append((singular[:rank] ** 2).sum() / (singular**2).sum())
    return torch.stack(out)


@pytest.mark.parametrize("signal", ["weight_grad", "sensitivity", "whitened", "kfac", "activation_variance"])
def test_hooked_signal_equals_hand_computation(bert_peft, signal):
    """One observation over two padded micro-batches: weight_grad = ||autograd's gradient of the unfrozen weight||,
    sensitivity = sum |W * G|, whitened = ||G C_x^-1/2|| and kfac = ||C_g^-1/2 G C_x^-1/2|| with C^-1/2 from eigh,
    activation_variance = top-4 share of the squared singular values of the centred stacked inputs."""
    model, batches = bert_peft
    grads, weights, inputs, outputs = explicit_statistics(model, batches)
    expected = hand_values(signal, grads, weights, inputs, outputs)
    grn = method(model, signal)
    model.zero_grad()
    for batch in batches:
        model(**batch).loss.backward()
    got = grn._gradient_norms().double()
    assert got.shape == (8,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=0)
    assert all(torch.count_nonzero(t) == 0 for s in grn.signal.stats for t in s.tensors())  # reset for the next step
    grn._remove_hooks()
    assert all(len(layer._forward_hooks) == 0 for layer in grn.layers.values())


def test_update_concentration_is_the_top_singular_share_of_scaled_ba(bert_peft):
    model, _ = bert_peft
    grn = method(model, "update_concentration", top_r=2)
    assert grn._gradient_norms() is None  # it observes nothing
    expected = []
    for layer in grn.layers.values():
        s = torch.linalg.svdvals(layer.scaling["default"] * layer.lora_B["default"].weight.double()
                                 @ layer.lora_A["default"].weight.double())
        expected.append((s[:2] ** 2).sum() / (s**2).sum())
    scores = torch.tensor(list(grn.scores().values()), dtype=torch.float64)
    expected = torch.stack(expected)
    assert ((expected > 0.3) & (expected < 1)).all()
    torch.testing.assert_close(scores, expected / expected.sum(), rtol=1e-9, atol=0)


def test_update_norm_is_the_scaled_update_relative_to_the_weight():
    """On a two-layer model with B, A and W set by hand: ||s B A||_F / ||W||_F per matrix (s = alpha / r = 3), and 0
    at peft's initialisation (B = 0: no update yet)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(Tiny(), LoraConfig(r=2, lora_alpha=6, target_modules=["up", "down"]))
    grn = GradNormRank(model, glora_plan(4, 5, signal="update_norm"))
    assert grn._gradient_norms() is None  # it observes nothing
    assert grn.signal.final_values(grn.ema).tolist() == [0.0, 0.0]
    expected = []
    with torch.no_grad():
        for k, layer in enumerate(grn.layers.values()):
            base, down, up = layer.get_base_layer().weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
            base.copy_(torch.linspace(-1, 2 + k, base.numel()).reshape(base.shape))
            down.copy_(torch.linspace(0.5, -0.3 * (k + 1), down.numel()).reshape(down.shape))
            up.copy_(torch.linspace(-0.2, 0.7, up.numel()).reshape(up.shape) ** (k + 1))
            expected.append(torch.linalg.norm(3.0 * up.double() @ down.double()) / torch.linalg.norm(base.double()))
    expected = torch.stack(expected)
    torch.testing.assert_close(grn.signal.final_values(grn.ema.double()), expected, rtol=1e-12, atol=0)
    assert expected[0] != expected[1]
    scores = torch.tensor(list(grn.scores().values()), dtype=torch.float64)
    torch.testing.assert_close(scores, expected / expected.sum(), rtol=1e-9, atol=0)


def nulls(model, signal, seed):
    grn = method(model, signal, signal_seed=seed)
    model.zero_grad()
    model(**_batch(model)).loss.backward()
    grn.observe_gradients()
    grn._remove_hooks()
    return grn.scores()


def _batch(model):
    batch = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([1])}
    return batch


@pytest.mark.parametrize("signal", ["random", "shuffled"])
def test_nulls_reproduce_per_seed_and_differ_across_seeds(bert_peft, signal):
    model, _ = bert_peft
    first, again, other = nulls(model, signal, 1), nulls(model, signal, 1), nulls(model, signal, 2)
    assert first == again and first != other
    if signal == "shuffled":  # a permutation of lora_b's shares
        base = nulls_base(model)
        assert sorted(first.values()) == pytest.approx(sorted(base.values()), rel=1e-12)
        assert list(first.values()) != pytest.approx(list(base.values()), rel=1e-12)


def nulls_base(model):
    grn = method(model, "lora_b")
    model.zero_grad()
    model(**_batch(model)).loss.backward()
    grn.observe_gradients()
    return grn.scores()


def test_per_sqrt_d_in_divides_lora_b_by_the_input_width(bert_peft):
    model, batches = bert_peft
    raw, corrected = method(model, "lora_b"), method(model, "lora_b", score_norm="per_sqrt_d_in")
    model.zero_grad()
    model(**batches[0]).loss.backward()
    raw.observe_gradients()
    corrected.observe_gradients()
    widths = torch.tensor([layer.in_features for layer in raw.layers.values()], dtype=torch.float64)
    expected = torch.tensor(list(raw.scores().values()), dtype=torch.float64) / widths.sqrt()
    torch.testing.assert_close(torch.tensor(list(corrected.scores().values()), dtype=torch.float64),
                               expected / expected.sum(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("changes, message", [
    (dict(warmup_steps=None), "exactly one of warmup_steps"),
    (dict(calibration_steps=3), "exactly one of warmup_steps"),
    (dict(warmup_steps=None, calibration_steps=3, signal="update_concentration"), "reads the trained update"),
    (dict(warmup_steps=None, calibration_steps=3, signal="update_norm"), "signal update_norm reads the trained update"),
    (dict(signal="update_norm", score_norm="per_entry"), "score_norm must be raw"),
    (dict(signal="random", score_norm="per_entry"), "score_norm must be raw"),
    (dict(signal_damping=0.0), "signal_damping must be > 0"),
])
def test_config_refuses_bad_signal_settings(changes, message):
    warmup = changes.pop("warmup_steps", 5)
    with pytest.raises(ValueError, match=message):
        glora_plan(8, warmup, **changes)


# ---------------------------------------------------------------- calibration


def test_calibration_is_the_mean_of_its_batches_and_allocates_before_training(bert_peft):
    model, batches = bert_peft
    grn = GradNormRank(model, glora_plan(8 * 4, None, calibration_steps=2, signal="lora_b"))
    for module in model.modules():  # calibration runs in training mode: no dropout, so the batches' gradients repeat
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    per_batch = []
    for batch in batches:
        model.zero_grad()
        model(**batch).loss.backward()
        per_batch.append(torch.stack([l.lora_B["default"].weight.grad.norm() for l in grn.layers.values()]).double())
    state = torch.get_rng_state()
    grn.calibrate(iter(batches + batches), lambda batch: model(**batch).loss)
    assert torch.equal(torch.get_rng_state(), state) and not model.training  # both as they were
    torch.testing.assert_close(grn.ema, (per_batch[0] + per_batch[1]) / 2, rtol=1e-6, atol=0)
    assert grn.done and grn.reallocation_step == 0 and sum(grn.final_ranks.values()) == 32
    assert {n: int(l.r["default"]) for n, l in grn.layers.items()} == grn.final_ranks
    assert all(p.grad is None for p in model.parameters())
    grn.maybe_reallocate(1)  # training's steps change nothing now
    assert grn.reallocation_step == 0


def test_calibration_refuses_too_few_batches(bert_peft):
    model, batches = bert_peft
    grn = GradNormRank(model, glora_plan(8 * 4, None, calibration_steps=3))
    with pytest.raises(ValueError, match="calibration_steps 3: the batches gave only 2"):
        grn.calibrate(iter(batches), lambda batch: model(**batch).loss)


def test_uncalibrated_training_step_is_refused(bert_peft):
    model, _ = bert_peft
    grn = GradNormRank(model, glora_plan(8 * 4, None, calibration_steps=2))
    with pytest.raises(RuntimeError, match="call calibrate"):
        grn.maybe_reallocate(1)


def recorded_run(model_dir, data_dir, out, method_flags):
    """A harness run; every training micro-batch's input_ids and the LoRA ranks it ran at, in order."""
    from transformers import Trainer

    seen = []
    original = Trainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        ranks = sorted(int(l.r["default"]) for l in lora_layers(self.model).values())
        seen.append((inputs["input_ids"].tolist(), ranks))
        return original(self, model, inputs, num_items_in_batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "training_step", training_step)
        run_glue_peft.main(trial_args(model_dir, data_dir, "sst2", *method_flags[:1], out, "--max_steps", "4",
                                      "--max_eval_samples", "8", *method_flags[1:]))
    return seen, json.loads((out / "ranks.json").read_text())


def test_calibrated_run_trains_the_same_batches_at_the_allocated_ranks(tiny_bert, tmp_path):
    """--glora_calibration_steps 2: the ranks are allocated before step 1; the run trains the same 4 steps on the
    same batches in the same order as a LoRA run of the same seed (the calibration batches are its first two)."""
    data = write_glue_fixture(tmp_path / "glue", "sst2", n_train=48, n_eval=8)
    lora, _ = recorded_run(tiny_bert, data, tmp_path / "lora", ["lora"])
    glora, ranks = recorded_run(tiny_bert, data, tmp_path / "glora",
                                ["glora", "--glora_calibration_steps", "2", "--glora_signal", "weight_grad"])
    assert [ids for ids, _ in glora] == [ids for ids, _ in lora] and len(lora) == 4
    final = sorted(m["final_rank"] for m in ranks["modules"].values())
    assert all(r == final for _, r in glora) and final != [r for _, r in lora][0]  # allocated before step 1
    assert ranks["glora"]["calibration_steps"] == 2 and ranks["glora"]["reallocation_step"] == 0
    assert ranks["glora"]["method_overhead_signal_seconds"] > 0


@pytest.mark.parametrize("change, message", [
    (["--glora_calibration_steps", "2", "--glora_warmup_steps", "1"], "--glora_calibration_steps and --glora_warmup_steps"),
    (["--glora_calibration_steps", "0"], "--glora_calibration_steps must be >= 1"),
    (["--glora_calibration_steps", "2", "--glora_signal", "update_concentration"], "needs the warm-up"),
    (["--glora_calibration_steps", "2", "--glora_signal", "update_norm"], "update_norm reads the trained update: it "
                                                                          "needs the warm-up"),
    (["--glora_signal", "random", "--glora_score_norm", "per_entry"], "--glora_score_norm must be raw"),
    (["--glora_signal_damping", "0"], "--glora_signal_damping must be > 0"),
    (["--glora_shuffle_base", "random"], "Unknown --glora_shuffle_base"),
])
def test_bad_signal_flags_fail_before_training(tiny_bert, glue_dir, tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        run_glue_peft.main(trial_args(tiny_bert, glue_dir("sst2"), "sst2", "glora", out, "--max_steps", "4", *change))
    assert not out.exists()
