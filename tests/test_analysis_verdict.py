"""The seed-aware verdict, the share interval's usable resamples, the confusion sheets and the power
arithmetic, on synthetic runs with known answers."""
import json

import numpy as np
import pandas as pd
import pytest

import compare_runs as cr
from analysis import metrics
from analysis.bootstrap import hierarchical_bootstrap, paired_bootstrap
from analysis.figures import summed_confusion
from analysis.power import largest_sd, minimum_detectable_difference, seeds_needed
from analysis.runs import aggregate, load_runs
from analysis.stats import share_of_gain
from analysis.tables import fmt_share, share_columns
from tests.test_compare_runs import N, predictions, sst2_metrics, write_run

B = 400
BIG = 4000  # dev examples: example-level noise of a 1-point accuracy difference is then small


def dev_run(acc, n=BIG, seed=0):
    """{validation: idx,label,prediction} of a binary task with accuracy acc: wrong examples spread at random."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    wrong = rng.permutation(n)[: round((1 - acc) * n)]
    p = y.copy()
    p[wrong] = 1 - y[wrong]
    return {"validation": pd.DataFrame({"idx": np.arange(n), "label": y, "prediction": p})}


def test_seeds_disagree_is_not_significant_though_each_seed_pair_is():
    # A beats B by 1.7 points on mean, but A's seeds spread over 12 points: the examples-only bootstrap
    # (seeds fixed) calls it clear, the seeds+examples bootstrap must not.
    a = [dev_run(acc, seed=s) for s, acc in enumerate([0.70, 0.86, 0.84])]
    b = [dev_run(acc, seed=10 + s) for s, acc in enumerate([0.78, 0.79, 0.78])]
    examples_only = paired_bootstrap("sst2", a, b, n_bootstrap=B)
    assert examples_only.p < 0.05
    hier = hierarchical_bootstrap("sst2", a, b, n_bootstrap=B)
    assert hier.delta == pytest.approx(examples_only.delta)
    assert hier.p > 0.2 and hier.ci_low < 0 < hier.ci_high


def test_consistent_seeds_are_significant():
    a = [dev_run(acc, seed=s) for s, acc in enumerate([0.84, 0.85, 0.845])]
    b = [dev_run(acc, seed=10 + s) for s, acc in enumerate([0.80, 0.805, 0.80])]
    hier = hierarchical_bootstrap("sst2", a, b, n_bootstrap=B)
    assert hier.p < 0.01 and hier.ci_low > 0


def test_resampled_metrics_equal_the_plain_ones():
    """The count-weighted metrics on a resample = the plain metric on the drawn examples."""
    rng = np.random.default_rng(0)
    n = 150
    draws = rng.integers(0, n, (10, n))
    W = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(float)
    y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    ys = np.round(rng.uniform(0, 5, n), 1)  # ties, as STS-B labels have
    ps = np.round(ys + rng.normal(0, 1, n), 1)
    for metric, y, p in (("accuracy", y3, p3), ("f1", y3 % 2, p3 % 2), ("matthews_correlation", y3, p3),
                         ("pearson", ys, ps), ("spearmanr", ys, ps)):
        expected = [metrics.METRIC_FNS[metric](y[d], p[d]) for d in draws]
        assert metrics.weighted_metric(metric, W, y, p, 3) == pytest.approx(expected, abs=1e-12), metric


def test_share_interval_not_estimable_with_few_usable_resamples():
    # AdaLoRA's mean gain is positive, but in many seed resamples it is not
    s = share_of_gain([0.80, 0.82, 0.78], [0.81, 0.79, 0.83], [0.805, 0.80, 0.81], n_bootstrap=B)
    assert s.defined and s.share == pytest.approx((0.805 - 0.80) / (0.81 - 0.80))
    assert not s.estimable and s.ci_low is None and s.n_resamples == B and 0 < s.n_usable < 0.975 * B
    assert "not estimable" in s.note and f"{s.n_usable} of {B}" in s.note
    assert "interval not estimable" in fmt_share(share_columns(s))
    clear = share_of_gain([0.80, 0.81, 0.79], [0.84, 0.85, 0.83], [0.83, 0.835, 0.825], n_bootstrap=B)
    assert clear.estimable and clear.n_usable == B and "(400/400 resamples usable)" in fmt_share(share_columns(clear))


def sweep(root, accs, n_seeds):
    for method, acc in accs.items():
        for seed in range(n_seeds):
            a = acc + 0.005 * seed
            write_run(root, f"{method}_s{seed}", "sst2", method, seed, sst2_metrics(a), 100.0,
                      {"validation": predictions(a)}, log=False)
    return root


def test_verdict_reads_too_few_seeds_below_three(tmp_path):
    sweep(tmp_path, {"lora": 0.70, "adalora": 0.80, "glora": 0.79}, n_seeds=2)
    assert cr.main([str(tmp_path), "--n_bootstrap", "100", "--no_figures"]) == 0
    data = json.loads((tmp_path / "comparison" / "comparison.json").read_text())
    assert all(s["verdict"].startswith("too few seeds") for s in data["significance"])
    assert all(s["p_hier"] is not None for s in data["significance"])  # computed, but not the verdict
    assert "too few seeds" in (tmp_path / "comparison" / "comparison.md").read_text()


def test_verdict_with_three_seeds(tmp_path):
    sweep(tmp_path, {"lora": 0.70, "adalora": 0.80, "glora": 0.795}, n_seeds=3)
    assert cr.main([str(tmp_path), "--n_bootstrap", "200", "--no_figures"]) == 0
    sig = {(s["a"], s["b"]): s for s in json.loads((tmp_path / "comparison" / "comparison.json").read_text())["significance"]}
    assert sig[("adalora", "lora")]["verdict"] == "significant"
    assert sig[("glora", "adalora")]["verdict"] == "not significant"


def test_confusion_sheets_sum_to_the_dev_set(tmp_path):
    sweep(tmp_path, {"lora": 0.70, "glora": 0.80}, n_seeds=3)
    runs, _ = load_runs([tmp_path])
    for g in aggregate(runs).values():
        sheets, used = summed_confusion(g)
        assert used == 3 and set(sheets) == {"validation"}
        cm = sheets["validation"]
        assert cm.shape == (2, 2) and cm.sum() == 3 * N  # seeds summed: 3 dev sets
        assert np.trace(cm) == pytest.approx(sum(round(r.score * N) for r in g.runs))
        single = metrics.confusion_matrix(np.arange(N) % 2, np.zeros(N, int), 2)
        assert single.sum() == N


def test_power_known_values():
    # normal quantiles: (1.95996 + 0.84162) * sqrt(2/n) * sd
    assert minimum_detectable_difference(1.0, 8, normal=True) == pytest.approx(2.80159 * 0.5, rel=1e-4)
    assert minimum_detectable_difference(1.0, 8) > minimum_detectable_difference(1.0, 8, normal=True)  # t is wider
    n = seeds_needed(1.0, 1.0, normal=True)  # 2 * 2.80159^2 = 15.7 -> 16
    assert n == 16
    assert minimum_detectable_difference(1.0, seeds_needed(0.5, 1.0)) <= 0.5 < minimum_detectable_difference(
        1.0, seeds_needed(0.5, 1.0) - 1)


def test_paired_power_known_values():
    """Seed-paired (df n - 1, σ_d / sqrt(n)): t_{0.995, 5} = 4.03214 and t_{0.8, 5} = 0.91954 (tables)."""
    assert minimum_detectable_difference(1.5, 6, alpha=0.01, paired=True) == pytest.approx(
        (4.03214 + 0.91954) * 1.5 / 6 ** 0.5, rel=1e-4)
    # power 0.5: an observed 3 points reaches p = 0.01 at n = 6 when σ_d <= 3 sqrt(6) / 4.03214
    assert largest_sd(3, 6, alpha=0.01, power=0.5, paired=True) == pytest.approx(3 * 6 ** 0.5 / 4.03214, rel=1e-4)
    assert largest_sd(3, 6, alpha=0.01, paired=True) == pytest.approx(3 * 6 ** 0.5 / (4.03214 + 0.91954), rel=1e-4)
    assert seeds_needed(3, 1.48, alpha=0.01, paired=True) == 6 < seeds_needed(3, 1.5, alpha=0.01, paired=True)
    assert minimum_detectable_difference(1.0, 6, paired=True) < minimum_detectable_difference(1.0, 6)
