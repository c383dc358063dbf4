"""Tests for GLoRA's gradient signal (gradnorm_rank.GradNormRank.observe_gradients and its signals).

Trainer-level checks run run_glue_peft.main three times for one optimizer step on a tiny dropout-free BERT
(dropout would draw different masks for one batch of 16 and two of 8) and record what the callback computes;
the rest drive the callback directly on small peft models.
"""

import json
import math

import pytest
import torch
from conftest import Tiny, glora_plan, trial_args, write_glue_fixture
from peft import LoraConfig, get_peft_model
from transformers import TrainerState

import gradnorm_rank.core
import run_glue_peft
from gradnorm_rank import GradNormRank, LoopHost
from gradnorm_rank.signals import make_signal
from harness.adapters import lora_layers

RECORDED = ("lora_b", "lora_ab", "delta")  # the signals record_run computes at its one observation

# ---------------------------------------------------------------- recording real Trainer runs


@pytest.fixture(scope="module")
def nodrop_bert(tiny_bert, tmp_path_factory):
    """The tiny BERT fixture with every dropout off, so a step's gradient depends only on its examples."""
    from transformers import AutoConfig, AutoTokenizer, BertModel

    config = AutoConfig.from_pretrained(tiny_bert)
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    config.classifier_dropout = 0.0
    directory = tmp_path_factory.mktemp("nodrop_bert")
    BertModel.from_pretrained(tiny_bert, config=config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(directory)
    return directory


def record_run(model_dir, data_dir, out, *extra):
    """Run one optimizer step of GLoRA (signal `delta`) and record, at the step's observation, the norms every
    signal gives (the callback's own code for each), the EMA after it, and B's gradients just before the
    optimizer step (after clipping)."""
    records = {"norms": [], "ema": [], "observed_steps": [], "post_clip_b": [], "callback": None}
    original_norms = GradNormRank._gradient_norms
    original_observe = GradNormRank.observe_gradients

    def gradient_norms(self):
        norms = {}
        for signal in ("lora_b", "lora_ab"):  # non-destructive; `delta` zeroes its buffers, so it goes last
            other = make_signal(signal, self.peft_model, self.layers, self.adapter_name, self.warmup_ranks, self.config,
                                self.overhead)
            norms[signal] = other.step_values().detach().to(torch.float64)
        result = original_norms(self)
        norms[self.config.signal] = result.detach().to(torch.float64)
        records["norms"].append(norms)
        return result

    def observe_gradients(self, loss_scale=1.0):
        original_observe(self, loss_scale)
        records["callback"] = self
        records["ema"].append(self.ema.clone())
        records["observed_steps"].append(int(self.observed_steps))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = [layer.lora_B[self.adapter_name].weight.grad for layer in self.layers.values()]
        records["post_clip_b"].append(torch.stack([g.float().norm() for g in grads]).to(torch.float64))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GradNormRank, "_gradient_norms", gradient_norms)
        mp.setattr(GradNormRank, "observe_gradients", observe_gradients)
        mp.setattr(GradNormRank, "on_pre_optimizer_step", on_pre_optimizer_step, raising=False)
        results = run_glue_peft.main(trial_args(
            model_dir, data_dir, "sst2", "glora", out, "--max_steps", "1", "--trial_run", "--glora_warmup_steps", "1",
            "--glora_signal", "delta", "--max_eval_samples", "8", *extra,
        ))
    records["results"] = results
    records["ranks"] = json.loads((out / "ranks.json").read_text())
    records["results"] = json.loads((out / "all_results.json").read_text())
    assert len(records["norms"]) == 1, "one optimizer step must give exactly one observation"
    return records


@pytest.fixture(scope="module")
def runs(nodrop_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("glora_runs")
    data = write_glue_fixture(root / "glue", "sst2", n_train=32, n_eval=8)
    return {
        # the reference: one batch of 16, no clipping
        "bs16": record_run(nodrop_bert, data, root / "bs16", "--per_device_train_batch_size", "16",
                           "--gradient_accumulation_steps", "1", "--max_grad_norm", "0"),
        # the same 16 examples as two micro-batches of 8
        "bs8x2": record_run(nodrop_bert, data, root / "bs8x2", "--per_device_train_batch_size", "8",
                            "--gradient_accumulation_steps", "2", "--max_grad_norm", "0"),
        # one batch of 16 with clipping that certainly acts
        "clipped": record_run(nodrop_bert, data, root / "clipped", "--per_device_train_batch_size", "16",
                              "--gradient_accumulation_steps", "1", "--max_grad_norm", "1e-6"),
    }


def test_runs_observe_real_gradients(runs):
    ref = runs["bs16"]
    for signal in RECORDED:
        norms = ref["norms"][0][signal]
        assert norms.shape == (12,) and torch.isfinite(norms).all() and (norms > 0).all(), (signal, norms)
    # At step 1 B == 0, so A has no gradient and lora_ab equals lora_b.
    torch.testing.assert_close(ref["norms"][0]["lora_ab"], ref["norms"][0]["lora_b"], rtol=1e-6, atol=0)
    # EMA after the first step: (1 - beta) * n with beta = 0.9, of the configured signal (delta).
    torch.testing.assert_close(ref["ema"][0], 0.1 * ref["norms"][0]["delta"], rtol=1e-12, atol=0)
    assert ref["observed_steps"] == [1]
    # Unclipped run: the gradient the optimizer gets is the gradient that was observed.
    torch.testing.assert_close(ref["post_clip_b"][0], ref["norms"][0]["lora_b"], rtol=1e-6, atol=0)
    # ranks.json: the shares are the normalised EMA; all_results.json: the budget, which the ranks spend.
    modules = ref["ranks"]["modules"]
    scores = torch.tensor([modules[name]["score"] for name in ref["callback"].names], dtype=torch.float64)
    torch.testing.assert_close(scores, ref["ema"][0] / ref["ema"][0].sum(), rtol=1e-9, atol=0)
    assert sum(m["final_rank"] for m in modules.values()) == ref["results"]["rank_budget"] == 12 * 4


def test_accumulated_step_observes_the_summed_gradient(runs):
    """With accumulation the observation comes after the last micro-batch and sees the gradient the optimizer
    gets (both micro-batches summed), not the last micro-batch alone."""
    acc = runs["bs8x2"]
    assert acc["observed_steps"] == [1]
    torch.testing.assert_close(acc["post_clip_b"][0], acc["norms"][0]["lora_b"], rtol=1e-6, atol=0)


def test_gradient_accumulation_matches_one_double_batch(runs):
    """(a) 2 micro-batches of 8 and one batch of 16 are the same optimizer step: same norms, EMA and scores."""
    ref, acc = runs["bs16"], runs["bs8x2"]
    for signal in RECORDED:
        torch.testing.assert_close(acc["norms"][0][signal], ref["norms"][0][signal], rtol=1e-4, atol=0,
                                   msg=lambda m, s=signal: f"signal {s}: {m}")
    torch.testing.assert_close(acc["ema"][0], ref["ema"][0], rtol=1e-4, atol=0)
    torch.testing.assert_close(acc["results"]["train_loss"], ref["results"]["train_loss"], rtol=1e-4, atol=0)


def test_gradient_accumulation_gives_the_same_shares_and_ranks(runs):
    """The shares s_k = g_k / sum(g) and the ranks do not depend on how the step's batch was split
    (a factor common to every module, such as a wrong loss scale, would cancel in the shares)."""
    ref, acc = runs["bs16"], runs["bs8x2"]
    names = ref["callback"].names
    ref_scores = torch.tensor([ref["ranks"]["modules"][n]["score"] for n in names], dtype=torch.float64)
    acc_scores = torch.tensor([acc["ranks"]["modules"][n]["score"] for n in names], dtype=torch.float64)
    torch.testing.assert_close(acc_scores, ref_scores, rtol=1e-4, atol=0)
    assert {n: m["final_rank"] for n, m in acc["ranks"]["modules"].items()} == {
        n: m["final_rank"] for n, m in ref["ranks"]["modules"].items()
    }


def test_clipping_does_not_change_the_observed_norms(runs):
    """(b) GLoRA reads the norms before clipping: max_grad_norm 1e-6 and 0 (off) record the same first step."""
    ref, clipped = runs["bs16"], runs["clipped"]
    for signal in RECORDED:
        torch.testing.assert_close(clipped["norms"][0][signal], ref["norms"][0][signal], rtol=1e-6, atol=0)
    torch.testing.assert_close(clipped["ema"][0], ref["ema"][0], rtol=1e-6, atol=0)
    # ... while clipping really acted on the gradients the optimizer got: total norm 1e-6, far below the observed.
    post = clipped["post_clip_b"][0]
    assert post.norm().item() <= 1.01e-6
    assert (clipped["norms"][0]["lora_b"] > 1e3 * post).all()


def test_delta_hooks_are_gone_after_the_real_runs_reallocation(runs):
    callback = runs["bs16"]["callback"]
    assert callback.done and callback.reallocation_step == 1
    for name, layer in callback.layers.items():
        assert len(layer._forward_hooks) == 0, name
        assert len(layer._forward_pre_hooks) == 0 and len(layer._backward_hooks) == 0, name


# ---------------------------------------------------------------- the callback on its own


def tiny_glora(signal="lora_b", warmup=3, beta=0.9):
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))
    with torch.no_grad():  # non-zero B, so A gets a gradient too
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
    return model, GradNormRank(model, glora_plan(8, warmup, beta=beta, signal=signal))


def backward(model, seed, nan=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 6, generator=gen)
    if nan:
        x[0, 0] = float("nan")
    model.zero_grad()
    model(x).pow(2).mean().backward()


def b_grad_norms(callback):
    return torch.stack([l.lora_B["default"].weight.grad.norm() for l in callback.layers.values()]).double()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_step_leaves_the_ema_unchanged(bad):
    """(c) A step with a NaN/inf gradient norm changes neither the EMA nor the count of observed steps."""
    model, callback = tiny_glora()
    backward(model, seed=1)
    n1 = b_grad_norms(callback)
    callback.observe_gradients()
    ema1 = callback.ema.clone()
    torch.testing.assert_close(ema1, 0.1 * n1, rtol=1e-6, atol=0)

    backward(model, seed=2)
    callback.layers["down"].lora_B["default"].weight.grad[0, 0] = bad  # one module only: the whole step is skipped
    callback.observe_gradients()
    assert torch.equal(callback.ema, ema1)
    assert int(callback.observed_steps) == 1

    backward(model, seed=3)
    n3 = b_grad_norms(callback)
    callback.observe_gradients()
    torch.testing.assert_close(callback.ema, 0.9 * ema1 + 0.1 * n3, rtol=1e-6, atol=0)
    assert int(callback.observed_steps) == 2


def test_non_finite_step_with_delta_signal_does_not_poison_later_steps():
    model, callback = tiny_glora(signal="delta")
    backward(model, seed=1, nan=True)  # NaN input: NaN in every delta buffer
    callback.observe_gradients()
    assert torch.equal(callback.ema, torch.zeros_like(callback.ema)) and int(callback.observed_steps) == 0
    assert all(torch.count_nonzero(s.G) == 0 for s in callback.signal.stats)  # buffers reset for the next step

    for layer in callback.layers.values():
        layer.get_base_layer().weight.requires_grad_(True)
    backward(model, seed=2)
    expected = torch.stack([l.get_base_layer().weight.grad.norm() for l in callback.layers.values()]).double()
    callback.observe_gradients()
    torch.testing.assert_close(callback.ema, 0.1 * expected, rtol=1e-5, atol=0)
    assert int(callback.observed_steps) == 1


def test_loss_scale_is_divided_out():
    model, callback = tiny_glora()
    backward(model, seed=1)
    n = b_grad_norms(callback)
    callback.observe_gradients(loss_scale=1024.0)
    torch.testing.assert_close(callback.ema, 0.1 * n / 1024.0, rtol=1e-6, atol=0)


def test_delta_signal_is_the_frobenius_norm_of_dL_dW(bert_peft):
    """(d) `delta` = ||dL/dW||_F of the adapted base matrix, summed over micro-batches, reset after each step."""
    model, batches = bert_peft
    callback = GradNormRank(model, glora_plan(8 * 4, 5, signal="delta"))
    for layer in callback.layers.values():
        layer.get_base_layer().weight.requires_grad_(True)
    model.zero_grad()
    for batch in batches:  # two micro-batches accumulate, as under gradient accumulation
        model(**batch).loss.backward()
    expected = torch.stack([l.get_base_layer().weight.grad.float().norm() for l in callback.layers.values()])
    assert expected.shape == (8,) and (expected > 0).all()
    torch.testing.assert_close(callback._gradient_norms(), expected, rtol=1e-5, atol=0)

    # The next step sees only its own micro-batch: the buffers were reset.
    model.zero_grad()
    model(**batches[1]).loss.backward()
    expected = torch.stack([l.get_base_layer().weight.grad.float().norm() for l in callback.layers.values()])
    callback.observe_gradients()
    torch.testing.assert_close(callback.ema, 0.1 * expected.double(), rtol=1e-5, atol=0)
    callback._remove_hooks()


def test_lora_ab_and_lora_b_signals(bert_peft):
    """(d) `lora_ab` = sqrt(||grad A||^2 + ||grad B||^2) and `lora_b` = ||grad B||, per adapted matrix."""
    model, batches = bert_peft
    model.zero_grad()
    model(**batches[0]).loss.backward()
    layers = list(lora_layers(model).values())
    a = torch.stack([l.lora_A["default"].weight.grad.norm() for l in layers])
    b = torch.stack([l.lora_B["default"].weight.grad.norm() for l in layers])
    assert (a > 0).all() and (b > 0).all()
    ab = GradNormRank(model, glora_plan(64, 5, signal="lora_ab"))
    only_b = GradNormRank(model, glora_plan(64, 5, signal="lora_b"))
    torch.testing.assert_close(ab._gradient_norms(), torch.sqrt(a**2 + b**2), rtol=1e-6, atol=0)
    torch.testing.assert_close(only_b._gradient_norms(), b, rtol=1e-6, atol=0)
    # One layer by hand, in Python floats.
    assert math.isclose(float(ab._gradient_norms()[0]), math.hypot(float(a[0]), float(b[0])), rel_tol=1e-6)


def test_delta_hooks_removed_after_reallocation():
    """(e) After the reallocation no forward hook is left on any LoRA layer and the signal stops."""
    model, callback = tiny_glora(signal="delta", warmup=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    callback.attach(LoopHost(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                             make_optimizer=lambda: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]),
                             make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)))
    assert all(len(layer._forward_hooks) == 1 for layer in callback.layers.values())
    backward(model, seed=1)
    callback.observe_gradients()
    state = TrainerState()
    state.global_step = 1  # before the end of the warm-up: nothing happens
    callback.on_step_end(None, state, None)
    assert not callback.done and all(len(layer._forward_hooks) == 1 for layer in callback.layers.values())

    state.global_step = 2
    callback.on_step_end(None, state, None)
    assert callback.done and callback.reallocation_step == 2
    assert sum(callback.final_ranks.values()) == 8
    assert all(len(layer._forward_hooks) == 0 for layer in callback.layers.values())
    ema = callback.ema.clone()
    backward(model, seed=2)  # training goes on without the hooks, and the EMA is frozen
    callback.observe_gradients()
    assert torch.equal(callback.ema, ema)


def test_gradnorm_rank_class_is_the_one_run_glue_peft_uses():
    # The recording patches above act on this class; guard against the script importing another copy.
    assert run_glue_peft.GradNormRank is gradnorm_rank.core.GradNormRank
