"""The gradnorm_rank package as a user meets it: docs/library.md's snippets run exactly as written there (any Trainer,
TRL's SFTTrainer, the callback form, a plain PyTorch loop, saving / reloading / merging the resized adapter) on tiny
random models, README.md's one snippet is docs/library.md's, its config's checks, and an install outside the
repository that imports without the harness."""

import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Tiny, minilm_path
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model

import gradnorm_rank
from gradnorm_rank import GradNormRankConfig, GradNormRankMixin, lora_layers
from harness import arguments

SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```python\n(.*?)```", re.S)
WARMUP, STEPS, RANK = 4, 8, 4  # the snippets reallocate after optimizer step 4; every adapter starts at rank 4
LIBRARY_DOC = ROOT / "docs" / "library.md"


def run_snippet(name, **context) -> dict:
    """Execute docs/library.md's snippet `name` in a namespace holding `context` (what the page says the user has)."""
    snippets = dict(SNIPPET.findall(LIBRARY_DOC.read_text()))
    namespace = dict(context)
    exec(compile(snippets[name], f"docs/library.md snippet {name}", "exec"), namespace)
    return namespace


def tiny_llama(vocab=128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0))


def token_rows(n, length=16, vocab=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=generator)


def check_reallocated_and_carried(method, peft_model, optimizer, steps):
    """The ranks moved once, at WARMUP, within the adapter's total rank; the layers have them; the optimizer is over
    the resized parameters and its AdamW state went on counting from before the reallocation (a fresh optimizer would
    count steps - WARMUP)."""
    layers = lora_layers(peft_model)
    assert method.reallocation_step == WARMUP and method.done
    assert sum(method.final_ranks.values()) == RANK * len(layers)
    assert len(set(method.final_ranks.values())) > 1  # rank moved between matrices
    assert {name: int(layer.r["default"]) for name, layer in layers.items()} == method.final_ranks
    state = getattr(optimizer, "optimizer", optimizer).state
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert len(state) == len(trainable) and all(p in state for p in trainable)
    for p in trainable:
        assert state[p]["exp_avg"].shape == p.shape and float(state[p]["step"]) == steps


def test_the_library_page_holds_the_five_snippets_and_the_readme_shows_its_trainer_snippet():
    snippets = SNIPPET.findall(LIBRARY_DOC.read_text())
    assert sorted(name for name, _ in snippets) == ["callback", "loop", "save", "trainer", "trl"]
    assert SNIPPET.findall((ROOT / "README.md").read_text()) == [("trainer", dict(snippets)["trainer"])]


def test_trainer_snippet_reallocates_and_keeps_training(tmp_path):
    """The Trainer snippet on a tiny BERT classifier."""
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, max_position_embeddings=64, num_labels=2))
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=RANK, target_modules=["query", "key", "value", "dense"]))
    ids = token_rows(32)
    train_dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                       "labels": (ids[:, 0] % 2).tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             dataloader_num_workers=0)
    trainer = run_snippet("trainer", model=model, args=args, train_dataset=train_dataset)["trainer"]
    check_reallocated_and_carried(trainer.gradnorm_rank, model, trainer.optimizer, STEPS)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == STEPS and len(losses) == STEPS and all(map(math.isfinite, losses))


def test_trl_sft_trainer_snippet_reallocates_carries_the_optimizer_and_keeps_training(tmp_path):
    """The TRL snippet: SFTTrainer adds the LoRA adapter to a tiny random Llama, the mixin reallocates."""
    trainer = run_snippet("trl", model=tiny_llama(), **sft_context(tmp_path))["trainer"]
    assert isinstance(trainer.model, PeftModel) and len(lora_layers(trainer.model)) == 14  # 7 matrices x 2 layers
    check_reallocated_and_carried(trainer.gradnorm_rank, trainer.model, trainer.optimizer, STEPS)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == STEPS and len(losses) == STEPS and all(map(math.isfinite, losses))


def test_callback_snippet_on_an_sft_trainer_it_did_not_subclass(tmp_path):
    """The callback snippet: GradNormRankCallback on the SFTTrainer as built, which reallocates and carries the
    optimizer over as the mixin does."""
    namespace = run_snippet("callback", model=tiny_llama(), **sft_context(tmp_path))
    trainer, callback = namespace["trainer"], namespace["callback"]
    assert type(trainer).__name__ == "SFTTrainer" and callback in trainer.callback_handler.callbacks
    check_reallocated_and_carried(callback, trainer.model, trainer.optimizer, STEPS)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert trainer.state.global_step == STEPS and len(losses) == STEPS and all(map(math.isfinite, losses))


def sft_context(tmp_path) -> dict:
    """What the TRL snippets say the user has: `args` (an SFTConfig), `dataset` and `tokenizer`."""
    from transformers import AutoTokenizer
    from trl import SFTConfig

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # only pads here: the data is already token ids
    tokenizer.eos_token = tokenizer.sep_token
    args = SFTConfig(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, max_length=32,
                     dataloader_num_workers=0)
    return {"args": args, "dataset": Dataset.from_dict({"input_ids": token_rows(32).tolist()}), "tokenizer": tokenizer}


def test_plain_loop_snippet_then_the_adapter_saves_reloads_and_merges(tmp_path, monkeypatch):
    """The plain-loop snippet on a tiny random Llama, then the save snippet: the reloaded adapter has the same ranks
    and the same logits as the trained model, merge_and_unload gives those logits too (fp32 noise), and the folder
    holds the allocation record with those ranks."""
    base_model_path = tmp_path / "base"
    tiny_llama().save_pretrained(base_model_path)
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_path),
                           LoraConfig(r=RANK, target_modules="all-linear"))
    ids = token_rows(4 * STEPS, seed=1)
    batches = [{"input_ids": chunk, "labels": chunk} for chunk in ids.split(4)]
    loop = run_snippet("loop", model=model, batches=batches)
    check_reallocated_and_carried(loop["method"], model, loop["host"].optimizer, STEPS)
    with torch.no_grad():
        assert math.isfinite(float(model(**batches[-1]).loss))  # training went on after the reallocation

    probe = token_rows(3, seed=2)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=probe).logits
        without_adapter = AutoModelForCausalLM.from_pretrained(base_model_path)(input_ids=probe).logits
    assert (trained - without_adapter).abs().max() > 1e-3  # the adapter changes the outputs: the checks below bite
    seen = {}
    from_pretrained = PeftModel.from_pretrained

    def spy(*args, **kwargs):  # the reloaded adapter as from_pretrained returns it, before the snippet merges it
        reloaded = from_pretrained(*args, **kwargs)
        reloaded.eval()
        seen["ranks"] = {name: int(layer.r["default"]) for name, layer in lora_layers(reloaded).items()}
        with torch.no_grad():
            seen["logits"] = reloaded(input_ids=probe).logits
        return reloaded

    monkeypatch.setattr(PeftModel, "from_pretrained", spy)
    monkeypatch.chdir(tmp_path)
    merged = run_snippet("save", model=model, base_model_path=base_model_path)["merged"]
    assert seen["ranks"] == loop["method"].final_ranks
    torch.testing.assert_close(seen["logits"], trained, rtol=0, atol=1e-6)
    assert not isinstance(merged, PeftModel) and not lora_layers(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=probe).logits, trained, rtol=1e-5, atol=1e-5)
    saved = json.loads((tmp_path / "my_adapter" / "adapter_config.json").read_text())
    assert len(saved["rank_pattern"]) == len(seen["ranks"])
    record = json.loads((tmp_path / "my_adapter" / gradnorm_rank.RECORD_FILE).read_text())
    assert {name: m["rank"] for name, m in record["modules"].items()} == seen["ranks"]
    assert record["reallocated"] is True and record["reallocation_step"] == WARMUP


def test_overhead_is_measured_where_each_part_runs_and_its_parts_sum_to_the_total(monkeypatch):
    """A clock that advances 1 s per reading: each timed region adds exactly 1 s to its own part. Two warm-up steps
    observe the signal (2 s), the reallocation resizes (1 s), the two steps after it correct the grown slices (2 s);
    no part grows outside its phase. The record's total is the sum of its parts, the summary carries them with the
    settings and the reallocation step, and a checkpoint's state keeps them (one written before the split loads its
    hook_seconds as signal)."""
    from types import SimpleNamespace

    from gradnorm_rank import GradNormRank, LoopHost, MethodOverhead

    clock = iter(range(10**6))
    monkeypatch.setattr(gradnorm_rank.core, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    torch.manual_seed(0)
    model = get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"]))

    def make_optimizer():
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    optimizer = make_optimizer()
    method = GradNormRank(model, GradNormRankConfig(warmup_steps=2))
    method.attach(host := LoopHost(optimizer, make_scheduler(optimizer), make_optimizer, make_scheduler))
    x, y = torch.randn(16, 6), torch.randn(16, 5)
    seen = []
    for step in range(1, 5):
        ((model(x) - y) ** 2).mean().backward()
        method.observe_gradients()
        host.optimizer.step()
        method.after_optimizer_step()
        host.lr_scheduler.step()
        host.optimizer.zero_grad()
        method.maybe_reallocate(step)
        o = method.overhead
        seen.append((o.signal_seconds, o.resize_seconds, o.grown_slice_seconds))
    assert method.final_ranks == {"up": 5, "down": 3}  # a slice grew: its bias correction runs after the resize
    assert seen == [(1, 0, 0), (2, 1, 0), (2, 1, 1), (2, 1, 2)]
    record = method.overhead.record()
    assert record == {"method_overhead_seconds": 5.0, "method_overhead_signal_seconds": 2.0,
                      "method_overhead_resize_seconds": 1.0, "method_overhead_grown_slice_seconds": 2.0}
    assert record["method_overhead_seconds"] == sum(v for k, v in record.items() if k != "method_overhead_seconds")
    assert method.summary() == {"signal": "lora_b", "score_norm": "raw", "beta": 0.9, "warmup_steps": 2,
                                "warmup_fraction": None, "calibration_steps": None, "signal_seed": 0,
                                "shuffle_base": "lora_b", "signal_damping": 1e-3, "top_r": None, "max_rank": "4x",
                                "rank_cap": 16, "warn_share": 0.25, "reallocated": True, "reallocation_step": 2,
                                **record}  # what the harness writes as ranks.json's glora block
    state = method.state_dict()
    assert MethodOverhead.from_record(state) == method.overhead
    old = {k: v for k, v in state.items() if not k.startswith("method_overhead")} | {"hook_seconds": 3.0,
                                                                                    "resize_seconds": 1.0}
    fresh = GradNormRank(get_peft_model(Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"])),
                         GradNormRankConfig(warmup_steps=2))
    fresh.load_state_dict(old)
    assert fresh.overhead == MethodOverhead(signal_seconds=3.0, resize_seconds=1.0, grown_slice_seconds=0.0)


@pytest.mark.parametrize("changes, message", [
    ({"warmup_steps": 0}, "GradNormRankConfig.warmup_steps must be an integer >= 1 or None; got 0."),
    ({"warmup_steps": None}, "GradNormRankConfig needs exactly one of warmup_steps, warmup_fraction (in training) "
                             "and calibration_steps (before training); got warmup_steps=None, warmup_fraction=None, "
                             "calibration_steps=None."),
    ({"warmup_fraction": 0.5}, "GradNormRankConfig needs exactly one of warmup_steps, warmup_fraction (in training) "
                               "and calibration_steps (before training); got warmup_steps=10, warmup_fraction=0.5, "
                               "calibration_steps=None."),
    ({"warmup_steps": None, "warmup_fraction": 1.0}, "GradNormRankConfig.warmup_fraction must be in (0, 1) or None; "
                                                     "got 1.0."),
    ({"warn_share": 1.5}, "GradNormRankConfig.warn_share must be in (0, 1] or None; got 1.5."),
    ({"max_rank": "4"}, "GradNormRankConfig.max_rank as a multiple must be 'Kx' with K >= 1 (e.g. '4x'); got '4'."),
    ({"max_rank": "0.5x"}, "GradNormRankConfig.max_rank as a multiple must be 'Kx' with K >= 1 (e.g. '4x'); got "
                           "'0.5x'."),
    ({"max_rank": 0}, "GradNormRankConfig.max_rank must be an integer >= 1, 'Kx' or None; got 0."),
    ({"signal": "fisher"}, "GradNormRankConfig.signal must be one of lora_b, lora_ab, delta, weight_grad, sensitivity, "
                         "whitened, kfac, activation_variance, update_concentration, update_norm, random, shuffled; "
                         "got 'fisher'."),
    ({"score_norm": "l1"}, "GradNormRankConfig.score_norm must be one of raw, per_entry, per_rank_unit, "
                           "per_sqrt_d_in; got 'l1'."),
    ({"adam_rule": "fresh"}, "GradNormRankConfig.adam_rule must be one of slice_bias_correction, inherit_step; got "
                             "'fresh'."),
    ({"budget_unit": "tokens"}, "GradNormRankConfig.budget_unit must be one of rank, params; got 'tokens'."),
    ({"beta": 1.0}, "GradNormRankConfig.beta must be in [0, 1); got 1.0."),
    ({"rank_budget": 0}, "GradNormRankConfig.rank_budget must be an integer >= 1 or None; got 0."),
    ({"max_rank": 2, "min_rank": 3}, "GradNormRankConfig.max_rank 2 is below min_rank 3."),
    ({"param_budget": 100}, "GradNormRankConfig.param_budget counts parameters: it needs budget_unit='params'."),
])
def test_config_refuses_a_bad_value_in_one_line(changes, message):
    with pytest.raises(ValueError) as error:
        GradNormRankConfig(**{"warmup_steps": 10, **changes})
    assert str(error.value) == message


def test_mixin_refuses_deepspeed_or_fsdp_and_a_setting_of_the_wrong_type():
    class ShardedTrainer:  # what the mixin reads of a Trainer that runs FSDP
        def __init__(self, model):
            self.model, self.is_deepspeed_enabled, self.is_fsdp_enabled = model, False, True

    model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["up", "down"]))
    with pytest.raises(ValueError, match="works on one device and under DDP only; this Trainer runs DeepSpeed or FSDP"):
        type("T", (GradNormRankMixin, ShardedTrainer), {})(model=model, gradnorm_rank=GradNormRankConfig(warmup_steps=2))
    with pytest.raises(TypeError, match="gradnorm_rank must be a GradNormRankConfig or a GradNormRank, got dict"):
        type("T", (GradNormRankMixin, ShardedTrainer), {})(model=model, gradnorm_rank={"warmup_steps": 2})


def test_choices_are_declared_once_and_the_harness_flags_use_them():
    assert gradnorm_rank.choices("signal") == gradnorm_rank.config.SIGNALS
    assert gradnorm_rank.choices("signal")[:3] == ("lora_b", "lora_ab", "delta")
    assert (arguments.SIGNALS, arguments.SCORE_NORMS, arguments.ADAM_RULES, arguments.BUDGET_UNITS) == tuple(
        gradnorm_rank.choices(name) for name in ("signal", "score_norm", "adam_rule", "budget_unit"))


def test_package_installs_and_imports_outside_the_repository(tmp_path):
    """`pip install .` of what the package is made of (pyproject.toml, README.md, gradnorm_rank/) into a folder, then
    `import gradnorm_rank` from elsewhere with only that folder on the path: it is self-contained (the harness's
    modules are not importable there) and installs nothing but gradnorm_rank, with torch, transformers and peft as
    its dependencies."""
    src, site, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(ROOT / "gradnorm_rank", src / "gradnorm_rank", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    elsewhere.mkdir()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import importlib.util, gradnorm_rank; print(gradnorm_rank.__file__); print(gradnorm_rank.__version__); "
            "print(importlib.util.find_spec('harness'))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, version, harness = proc.stdout.split()
    assert Path(where).is_relative_to(site) and version == gradnorm_rank.__version__ and harness == "None"
    assert sorted(p.name for p in site.iterdir()) == ["gradnorm_rank", f"gradnorm_rank-{version}.dist-info"]
    metadata = (site / f"gradnorm_rank-{version}.dist-info" / "METADATA").read_text()
    requires = sorted(re.split(r"[<>=!~ ;]", line.split(": ", 1)[1])[0]
                      for line in metadata.splitlines() if line.startswith("Requires-Dist: "))
    assert requires == ["peft", "torch", "transformers"]


def test_no_sys_path_edits_and_pytest_adds_only_the_repository_root():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*\+?=[^=]")
    edits = [f"{name}:{number}" for name in tracked.stdout.split()
             for number, line in enumerate((ROOT / name).read_text().splitlines(), 1) if edit.search(line)]
    assert edits == []
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["pytest"]["ini_options"]["pythonpath"] == ["."]
    assert config["tool"]["setuptools"]["packages"] == ["gradnorm_rank"]


def test_a_budget_above_the_caps_or_below_the_floor_names_the_config_field():
    """Tiny: up 6 -> 10 and down 10 -> 5, rank caps min(d_in, d_out) = 6 + 5 = 11, floor 1 x (16 + 15) = 31 parameters."""
    model = get_peft_model(Tiny(), LoraConfig(r=2, target_modules=["up", "down"]))
    with pytest.raises(ValueError, match=r"^GradNormRankConfig\.rank_budget 12 \(min_rank 1, max_rank 4x\) does not "
                                         r"fit this model's 2 LoRA matrices: Rank budget 12 exceeds the sum of the "
                                         r"per-module caps \(11\)\.$"):
        gradnorm_rank.GradNormRank(model, GradNormRankConfig(rank_budget=12, warmup_steps=1))
    with pytest.raises(ValueError, match=r"^GradNormRankConfig\.param_budget 30 \(min_rank 1, max_rank 4x\) does "
                                         r"not fit this model's 2 LoRA matrices: Parameter budget 30 cannot give 2 "
                                         r"modules at least 1 rank each \(31\)\.$"):
        gradnorm_rank.GradNormRank(model, GradNormRankConfig(budget_unit="params", param_budget=30, warmup_steps=1))
