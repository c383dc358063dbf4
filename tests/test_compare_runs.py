"""Tests for compare_runs.py (and its analysis package) on synthetic run directories written as docs/outputs.md
specifies."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import compare_runs as cr
from analysis import metrics as metric_fns
from analysis.bootstrap import paired_bootstrap
from analysis.runs import load_runs
from analysis.stats import share_of_gain, welch
from harness.records import ModuleRanks, RankRecord, Results, RunArgs

N = 200  # dev examples per split
B = 300  # bootstrap resamples: enough for p < 0.01 (the smallest possible p is 2/(B+1) = 0.0066)
BUDGET = 32
LAYOUT = [(0, "query"), (0, "value"), (1, "query"), (1, "value")]  # 4 adapted matrices, rank 8 each
FINAL_RANKS = {"lora": [8, 8, 8, 8], "adalora": [10, 6, 9, 7], "glora": [12, 4, 10, 6]}
GLORA_SCORES = [0.5, 0.1, 0.4, 0.2]
# all_results.json's method overhead (gradnorm_rank.MethodOverhead's names): LoRA none, AdaLoRA its total only, GLoRA
# its total and parts (binary fractions: the sum is exact)
OVERHEAD = {"lora": {"method_overhead_seconds": 0.0, "method_overhead_signal_seconds": 0.0,
                     "method_overhead_resize_seconds": 0.0, "method_overhead_grown_slice_seconds": 0.0},
            "adalora": {"method_overhead_seconds": 1.0, "method_overhead_signal_seconds": None,
                        "method_overhead_resize_seconds": None, "method_overhead_grown_slice_seconds": None},
            "glora": {"method_overhead_seconds": 1.0, "method_overhead_signal_seconds": 0.5,
                      "method_overhead_resize_seconds": 0.25, "method_overhead_grown_slice_seconds": 0.25}}

# sst2: per-seed accuracy (multiples of 1/N so predictions can reproduce them) and train time (s)
SST2 = {
    "lora": ([0.80, 0.81, 0.79], [100.0, 110.0, 90.0]),  # mean 0.80 ± 0.01, 100 s
    "adalora": ([0.84, 0.85, 0.83], [130.0, 120.0, 140.0]),  # mean 0.84 ± 0.01, 130 s (+30%)
    "glora": ([0.83, 0.835, 0.825], [105.0, 100.0, 110.0]),  # mean 0.83 ± 0.005, 105 s (+5%)
}
# mnli: per-seed (matched, mismatched) accuracy
MNLI = {
    "lora": [(0.70, 0.72), (0.71, 0.73)],
    "adalora": [(0.74, 0.75), (0.75, 0.76)],
    "glora": [(0.73, 0.74), (0.74, 0.75)],
}


def predictions(acc, num_labels=2):
    """idx,label,prediction with the first acc*N examples right, the rest wrong (rows shuffled)."""
    label = np.arange(N) % num_labels
    k = round(acc * N)
    pred = np.where(np.arange(N) < k, label, (label + 1) % num_labels)
    order = np.random.default_rng(k).permutation(N)  # row order must not matter: pairing is by idx
    return pd.DataFrame({"idx": np.arange(N)[order], "label": label[order], "prediction": pred[order]})


def write_run(root, name, task, method, seed, metrics, time, preds, log=True, args=None, results=None):
    """A finished run dir as run_glue_peft.py writes it (records.py). args: run_args.json sections ("data",
    "training", "resolved", ...) to add or update; results: all_results.json keys to add or update."""
    d = Path(root) / name
    d.mkdir(parents=True)
    run_args = {"model": {"model_name_or_path": "microsoft/deberta-v3-base"}, "data": {"task_name": task},
                "peft": {"method": method, "rank_budget": BUDGET}, "training": {"seed": seed, "output_dir": str(d)},
                "world_size": 1}
    for key, value in (args or {}).items():
        run_args[key] = {**run_args[key], **value} if isinstance(run_args.get(key), dict) else value
    RunArgs.from_json(run_args).write(d)
    modules = {}
    for (layer, matrix), r, s in zip(LAYOUT, FINAL_RANKS[method], GLORA_SCORES):
        modules[f"deberta.encoder.layer.{layer}.attention.self.{matrix}_proj"] = ModuleRanks(
            layer=layer, matrix=matrix, d_in=768, d_out=768, initial_rank=8, final_rank=r,
            score=s if method == "glora" else None)
    ranks = RankRecord(modules=modules)
    if method == "glora":
        ranks.glora = {"signal": "lora_b", "beta": 0.9, "warmup_steps": 20, "reallocation_step": 20,
                       **OVERHEAD["glora"]}
    if method == "adalora":
        ranks.adalora = {"init_r": 12, "target_r": 8, "tinit": 10, "tfinal": 20, "deltaT": 5,
                         "total_step": 60, "method_overhead_seconds": 1.0}
    ranks.write(d)
    for split, df in preds.items():
        df.to_csv(d / f"predictions_{split}.csv", index=False)
    if log:
        hist = [{"loss": 0.7 - 0.005 * s, "learning_rate": 1e-4, "epoch": s / 60, "step": s} for s in range(5, 61, 5)]
        hist += [{"eval_accuracy": 0.6 + 0.003 * s, "eval_loss": 0.6, "epoch": s / 60, "step": s} for s in range(15, 61, 15)]
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 60, "log_history": hist}))
    params_adapter = 8 * 2 * 768 * len(LAYOUT)
    record = {"task": task, "method": method, "seed": seed, "rank_budget": BUDGET,
              **{f"eval_{k}": v for k, v in metrics.items()},
              "eval_samples": N, "train_runtime": time, "train_samples_per_second": 1000 / time,
              "train_steps_per_second": 60 / time, "train_loss": 0.5,
              **OVERHEAD[method],
              "trainable_params_adapter": params_adapter, "trainable_params_head": 1538,
              "trainable_params": params_adapter + 1538, "final_rank_total": ranks.final_rank_total, **(results or {})}
    Results.from_json(record).write(d)
    return d


def sst2_metrics(acc):
    return {"accuracy": acc, "matthews_correlation": 2 * acc - 1, "combined_score": acc}


def make_sweep(root):
    """sst2 (3 seeds) and mnli (2 seeds) for lora/adalora/glora, plus three broken runs."""
    for method, (accs, times) in SST2.items():
        for seed, (acc, t) in enumerate(zip(accs, times)):
            write_run(root / "sst2", f"sst2_{method}_s{seed}", "sst2", method, seed, sst2_metrics(acc), t,
                      {"validation": predictions(acc)}, log=seed == 0)  # a few curves keep the test fast
    for method, accs in MNLI.items():
        for seed, (m, mm) in enumerate(accs):
            metrics = {"accuracy": m, "accuracy_mm": mm, "matthews_correlation": 0.6, "matthews_correlation_mm": 0.62,
                       "combined_score": m, "combined_score_mm": mm}  # each dev split's, as glue_metrics records them
            write_run(root / "mnli", f"mnli_{method}_s{seed}", "mnli", method, seed, metrics, 500.0 + 10 * seed,
                      {"validation_matched": predictions(m, 3), "validation_mismatched": predictions(mm, 3)},
                      log=False)
    # broken runs: unfinished, unreadable JSON, missing keys
    bad = write_run(root / "broken", "unfinished", "sst2", "lora", 7, sst2_metrics(0.5), 1.0, {}, log=False)
    (bad / "all_results.json").unlink()
    bad = write_run(root / "broken", "garbled", "sst2", "lora", 8, sst2_metrics(0.5), 1.0, {}, log=False)
    (bad / "all_results.json").write_text('{"task": "sst2", "method": ')
    bad = write_run(root / "broken", "no_metric", "sst2", "lora", 9, {}, 1.0, {}, log=False)
    return root


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep, compared once through main() with figures; returns (root, out_dir)."""
    root = make_sweep(tmp_path_factory.mktemp("sweep"))
    assert cr.main([str(root), "--n_bootstrap", str(B)]) == 0
    return root, root / "comparison"


def find(rows, task, method):
    (row,) = [r for r in rows if r["task"] == task and r["method"] == method]
    return row


@pytest.fixture(scope="module")
def tables(sweep):
    """(table rows, significance rows) as main() wrote them to comparison.json."""
    data = json.loads((sweep[1] / "comparison.json").read_text())
    return data["table"], data["significance"]

# -----------------------------------------------------------------------------
# metrics


def test_metrics_match_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    assert metric_fns.matthews(y, p) == pytest.approx(sk.matthews_corrcoef(y, p))
    assert metric_fns.matthews(y, y) == pytest.approx(1.0)
    assert metric_fns.matthews(y, np.zeros_like(y)) == 0.0  # constant prediction: undefined -> 0, as sklearn
    yb, pb = y % 2, p % 2
    assert metric_fns.f1(yb, pb) == pytest.approx(sk.f1_score(yb, pb))
    assert metric_fns.accuracy(yb, pb) == pytest.approx(sk.accuracy_score(yb, pb))
    a, b = rng.normal(size=300), rng.normal(size=300)
    b = a + b
    assert metric_fns.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert metric_fns.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0])

# -----------------------------------------------------------------------------
# statistics on constructed numbers


def test_share_of_gain_constructed():
    s = share_of_gain([0.80], [0.84], [0.83], n_bootstrap=B)
    assert s.defined and s.share == pytest.approx(0.75)
    s = share_of_gain([0.80, 0.81, 0.79], [0.84, 0.85, 0.83], [0.83, 0.835, 0.825], n_bootstrap=B)
    assert s.share == pytest.approx(0.75)
    assert s.ci_low < 0.75 < s.ci_high
    # list of tasks: statistic on the average of the task means: (0.83-0.80)/(0.86-0.80) = 0.5
    s = share_of_gain([[0.80], [0.60]], [[0.84], [0.68]], [[0.83], [0.63]], n_bootstrap=B)
    assert s.share == pytest.approx(0.5)
    # reproducible with the same bootstrap seed
    a = share_of_gain([0.80, 0.81, 0.79], [0.84, 0.86, 0.85], [0.83, 0.82, 0.84], n_bootstrap=B, seed=3)
    b = share_of_gain([0.80, 0.81, 0.79], [0.84, 0.86, 0.85], [0.83, 0.82, 0.84], n_bootstrap=B, seed=3)
    assert a.ci_low is not None and (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)


def test_share_of_gain_undefined():
    for ada in ([0.79, 0.78], [0.80, 0.80]):  # AdaLoRA below LoRA, and equal to it
        s = share_of_gain([0.80, 0.80], ada, [0.83, 0.82], n_bootstrap=B)
        assert not s.defined and s.share is None and s.ci_low is None
        assert s.note.startswith("undefined")


def test_paired_bootstrap_identical_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, N)
    p = np.where(rng.random(N) < 0.8, y, 1 - y)
    a = pd.DataFrame({"idx": np.arange(N), "label": y, "prediction": p})
    b = a.sample(frac=1, random_state=0)  # same predictions, other row order
    res = paired_bootstrap("sst2", [{"validation": a}], [{"validation": b}], n_bootstrap=100)  # p = 1 for any B
    assert res.delta == 0.0 and res.p == pytest.approx(1.0)
    # STS-B (float predictions, pearson/spearman)
    ys = rng.uniform(0, 5, N)
    s = pd.DataFrame({"idx": np.arange(N), "label": ys, "prediction": ys + rng.normal(0, 1, N)})
    res = paired_bootstrap("stsb", [{"validation": s}] * 2, [{"validation": s}] * 2, n_bootstrap=100)
    assert res.p == pytest.approx(1.0) and res.p_per_seed == [pytest.approx(1.0)] * 2


def test_paired_bootstrap_large_consistent_difference():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, N)
    good = pd.DataFrame({"idx": np.arange(N), "label": y, "prediction": y})  # always right
    bad = good.assign(prediction=np.where(np.arange(N) % 2 == 0, y, 1 - y))  # right half the time
    for task in ("sst2", "mrpc", "cola"):  # accuracy; f1 + accuracy; matthews
        res = paired_bootstrap(task, [{"validation": good}], [{"validation": bad}], n_bootstrap=B)
        assert res.delta > 0.2 and res.p < 0.01 and res.ci_low > 0
    # direction does not matter for a two-sided test
    res = paired_bootstrap("sst2", [{"validation": bad}], [{"validation": good}], n_bootstrap=B)
    assert res.delta == pytest.approx(-0.5) and res.p < 0.01


def test_paired_bootstrap_refuses_misaligned_predictions():
    """Rows whose idx no longer points at their example (labels disagree between runs) are not paired."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, N)
    a = pd.DataFrame({"idx": np.arange(N), "label": y, "prediction": y})
    shuffled = rng.permutation(N)
    b = a.assign(label=y[shuffled], prediction=1 - y[shuffled])  # its rows are another example's
    res = paired_bootstrap("sst2", [{"validation": a}], [{"validation": b}], n_bootstrap=B)
    assert math.isnan(res.p) and math.isnan(res.delta) and res.p_per_seed == []
    assert "labels differ" in res.notes[0]


def test_welch_known_answer():
    a, b = [0.80, 0.81, 0.79], [0.84, 0.85, 0.83]
    # equal variances s^2 = 1e-4, n = 3: t = -0.04 / sqrt(2e-4 / 3), Welch df = 4
    t = -0.04 / math.sqrt(2e-4 / 3)
    res = welch(a, b)
    assert res.t == pytest.approx(t) and res.p == pytest.approx(2 * stats.t.sf(abs(t), 4))
    assert res.p < 0.05
    assert math.isnan(welch([0.8], [0.9]).p)  # one seed: not computable, no crash

# -----------------------------------------------------------------------------
# loading, table, outputs


def test_broken_runs_skipped_with_reason(tmp_path):
    runs, skipped = load_runs([make_sweep(tmp_path)])
    assert len(runs) == 9 + 6
    reasons = {Path(p).name: r for p, r in skipped}
    assert set(reasons) == {"unfinished", "garbled", "no_metric"}
    assert "no all_results.json" in reasons["unfinished"]
    assert "unreadable all_results.json" in reasons["garbled"]
    assert "missing keys" in reasons["no_metric"] and "eval_accuracy" in reasons["no_metric"]


def test_table_values(tables):
    rows, sig = tables
    lora, ada, glora = (find(rows, "sst2", m) for m in ("lora", "adalora", "glora"))
    assert lora["n_seeds"] == 3 and lora["seeds"] == "0 1 2"
    assert lora["accuracy_mean"] == pytest.approx(0.80) and lora["accuracy_std"] == pytest.approx(0.01)
    assert ada["score_mean"] == pytest.approx(0.84) and ada["score_std"] == pytest.approx(0.01)
    assert glora["score_mean"] == pytest.approx(0.83) and glora["score_std"] == pytest.approx(0.005)
    assert glora["matthews_correlation_mean"] == pytest.approx(0.66)
    assert lora["train_time_mean"] == pytest.approx(100.0) and lora["train_time_std"] == pytest.approx(10.0)
    assert ada["overhead_vs_lora_pct"] == pytest.approx(30.0)
    assert glora["overhead_vs_lora_pct"] == pytest.approx(5.0)
    parts = [f"method_overhead_{p}_seconds_mean" for p in ("signal", "resize", "grown_slice")]
    assert [glora["method_overhead_seconds_mean"]] + [glora[p] for p in parts] == [1.0, 0.5, 0.25, 0.25]
    assert [lora["method_overhead_seconds_mean"]] + [lora[p] for p in parts] == [0.0] * 4
    assert ada["method_overhead_seconds_mean"] == 1.0 and all(ada[p] is None for p in parts)  # not measured apart: null
    assert ada["delta_vs_lora"] == pytest.approx(0.04) and glora["delta_vs_lora"] == pytest.approx(0.03)
    assert glora["share_of_gain"] == pytest.approx(0.75) and glora["share_defined"]
    assert all(r["total_rank"] == BUDGET for r in (lora, ada, glora))
    assert lora["trainable_params"] == 8 * 2 * 768 * 4 + 1538
    # significance: AdaLoRA is right on 8 more of 200 examples in every seed -> paired bootstrap is clear
    s = next(s for s in sig if (s["task"], s["a"], s["b"]) == ("sst2", "adalora", "lora"))
    assert s["paired_seeds"] == [0, 1, 2] and s["delta_boot"] == pytest.approx(0.04)
    assert s["p_boot"] < 0.01 and s["sig_boot"]
    assert s["p_welch"] == pytest.approx(welch(SST2["adalora"][0], SST2["lora"][0]).p)
    assert ada["p_boot_vs_lora"] == s["p_boot"]


def test_mnli_matched_and_mismatched(sweep, tables):
    rows, sig = tables
    glora = find(rows, "mnli", "glora")
    assert glora["accuracy_mean"] == pytest.approx(0.735) and glora["accuracy_mm_mean"] == pytest.approx(0.745)
    assert glora["score_mean"] == pytest.approx(0.74)  # mean of matched and mismatched
    # share on the mnli score: (0.74 - 0.715) / (0.75 - 0.715)
    assert glora["share_of_gain"] == pytest.approx(0.025 / 0.035)
    s = next(s for s in sig if (s["task"], s["a"], s["b"]) == ("mnli", "glora", "lora"))
    assert set(s["n_examples"]) == {"validation_matched", "validation_mismatched"}
    assert s["delta_boot"] == pytest.approx(0.025)
    md = (sweep[1] / "comparison.md").read_text()
    mnli_lines = [ln for ln in md.splitlines() if ln.startswith("| mnli |")]
    assert mnli_lines and all("acc " in ln and "acc_mm " in ln for ln in mnli_lines[:3])


def test_glue_average_row(tables):
    rows, _ = tables
    avg = {m: find(rows, "GLUE avg", m) for m in ("lora", "adalora", "glora")}
    assert avg["lora"]["score_mean"] == pytest.approx((0.80 + 0.715) / 2)
    assert avg["glora"]["delta_vs_lora"] == pytest.approx(((0.83 + 0.74) - (0.80 + 0.715)) / 2)
    assert avg["glora"]["share_of_gain"] == pytest.approx((0.03 + 0.025) / (0.04 + 0.035))
    assert avg["glora"]["avg_over"] == "sst2 mnli"


def test_outputs_written(sweep):
    _, out = sweep
    md = (out / "comparison.md").read_text()
    assert "α = 0.05" in md and "GLoRA recovers" in md
    assert "## Skipped runs" in md and "garbled" in md and "no all_results.json" in md
    assert "| sst2 | 32 | GLoRA |" in md and "**75%**" in md
    csv = pd.read_csv(out / "comparison.csv")
    g = csv[(csv.task == "sst2") & (csv.method == "glora")].iloc[0]
    assert g.score_mean == pytest.approx(0.83) and g.share_of_gain == pytest.approx(0.75)
    assert len(pd.read_csv(out / "comparison_significance.csv")) == 2 * 3  # 2 tasks x 3 pairs
    data = json.loads((out / "comparison.json").read_text())  # strict JSON: no NaN
    assert data["settings"]["n_bootstrap"] == B and len(data["skipped"]) == 3


def test_figures_written(sweep):
    _, out = sweep
    stems = ["comparison_accuracy_bar", "comparison_score_bar", "comparison_metric_vs_time",
             "sst2_rank_heatmap", "mnli_rank_heatmap", "sst2_glora_score_vs_rank", "mnli_glora_score_vs_rank"]
    stems += [f"sst2_{m}_s0_learning_curve" for m in SST2]  # the runs that have a trainer_state.json
    for stem in stems:
        for ext in ("png", "pdf"):
            f = out / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    for name in ("sst2_lora_s1", "mnli_glora_s0"):  # no trainer_state.json: no figure, no crash
        assert not (out / f"{name}_learning_curve.png").exists()


def test_undefined_share_and_missing_data(tmp_path, capsys):
    """AdaLoRA below LoRA: share stated as undefined; no predictions, one seed: no crash, notes only."""
    for method, acc in (("lora", 0.70), ("adalora", 0.68), ("glora", 0.72)):
        write_run(tmp_path, f"rte_{method}", "rte", method, 0, sst2_metrics(acc), 50.0, {}, log=False)
    assert cr.main([str(tmp_path), "--n_bootstrap", "50", "--out_dir", str(tmp_path / "out"), "--no_figures"]) == 0
    stdout = capsys.readouterr().out
    assert "undefined" in stdout and "AdaLoRA does not beat LoRA" in stdout
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())["table"]
    g = find(rows, "rte", "glora")
    assert g["share_defined"] is False and g["share_of_gain"] is None
    assert "no paired bootstrap" in stdout and "Welch needs >= 2 seeds" in stdout


def test_a_run_recorded_before_the_overhead_split_loads_its_total(tmp_path):
    """all_results.json written before the rename: method_hook_seconds is the total; the parts are unknown (nan)."""
    folder = write_run(tmp_path, "old", "sst2", "glora", 0, sst2_metrics(0.8), 10.0, {})
    results = json.loads((folder / "all_results.json").read_text())
    old = {k: v for k, v in results.items() if k not in OVERHEAD["glora"]} | {"method_hook_seconds": 0.7}
    (folder / "all_results.json").write_text(json.dumps(old))
    (run,), _ = load_runs([tmp_path])
    assert run.method_overhead_seconds == 0.7
    assert all(math.isnan(getattr(run, f"method_overhead_{p}_seconds")) for p in ("signal", "resize", "grown_slice"))


def test_cli_errors(tmp_path):
    assert cr.main([str(tmp_path / "missing")]) == 2
    assert cr.main([str(tmp_path)]) == 1  # no runs at all


def test_same_seed_twice_is_ambiguous_and_both_are_skipped(tmp_path):
    # e.g. a rerun left beside the first run of the same seed and setting: neither may silently win (a trial run
    # that records its --max_steps falls in another comparable group instead: tests/test_analysis_comparable.py)
    write_run(tmp_path, "real", "sst2", "lora", 0, sst2_metrics(0.81), 380.0, {"validation": predictions(0.81)})
    write_run(tmp_path, "trial", "sst2", "lora", 0, sst2_metrics(0.58), 13.0, {"validation": predictions(0.58)})
    write_run(tmp_path, "other_seed", "sst2", "lora", 1, sst2_metrics(0.80), 370.0, {"validation": predictions(0.8)})
    runs, skipped = load_runs([tmp_path])
    assert [r.name for r in runs] == ["other_seed"]
    reasons = {Path(p).name: r for p, r in skipped}
    assert set(reasons) == {"real", "trial"} and all("ambiguous" in r for r in reasons.values())


def test_a_run_moved_aside_by_overwrite_is_not_counted_as_a_seed(tmp_path):
    """A kill between the new run's all_results.json and the removal of OUTPUT_DIR.replaced leaves both runs; the
    moved-aside one is not a seed."""
    import shutil

    from analysis.runs import find_run_dirs

    root = tmp_path / "sweep"
    kept = write_run(root, "lora_seed1", "sst2", "lora", 1, {"accuracy": 0.8}, 10.0, {})
    shutil.copytree(kept, root / "lora_seed1.replaced")
    assert find_run_dirs([root]) == [kept]


def test_cpu_time_is_shown_beside_wall_clock_and_overhead_is_labelled_noise_bound(tmp_path):
    """train_process_cpu_seconds per arm (mean ± std over seeds) and its overhead vs LoRA beside the wall-clock ones;
    an arm whose runs did not record it reads —; the headline and a note under the table say the overhead is
    noise-bound (runs not measured side by side)."""
    cpu = {"lora": [90.0, 100.0, 110.0], "adalora": None, "glora": [99.0, 110.0, 121.0]}  # GLoRA: 110 s, +10 % on CPU
    for method, (accs, times) in SST2.items():
        for seed, (acc, t) in enumerate(zip(accs, times)):
            recorded = {"train_process_cpu_seconds": cpu[method][seed]} if cpu[method] else {}
            write_run(tmp_path, f"{method}_s{seed}", "sst2", method, seed, sst2_metrics(acc), t,
                      {"validation": predictions(acc)}, log=False, results=recorded)
    assert cr.main([str(tmp_path), "--n_bootstrap", "100", "--no_figures"]) == 0
    out = tmp_path / "comparison"
    rows = json.loads((out / "comparison.json").read_text())["table"]
    lora, ada, glora = (find(rows, "sst2", m) for m in ("lora", "adalora", "glora"))
    assert lora["train_cpu_time_mean"] == pytest.approx(100.0) and lora["train_cpu_time_std"] == pytest.approx(10.0)
    assert glora["train_cpu_time_mean"] == pytest.approx(110.0) and glora["cpu_overhead_vs_lora_pct"] == pytest.approx(10.0)
    assert ada["train_cpu_time_mean"] is None and ada["cpu_overhead_vs_lora_pct"] is None
    assert glora["overhead_vs_lora_pct"] == pytest.approx(5.0)  # wall-clock, as before
    md = (out / "comparison.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task |")).split(" | ")
    cells = {m: next(line for line in md.splitlines() if line.startswith(f"| sst2 | 32 | {m} |")).split(" | ")
             for m in ("LoRA", "AdaLoRA", "GLoRA")}
    at = {name: header.index(name) for name in ("train time (s)", "CPU time (s)", "overhead vs LoRA", "CPU overhead vs LoRA")}
    assert at["CPU time (s)"] == at["train time (s)"] + 1
    assert [cells["GLoRA"][i] for i in at.values()] == ["105.00 ± 5.00", "110.00 ± 11.00", "5.0%", "10.0%"]
    assert [cells["AdaLoRA"][i] for i in at.values()] == ["130.00 ± 10.00", "—", "30.0%", "—"]
    assert ("Wall-clock overhead vs LoRA (noise-bound: runs not measured side by side): AdaLoRA +30.0%, GLoRA +5.0%; "
            "CPU time: GLoRA +10.0%.") in md
    table_end = md.index("\n\n", md.index("| sst2 | 32 | GLoRA |"))
    assert md[table_end + 2:].startswith("Overhead vs LoRA is noise-bound: it compares the training times of runs made "
                                        "one after another, not side by side")


# ---- the planted control (vector labels): recovered and R^2 on resamples of examples, and the verdict ----


def planted_predictions(rng, n=40, k=3, noise=0.5, base_noise=2.0):
    """(idx, example, label, prediction, base_sq_error) as predictions_<split>.npz holds them: 1-4 output rows per
    example (as token_features), K outputs off zero (the estimator centres them), the last one constant (its R^2
    counts 0); the base model's error of each example summed over its rows and outputs (a base model off by
    base_noise)."""
    example = np.repeat(np.arange(n), rng.integers(1, 5, n))
    label = rng.normal(5.0, 2.0, (len(example), k))
    label[:, -1] = 3.0
    prediction = label + rng.normal(0, noise, label.shape)
    base = np.bincount(example, weights=(rng.normal(0, base_noise, label.shape) ** 2).sum(1), minlength=n)
    return np.arange(100, 100 + n), example, label, prediction, base


def test_planted_r2_on_a_resample_of_examples_is_r2_of_the_drawn_rows():
    """weighted_r2 on count weights W equals glue_tasks.vector_metrics on the rows of the drawn examples, each
    example's rows repeated as often as it was drawn (and on the whole file with weights 1)."""
    from analysis.metrics import example_sums, weighted_r2
    from harness.glue_tasks import vector_metrics

    rng = np.random.default_rng(0)
    idx, example, label, prediction, base = planted_predictions(rng)
    sums = example_sums(idx, example, label, prediction, base)
    assert list(sums["rows"]) == list(np.bincount(example)) and list(sums["idx"]) == list(idx)
    W = np.stack([np.bincount(rng.integers(0, len(idx), len(idx)), minlength=len(idx)) for _ in range(20)])
    W = np.vstack([np.ones(len(idx)), W]).astype(float)
    got = weighted_r2(W, sums)
    for b, counts in enumerate(W.astype(int)):
        rows = np.concatenate([np.flatnonzero(example == e).repeat(c) for e, c in enumerate(counts)])
        direct = vector_metrics(prediction[rows], label[rows], base[example[rows]])["r2"]
        assert got[b] == pytest.approx(direct, rel=1e-9, abs=1e-12)
    assert 0 < got[0] < 2 / 3  # two outputs fit well, the constant one counts 0


def test_planted_recovered_on_a_resample_of_examples_is_that_of_the_drawn_examples():
    """weighted_recovered on count weights W equals 1 - (the squared error summed over the drawn examples' rows and
    outputs) / (their base errors summed), each example counted as often as it was drawn, computed directly from the
    materialised rows; and glue_tasks.vector_metrics' recovered on the whole file (weights 1)."""
    from analysis.metrics import example_sums, weighted_recovered
    from harness.glue_tasks import vector_metrics

    rng = np.random.default_rng(1)
    idx, example, label, prediction, base = planted_predictions(rng)
    sums = example_sums(idx, example, label, prediction, base)
    W = np.stack([np.bincount(rng.integers(0, len(idx), len(idx)), minlength=len(idx)) for _ in range(20)])
    got = weighted_recovered(np.vstack([np.ones(len(idx)), W]).astype(float), sums)
    assert got[0] == pytest.approx(vector_metrics(prediction, label, base)["recovered"], rel=1e-12)
    for b, counts in enumerate(W):
        drawn = np.concatenate([np.full(c, e) for e, c in enumerate(counts)])  # examples, with repeats
        rows = np.concatenate([np.flatnonzero(example == e) for e in drawn])
        direct = 1 - ((label[rows] - prediction[rows]) ** 2).sum() / base[drawn].sum()
        assert got[b + 1] == pytest.approx(direct, rel=1e-12)
    # noise 0.5 against the base model's 2: about 1 - 0.25^2 of the change recovered
    assert 0.9 < got[0] < 0.97 and len(set(got.round(12))) > 10


def write_planted_run(root, arm, seed, noise):
    """A finished --task planted run (records.py) with predictions_validation.npz (planted_task.write_predictions'
    keys) and eval_recovered / eval_r2 / eval_pearson computed from it by glue_tasks.vector_metrics."""
    from harness.glue_tasks import vector_metrics

    idx, example, label, _, base = planted_predictions(np.random.default_rng(0))  # the same dev data in every run
    prediction = label + np.random.default_rng([seed, round(100 * noise)]).normal(0, noise, label.shape)
    metrics = vector_metrics(prediction.astype(np.float32), label.astype(np.float32), base)
    d = write_run(root, f"{arm}_s{seed}", "planted", "lora", seed, {**metrics, "combined_score": metrics["recovered"]},
                  100.0, {}, log=False, args={"resolved": {"arm": arm}}, results={"arm": arm})
    np.savez(d / "predictions_validation.npz", idx=idx, example=example, label=label.astype(np.float32),
             prediction=prediction.astype(np.float32), base_sq_error=base)
    return metrics


def test_planted_arms_get_the_seeds_and_examples_bootstrap_on_recovered_and_r2_and_pearson_beside(tmp_path):
    from analysis.bootstrap import resampled_scores
    from analysis.runs import read_predictions

    recorded = {(arm, seed): write_planted_run(tmp_path, arm, seed, noise)
                for arm, noise in (("lora", 1.5), ("oracle", 0.5)) for seed in (1, 2, 3)}
    assert cr.main([str(tmp_path), "--n_bootstrap", str(B), "--no_figures"]) == 0
    out = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    (sig,) = out["significance"]
    score = {arm: [recorded[(arm, s)]["recovered"] for s in (1, 2, 3)] for arm in ("lora", "oracle")}
    assert (sig["a"], sig["b"], sig["hier_n_a"], sig["hier_n_b"]) == ("oracle", "lora", 3, 3)
    assert sig["delta_hier"] == pytest.approx(np.mean(score["oracle"]) - np.mean(score["lora"]))
    assert sig["p_hier"] < 0.05 and sig["verdict"] == "significant" and not sig["notes"]
    runs, _ = load_runs([tmp_path])
    preds = [read_predictions(r)[0] for r in sorted(runs, key=lambda r: (r.arm, r.seed))]
    scores = resampled_scores("planted", preds, 10, np.random.default_rng(0))
    assert scores.observed == pytest.approx(score["lora"] + score["oracle"], rel=1e-6)
    oracle = next(r for r in out["table"] if r["arm"] == "oracle")
    assert oracle["main_metrics"] == "recovered" and oracle["score_mean"] == pytest.approx(np.mean(score["oracle"]))
    beside = {m: [recorded[("oracle", s)][m] for s in (1, 2, 3)] for m in ("recovered", "r2", "pearson")}
    assert oracle["r2_mean"] == pytest.approx(np.mean(beside["r2"]))
    assert oracle["pearson_mean"] == pytest.approx(np.mean(beside["pearson"]))
    md = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "; ".join(f"{m} {100 * np.mean(v):.2f} ± {100 * np.std(v, ddof=1):.2f}" for m, v in beside.items()) in md


def test_a_planted_run_whose_npz_does_not_give_its_r2_is_left_out_of_the_bootstrap(tmp_path):
    for arm, noise in (("lora", 1.5), ("oracle", 0.5)):
        for seed in (1, 2, 3):
            write_planted_run(tmp_path, arm, seed, noise)
    npz = tmp_path / "oracle_s2" / "predictions_validation.npz"
    with np.load(npz) as saved:
        kept = saved["example"] < 20  # half the examples
        np.savez(npz, idx=saved["idx"][:20], example=saved["example"][kept], label=saved["label"][kept],
                 prediction=saved["prediction"][kept], base_sq_error=saved["base_sq_error"][:20])
    assert cr.main([str(tmp_path), "--n_bootstrap", "50", "--no_figures"]) == 0
    (sig,) = json.loads((tmp_path / "comparison" / "comparison.json").read_text())["significance"]
    assert sig["hier_n_a"] == 2 and sig["hier_n_b"] == 3
    assert any(n.startswith("oracle seed 2: predictions_validation.npz (20 of the") and "left out of the bootstrap" in n
               for n in sig["notes"])
