"""benchmarks.allocation_bench on tiny plantings (data/make_planted.py): every signal's shares from the shared passes
equal those of a GradNormRank run alone (calibrate, or the warm-up loop), the vector planting's batches are the
harness's, the reference rows are the identifiability block's, and the files it writes."""


import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

from analysis.allocation import recall_at_k
from benchmarks import allocation_bench
from data import identifiability, make_planted
from gradnorm_rank import GradNormRank, LoopHost

SOURCE = str(ROOT / "data" / "glue" / "sst2")
SIGNALS = ["lora_b", "lora_b:per_sqrt_d_in", "weight_grad", "kfac", "activation_variance", "random", "shuffled",
           "update_concentration", "update_norm"]


def make_planting(model_dir, out, target="token_features"):
    vector = ["--num_outputs", "6", "--effect_rows", "32", "--effect_iterations", "1"] if target != "class" else []
    make_planted.main(["--out_dir", str(out), "--model_name_or_path", str(model_dir), "--source_dir", SOURCE,
                       "--target", target, "--num_planted", "4", "--rank", "2", "--train_rows", "60", "--dev_rows",
                       "10", "--max_seq_length", "24", "--seed", "1", *vector])
    return out


def bench_flags(planting, out, *signals):
    return ["--planting", str(planting), "--out_dir", str(out), "--signals", *signals, "--calibration_batches", "2",
            "--warmup_steps", "3", "--batch_size", "8", "--learning_rate", "1e-2", "--seed", "3"]


def alone(planting, spec, timing, args) -> dict:
    """The shares of one GradNormRank on its own fresh adapter: GradNormRank.calibrate, or the LoopHost warm-up loop
    (the library's own order of calls), read where its allocation reads them."""
    model = allocation_bench.fresh_adapter(planting, args)
    grn = GradNormRank(model, allocation_bench.signal_config(spec, timing, args))
    loss = lambda batch: model(**batch).loss  # noqa: E731
    torch.manual_seed(args.seed)
    if timing == "calibration":
        grn.calibrate(iter(planting.batches), loss)
        return grn.scores()
    params = lambda: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
    make = lambda: torch.optim.AdamW(params(), lr=args.learning_rate, weight_decay=args.weight_decay)  # noqa: E731
    constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # noqa: E731
    optimizer = make()
    grn.attach(host := LoopHost(optimizer, constant(optimizer), make, constant, total_steps=args.warmup_steps + 1))
    model.train()
    for step, batch in enumerate(planting.batches[:args.warmup_steps], start=1):
        loss(batch).backward()
        grn.observe_gradients()
        torch.nn.utils.clip_grad_norm_(params(), args.max_grad_norm)
        host.optimizer.step()
        grn.after_optimizer_step()
        host.lr_scheduler.step()
        host.optimizer.zero_grad(set_to_none=True)
    return grn.scores()  # what maybe_reallocate(warmup_steps) would allocate from


@pytest.mark.parametrize("target", ["token_features", "class"])
def test_shared_passes_give_each_signal_its_own_runs_shares(tiny_bert, tmp_path, target):
    """A vector planting through planted_task's model and loss, a scalar one through a sequence classifier."""
    planting_dir = make_planting(tiny_bert, tmp_path / "planted", target)
    out = tmp_path / "bench"
    table, scores = allocation_bench.main(bench_flags(planting_dir, out, *SIGNALS))
    assert len(table) == 2 * len(SIGNALS) - 2  # update_concentration and update_norm have no calibration row
    args = allocation_bench.parse_args(bench_flags(planting_dir, out, *SIGNALS))
    planting = allocation_bench.read_planting(planting_dir, args)
    for (timing, label), part in scores.groupby(["timing", "signal"]):
        spec = allocation_bench.parse_spec(label, "raw")
        expected = alone(planting, spec, timing, args)
        total = sum(expected.values())
        assert part.set_index("module")["share"].to_dict() == pytest.approx(
            {name: value / total for name, value in expected.items()}, rel=1e-6, abs=1e-12), (timing, label)
        bench_row = table[(table.timing == timing) & (table.signal == label)].iloc[0]
        assert bench_row.recall_at_k == recall_at_k(expected, set(planting.truth.planted))
    assert {f.name for f in out.iterdir()} == {"allocation_bench.md", "allocation_bench.csv", "scores.csv",
                                               "heatmap_planted_calibration.png", "heatmap_planted_warmup.png"}
    assert len(pd.read_csv(out / "allocation_bench.csv")) == len(table)
    assert len(pd.read_csv(out / "scores.csv")) == len(table) * 12  # the tiny BERT's 2 layers x 6 matrices
    assert (table.signal_seconds > 0).all() and (table.pass_seconds > 0).all()


def test_vector_batches_are_the_sampled_rows_through_the_harness_collator(tiny_bert, tmp_path):
    """Each batch holds --batch_size rows in the seed's order; per row, the labels at its real tokens are the row's
    K x tokens labels and the padding is masked."""
    planting_dir = make_planting(tiny_bert, tmp_path / "planted")
    args = allocation_bench.parse_args(bench_flags(planting_dir, tmp_path / "bench", "lora_b"))
    planting = allocation_bench.read_planting(planting_dir, args)
    rows = pd.read_parquet(planting_dir / "planted" / "train.parquet")
    order = np.random.default_rng(3).permutation(len(rows))[:3 * 8]
    assert len(planting.batches) == 3
    for b, batch in enumerate(planting.batches):
        assert batch["labels"].shape[:2] == batch["input_ids"].shape and batch["labels"].shape[2] == 6
        for i, row in enumerate(order[8 * b:8 * b + 8]):
            real = batch["attention_mask"][i].bool()
            assert np.allclose(batch["labels"][i][real].reshape(-1).numpy(), rows["label"].iloc[row], atol=1e-6)
            assert not batch["labels"][i][~real].any()


def test_reference_rows_are_full_fine_tunings_scores_from_the_identifiability_block(tiny_bert, tmp_path):
    planting_dir = make_planting(tiny_bert, tmp_path / "planted", target="features")
    block = identifiability.main([str(planting_dir), "--steps", "2", "4", "--rows", "40", "--batch_size", "16",
                                  "--additivity_rows", "24", "--gradient_rows", "24", "--lora_rank", "4"])
    table, _ = allocation_bench.main(bench_flags(planting_dir, tmp_path / "bench", "random") + ["--timings", "warmup"])
    reference = table[table.timing == "reference"].set_index("signal")
    assert list(reference.index) == ["full_ft_relative_change", "full_ft_top_k_share"]
    for name in allocation_bench.REFERENCE_SCORES:
        verdict = block["full_finetuning"]["4"][name]  # placed by analysis.identifiability itself
        assert reference.loc[f"full_ft_{name}", "observations"] == 4
        assert reference.loc[f"full_ft_{name}", "recall_at_k"] == pytest.approx(verdict["recall"])
        assert reference.loc[f"full_ft_{name}", "mean_planted_place"] == pytest.approx(verdict["mean_place"])


def test_bad_signal_flags_are_refused_in_one_line(tmp_path, capsys):
    for bad, message in (("nope", "unknown signal 'nope'"), ("lora_b:nope", "unknown score_norm 'nope'"),
                         ("random:per_sqrt_d_in", "random gives shares")):
        with pytest.raises(SystemExit):
            allocation_bench.parse_args(["--planting", "x", "--out_dir", str(tmp_path), "--signals", bad])
        assert message in capsys.readouterr().err


def test_a_planting_it_cannot_run_is_refused_in_one_line(tiny_bert, tmp_path):
    planting_dir = make_planting(tiny_bert, tmp_path / "planted")
    flags = bench_flags(planting_dir, tmp_path / "bench", "lora_b")
    for extra, message in ((["--warmup_steps", "10"], "60 training rows, fewer than the 10 batches x --batch_size 8"),
                           (["--max_seq_length", "32"], "--max_seq_length 32: the planting's labels were computed at "
                                                        "max_seq_length 24")):
        with pytest.raises(SystemExit, match=message):
            allocation_bench.main(flags + extra)
    assert not (tmp_path / "bench").exists()  # refused before anything is written
