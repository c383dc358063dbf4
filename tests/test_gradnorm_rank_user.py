"""gradnorm_rank as a user meets it beyond the snippets: no silent no-op (a warm-up the run cannot reach, a run that
never reallocated), the rank cap, the Trainer's log, the allocation record saved with the adapter, the callback form
with a Trainer (with SFTTrainer: test_gradnorm_rank's callback snippet) and the norms it sees, a non-LoRA tuner refused, and DDP's rewrap without a deprecation warning."""

import json
import logging
import statistics
import warnings

import pytest
import torch
from conftest import Tiny
from datasets import Dataset
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from test_gradnorm_rank import RANK, STEPS, WARMUP, check_reallocated_and_carried, token_rows
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from gradnorm_rank import (
    RECORD_FILE,
    GradNormRank,
    GradNormRankCallback,
    GradNormRankConfig,
    GradNormRankTrainer,
    LoopHost,
    lora_layers,
)

PREFIX = "gradnorm_rank/"


def tiny_bert_base(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=64, num_labels=2))


def tiny_bert_classifier():
    """A tiny random BERT classifier with LoRA rank RANK on query, key, value and every dense (the pooler's too)."""
    return get_peft_model(tiny_bert_base(), LoraConfig(task_type="SEQ_CLS", r=RANK,
                                                       target_modules=["query", "key", "value", "dense"]))


def classification_rows(n=32):
    ids = token_rows(n)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": (ids[:, 0] % 2).tolist()})


def training_args(tmp_path, steps=STEPS, **changes):
    return TrainingArguments(**{"output_dir": str(tmp_path), "max_steps": steps, "per_device_train_batch_size": 4,
                                "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
                                "use_cpu": True, "dataloader_num_workers": 0, **changes})


def loop_host(model, total_steps=None):
    def make_optimizer():
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    optimizer = make_optimizer()
    return LoopHost(optimizer, make_scheduler(optimizer), make_optimizer, make_scheduler, total_steps=total_steps)


def train_loop(model, method, host, steps):
    x, y = torch.randn(16, 6), torch.randn(16, 5)
    for step in range(1, steps + 1):
        ((model(x) - y) ** 2).mean().backward()
        method.observe_gradients()
        host.optimizer.step()
        method.after_optimizer_step()
        host.lr_scheduler.step()
        host.optimizer.zero_grad()
        method.maybe_reallocate(step)
    method.finish(steps)


# ---- no silent no-op ----


@pytest.mark.parametrize("form", ["mixin", "callback"])
def test_a_warm_up_the_trainer_run_cannot_reach_fails_before_the_first_step(tmp_path, form):
    """GradNormRankConfig(warmup_steps=50) on a 4-step run: one line once the Trainer knows its length, no step."""
    model = tiny_bert_classifier()
    config = GradNormRankConfig(warmup_steps=50)
    if form == "mixin":
        trainer = GradNormRankTrainer(model=model, args=training_args(tmp_path, steps=4),
                                      train_dataset=classification_rows(), gradnorm_rank=config)
    else:
        trainer = Trainer(model=model, args=training_args(tmp_path, steps=4), train_dataset=classification_rows())
        GradNormRankCallback(trainer, config)
    with pytest.raises(ValueError) as error:
        trainer.train()
    assert str(error.value) == ("GradNormRankConfig.warmup_steps 50 is never reached in a run of 4 optimizer steps: the "
                                "ranks would never move. Give a warm-up of 1 to 3 steps, or a warmup_fraction.")
    assert trainer.state.global_step == 0


def test_warmup_fraction_resolves_against_the_run_and_is_recorded(tmp_path, caplog):
    """warmup_fraction 0.5 of an 8-step Trainer run reallocates at step 4 and records both; a LoopHost needs the
    loop's length for it; a fraction that rounds to no step, or a warm-up past the run, is refused; one that ends
    with the run's last step is warned about."""
    trainer = GradNormRankTrainer(model=tiny_bert_classifier(), args=training_args(tmp_path),
                                  train_dataset=classification_rows(),
                                  gradnorm_rank=GradNormRankConfig(warmup_fraction=0.5))
    trainer.train()
    summary = trainer.gradnorm_rank.summary()
    assert (summary["warmup_steps"], summary["warmup_fraction"], summary["reallocation_step"]) == (4, 0.5, 4)
    model = get_peft_model(Tiny(), LoraConfig(r=4, target_modules=["up", "down"]))
    with pytest.raises(ValueError, match=r"^GradNormRankConfig.warmup_fraction needs the run's length: give the LoopHost"):
        GradNormRank(model, GradNormRankConfig(warmup_fraction=0.5)).attach(loop_host(model))
    with pytest.raises(ValueError, match=r"^GradNormRankConfig.warmup_fraction 0.01 \(0 steps\) is never reached in "):
        GradNormRank(model, GradNormRankConfig(warmup_fraction=0.01)).attach(loop_host(model, total_steps=8))
    with pytest.raises(ValueError, match=r"^GradNormRankConfig.warmup_steps 9 is never reached in a run of 8 "):
        GradNormRank(model, GradNormRankConfig(warmup_steps=9)).attach(loop_host(model, total_steps=8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gradnorm_rank"):
        GradNormRank(model, GradNormRankConfig(warmup_steps=8)).attach(loop_host(model, total_steps=8))
    assert caplog.messages == ["GradNormRankConfig.warmup_steps 8 ends with the run's last optimizer step: the ranks "
                               "move after it, and the new ranks are never trained."]


def test_a_run_that_ends_before_its_warm_up_says_so_logs_it_and_records_it(tmp_path, caplog):
    """A Trainer run stopped early (here by a callback at step 2, as EarlyStoppingCallback would) before a warm-up of
    4: a warning, gradnorm_rank/reallocated 0 in the Trainer's log, reallocated False in the summary; a loop of unknown
    length the same through finish()."""

    class StopAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    trainer = GradNormRankTrainer(model=tiny_bert_classifier(), args=training_args(tmp_path),
                                  train_dataset=classification_rows(), callbacks=[StopAtTwo()],
                                  gradnorm_rank=GradNormRankConfig(warmup_steps=WARMUP))
    with caplog.at_level(logging.WARNING, logger="gradnorm_rank"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert [e[PREFIX + "reallocated"] for e in trainer.state.log_history if PREFIX + "reallocated" in e] == [0]
    assert trainer.gradnorm_rank.summary()["reallocated"] is False
    assert ("gradnorm_rank did not reallocate: the run ended at step 2, before the warm-up of 4 steps was over; the "
            "adapter trained as plain LoRA with its starting ranks.") in caplog.messages

    caplog.clear()
    model = get_peft_model(Tiny(), LoraConfig(r=4, target_modules=["up", "down"]))
    method = GradNormRank(model, GradNormRankConfig(warmup_steps=10))
    method.attach(host := loop_host(model))  # no total_steps: the length is not known before the end
    with caplog.at_level(logging.WARNING, logger="gradnorm_rank"):
        train_loop(model, method, host, steps=3)
    assert method.summary()["reallocated"] is False and method.final_ranks is None
    assert [r.name for r in caplog.records] == ["gradnorm_rank"] and "did not reallocate" in caplog.messages[0]


# ---- the cap ----


def test_the_default_cap_is_four_times_the_average_rank_and_none_lifts_it(caplog):
    """One matrix with nearly all the signal: under the default max_rank '4x' it gets 4 x RANK (recorded as rank_cap),
    the rest share what is left, and warn_share's warning names it; max_rank=None gives it all it can take."""
    scores = None
    finals = {}
    for max_rank in ("4x", None):
        model = tiny_bert_classifier()
        method = GradNormRank(model, GradNormRankConfig(warmup_steps=1, max_rank=max_rank))
        method.attach(loop_host(model))
        scores = torch.ones(len(method.names), dtype=torch.float64)
        scores[method.names.index("bert.pooler.dense")] = 1e6
        method.ema = scores
        with caplog.at_level(logging.WARNING, logger="gradnorm_rank"):
            method.reallocate(1)
        finals[max_rank] = (method.final_ranks, method.summary()["rank_cap"])
    n, budget = len(method.names), RANK * len(method.names)
    capped, cap = finals["4x"]
    assert cap == 4 * RANK and capped["bert.pooler.dense"] == 4 * RANK and sum(capped.values()) == budget
    uncapped, no_cap = finals[None]
    assert no_cap is None and uncapped["bert.pooler.dense"] == min(32, budget - (n - 1))  # d = 32, others at rank 1
    share = 4 * RANK / budget
    assert (f"gradnorm_rank gave bert.pooler.dense {share:.0%} of the rank budget (rank 16), more than warn_share "
            "0.25; a lower max_rank (now '4x': 16) caps it.") in caplog.messages


# ---- visible and saved ----


def test_the_trainer_log_gets_the_settings_the_reallocation_and_the_outcome(tmp_path):
    """state.log_history (what every report_to integration is fed): the settings at step 0, the reallocation at the
    warm-up step with the ranks' min / median / max / total as they are, the outcome and overhead at the end; and the
    Trainer's own loss is still logged at every step."""
    trainer = GradNormRankTrainer(model=tiny_bert_classifier(), args=training_args(tmp_path),
                                  train_dataset=classification_rows(),
                                  gradnorm_rank=GradNormRankConfig(warmup_steps=WARMUP))
    trainer.train()
    method, history = trainer.gradnorm_rank, trainer.state.log_history
    ours = [e for e in history if any(key.startswith(PREFIX) for key in e)]
    assert [e["step"] for e in ours] == [0, WARMUP, STEPS]
    settings, realloc, end = ours
    assert settings[PREFIX + "warmup_steps"] == WARMUP and settings[PREFIX + "rank_cap"] == 4 * RANK
    assert settings[PREFIX + "rank_budget"] == RANK * len(method.names)
    ranks = sorted(method.final_ranks.values())
    assert (realloc[PREFIX + "reallocation_step"], realloc[PREFIX + "rank_min"], realloc[PREFIX + "rank_median"],
            realloc[PREFIX + "rank_max"], realloc[PREFIX + "rank_total"]) == (
        WARMUP, ranks[0], statistics.median(ranks), ranks[-1], sum(ranks))
    assert end[PREFIX + "reallocated"] == 1
    assert end[PREFIX + "method_overhead_seconds"] == method.overhead.seconds > 0
    assert len([e for e in history if "loss" in e]) == STEPS


def test_the_settings_reach_a_trackers_config(tmp_path, monkeypatch):
    """report_to wandb (offline): the run's config holds the method's resolved settings. Its files go to tmp_path, and
    wandb's process-wide settings are torn down after it (they keep the first run's folder: a later test's WANDB_DIR
    was otherwise ignored)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    trainer = GradNormRankTrainer(model=tiny_bert_classifier(), args=training_args(tmp_path, report_to="wandb"),
                                  train_dataset=classification_rows(),
                                  gradnorm_rank=GradNormRankConfig(warmup_steps=WARMUP))
    import wandb

    try:
        trainer.train()
        recorded = dict(wandb.run.config["gradnorm_rank"])
    finally:
        wandb.finish()
        wandb.teardown()
    assert recorded == json.loads(json.dumps(trainer.gradnorm_rank.settings()))


def test_mlflow_and_tensorboard_callbacks_get_the_settings_through_their_own_clients():
    """Neither is installed here: stand-ins with transformers' class names and the attributes the integrations keep
    (MLflowCallback._ml_flow once _initialized, TensorBoardCallback.tb_writer) receive log_params / add_text; a tracker
    not yet set up receives nothing."""
    from types import SimpleNamespace

    from gradnorm_rank import TrainerHost

    calls = []
    mlflow = SimpleNamespace(log_params=lambda params: calls.append(("mlflow", params)))
    writer = SimpleNamespace(add_text=lambda tag, text: calls.append(("tensorboard", tag, json.loads(text))))
    trackers = [type("MLflowCallback", (), {"_initialized": True, "_ml_flow": mlflow})(),
                type("TensorBoardCallback", (), {"tb_writer": writer})(),
                type("TensorBoardCallback", (), {"tb_writer": None})(),
                type("MLflowCallback", (), {"_initialized": False, "_ml_flow": mlflow})()]
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=trackers))
    TrainerHost(trainer).record_settings({"warmup_steps": 4, "max_rank": "4x"})
    assert calls == [("mlflow", {"gradnorm_rank.warmup_steps": 4, "gradnorm_rank.max_rank": "4x"}),
                     ("tensorboard", "gradnorm_rank", {"warmup_steps": 4, "max_rank": "4x"})]


def test_the_saved_adapter_holds_its_allocation_record_and_reloads_with_plain_peft(tmp_path):
    """trainer.save_model() writes gradnorm_rank.json beside adapter_config.json (settings, step, per-module score,
    starting and final rank, as the method has them); PeftModel.from_pretrained reloads the folder with those ranks
    and identical logits."""
    model = tiny_bert_classifier()
    trainer = GradNormRankTrainer(model=model, args=training_args(tmp_path), train_dataset=classification_rows(),
                                  gradnorm_rank=GradNormRankConfig(warmup_steps=WARMUP))
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    method = trainer.gradnorm_rank
    record = json.loads((tmp_path / "adapter" / RECORD_FILE).read_text())
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert record["reallocation_step"] == WARMUP and record["settings"] == json.loads(json.dumps(method.settings()))
    assert {name: m["rank"] for name, m in record["modules"].items()} == method.final_ranks
    assert {name: m["score"] for name, m in record["modules"].items()} == pytest.approx(method.scores())
    assert {m["initial_rank"] for m in record["modules"].values()} == {RANK}

    ids = token_rows(3, seed=2)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    # the same base weights, fresh: the reload must bring back the adapter's ranks and trained weights
    reloaded = PeftModel.from_pretrained(tiny_bert_base(), str(tmp_path / "adapter")).eval()
    assert {name: int(layer.r["default"]) for name, layer in lora_layers(reloaded).items()} == method.final_ranks
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained, rtol=0, atol=1e-6)


# ---- the callback form ----


def test_callback_form_with_a_plain_trainer_reallocates_and_carries_the_optimizer(tmp_path):
    trainer = Trainer(model=tiny_bert_classifier(), args=training_args(tmp_path), train_dataset=classification_rows())
    callback = GradNormRankCallback(trainer, GradNormRankConfig(warmup_steps=WARMUP))
    trainer.train()
    check_reallocated_and_carried(callback, trainer.model, trainer.optimizer, STEPS)
    assert len([e for e in trainer.state.log_history if "loss" in e]) == STEPS


def test_callback_measures_clipped_norms_the_mixin_unclipped(tmp_path):
    """Same seed, one warm-up step: the mixin's EMA is (1 - beta) x the unclipped norms; the callback's is that
    times the Trainer's clipping factor max_grad_norm / (grad_norm + 1e-6), grad_norm the pre-clip total the
    Trainer logs. Without clipping (max_grad_norm 0) the two forms observe the same norms."""
    def first_step_ema(form, max_grad_norm):
        args = training_args(tmp_path / f"{form}{max_grad_norm}", steps=3, max_grad_norm=max_grad_norm,
                             learning_rate=0.0)
        config = GradNormRankConfig(warmup_steps=2)
        if form == "mixin":
            trainer = GradNormRankTrainer(model=tiny_bert_classifier(), args=args, train_dataset=classification_rows(),
                                          gradnorm_rank=config)
            method = trainer.gradnorm_rank
        else:
            trainer = Trainer(model=tiny_bert_classifier(), args=args, train_dataset=classification_rows())
            method = GradNormRankCallback(trainer, config)
        seen = []

        class AfterFirstStep(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    seen.append(method.ema.clone())

        trainer.add_callback(AfterFirstStep())
        trainer.train()
        grad_norm = next(e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e)
        return seen[0], grad_norm

    max_norm = 1e-3
    unclipped, grad_norm = first_step_ema("mixin", max_norm)
    clipped, same_grad_norm = first_step_ema("callback", max_norm)
    assert grad_norm == pytest.approx(same_grad_norm) and grad_norm > 10 * max_norm  # the step was clipped
    torch.testing.assert_close(clipped, unclipped * max_norm / (grad_norm + 1e-6), rtol=1e-4, atol=0)
    torch.testing.assert_close(first_step_ema("callback", 0.0)[0], first_step_ema("mixin", 0.0)[0], rtol=1e-6, atol=0)


# ---- a tuner that is not LoRA ----


def test_an_adalora_model_is_refused_in_one_line(tmp_path):
    """GradNormRank, the mixin and the callback all refuse it before training, naming the tuner and the way out."""
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), AdaLoraConfig(init_r=6, target_r=4, target_modules=["up", "down"], total_step=10))
    message = ("GradNormRank resizes LoRA adapters only; adapter 'default' is ADALORA (AdaLoraConfig): build it with a "
               "peft LoraConfig.")
    with pytest.raises(ValueError) as direct:
        GradNormRank(model, GradNormRankConfig(warmup_steps=2))
    with pytest.raises(ValueError) as mixin:
        GradNormRankTrainer(model=model, args=training_args(tmp_path), gradnorm_rank=GradNormRankConfig(warmup_steps=2))
    with pytest.raises(ValueError) as callback:
        GradNormRankCallback(Trainer(model=model, args=training_args(tmp_path)), GradNormRankConfig(warmup_steps=2))
    assert str(direct.value) == str(mixin.value) == str(callback.value) == message


# ---- DDP ----


def test_ddp_rewrap_keeps_the_buffer_sync_setting_without_a_deprecation_warning(tmp_path):
    """rewrap_ddp over a one-process gloo group: no FutureWarning, and the old wrapper's buffer sync setting kept."""
    import torch.distributed as dist

    from gradnorm_rank.core import rewrap_ddp

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        module = Tiny()
        old = torch.nn.parallel.DistributedDataParallel(module, forward_sync_buffers=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            new = rewrap_ddp(old, module)
        assert new.forward_sync_buffers is False and new.module is module
    finally:
        dist.destroy_process_group()
