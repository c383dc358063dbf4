"""Allocation quality against a planted ground truth (data/make_planted.py): where did each run put its rank?

Per run (its ranks.json): the share of the total rank and of the adapter parameters sum_k r_k (d_in + d_out) that sits
on the planted matrices, beside the oracle pattern's shares and uniform LoRA's; and how high the planted matrices
rank in the run's order of matrices — GLoRA's score (the EMA of its gradient signal) and every method's final rank —
as recall at k = the number of planted matrices. Ties at the k-th place count fractionally (the expected recall
when ties are broken at random), so a uniform allocation scores k/N, chance.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.records import RESULTS_FILE, RankRecord, Results


def recall_at_k(values: dict, planted: set) -> float:
    """Expected share of `planted` among the k = len(planted) largest `values`, ties at the boundary at random."""
    k = len(planted)
    if k == 0 or k > len(values):
        raise ValueError(f"recall at k needs 0 < k <= {len(values)} matrices, got k = {k}.")
    threshold = sorted(values.values(), reverse=True)[k - 1]
    above = [name for name, v in values.items() if v > threshold]
    tied = [name for name, v in values.items() if v == threshold]
    slots = k - len(above)  # places left for the tied group, filled at random
    hits = sum(name in planted for name in above) + slots * sum(name in planted for name in tied) / len(tied)
    return hits / k


def shares(ranks: dict, costs: dict, planted: set) -> tuple:
    """(share of the rank, share of the parameters) on the planted matrices."""
    total_rank = sum(ranks.values())
    total_params = sum(r * costs[name] for name, r in ranks.items())
    return (sum(ranks[n] for n in planted) / total_rank,
            sum(ranks[n] * costs[n] for n in planted) / total_params)


@dataclass(frozen=True)
class GroundTruth:
    planted: frozenset
    oracle: dict  # module -> rank of the oracle pattern

    @classmethod
    def read(cls, path, oracle_pattern=None):
        truth = json.loads(Path(path).read_text())
        oracle_file = Path(oracle_pattern) if oracle_pattern else Path(path).parent / "oracle_pattern.json"
        return cls(frozenset(truth["planted"]), json.loads(oracle_file.read_text()))


def read_run(run_dir) -> tuple:
    """(RankRecord, Results) of a finished run; one error line naming the folder and the record otherwise."""
    if not Path(run_dir, RESULTS_FILE).is_file():
        raise ValueError(f"{run_dir}: no {RESULTS_FILE} (not a finished run).")
    try:
        return RankRecord.read(run_dir), Results.read(run_dir)
    except (OSError, ValueError) as e:
        raise ValueError(f"{run_dir}: {e}") from None


def run_quality(run_dir, truth: GroundTruth) -> dict:
    """One row: the run's arm, method, seed and its allocation's numbers against the ground truth."""
    run_dir = Path(run_dir)
    record, results = read_run(run_dir)
    modules = record.modules
    missing = truth.planted - set(modules)
    if missing:
        raise ValueError(f"{run_dir}/ranks.json: planted matrix {sorted(missing)[0]} is not among its adapted matrices; "
                         "is this run from the ground truth's model?")
    costs = {name: m.unit_cost for name, m in modules.items()}
    final = {name: m.final_rank for name, m in modules.items()}
    rank_share, param_share = shares(final, costs, truth.planted)
    oracle_rank_share, oracle_param_share = shares({n: truth.oracle[n] for n in modules}, costs, truth.planted)
    uniform_rank_share, uniform_param_share = shares({n: 1 for n in modules}, costs, truth.planted)
    scores = {name: m.score for name, m in modules.items() if m.score is not None}
    glora = record.glora or {}
    return {
        "run": run_dir.name, "arm": results.arm or results.method, "method": results.method,
        "seed": results.seed, "planted": len(truth.planted), "matrices": len(modules),
        "rank_share": rank_share, "oracle_rank_share": oracle_rank_share, "uniform_rank_share": uniform_rank_share,
        "param_share": param_share, "oracle_param_share": oracle_param_share, "uniform_param_share": uniform_param_share,
        "recall_at_k_rank": recall_at_k(final, truth.planted),
        "recall_at_k_score": recall_at_k(scores, truth.planted) if len(scores) == len(modules) else None,
        "planted_score_places": sorted(1 + sorted(scores, key=lambda n: -scores[n]).index(n) for n in truth.planted)
        if len(scores) == len(modules) else None,
        "signal": glora.get("signal"), "score_norm": glora.get("score_norm"),
    }


def quality_table(run_dirs, truth: GroundTruth) -> pd.DataFrame:
    return pd.DataFrame([run_quality(d, truth) for d in run_dirs])


BY_ARM = ["rank_share", "param_share", "recall_at_k_rank", "recall_at_k_score"]


def arm_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: its runs, and the mean over them of the shares on the planted matrices and of recall at k
    (the oracle's and uniform LoRA's shares beside them; recall by score only where every run of the arm has one)."""
    rows = []
    for arm, runs in table.groupby("arm", sort=False):
        row = {"arm": arm, "runs": len(runs), "oracle_rank_share": runs["oracle_rank_share"].mean(),
               "uniform_rank_share": runs["uniform_rank_share"].mean()}
        for column in BY_ARM:
            values = pd.to_numeric(runs[column], errors="coerce")
            row[column] = values.mean() if values.notna().all() else None
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, columns=None) -> str:
    """The table as Markdown, shares in %, recall as a fraction."""
    columns = columns or ["run", "arm", "seed", "signal", "score_norm", "rank_share", "oracle_rank_share",
                          "uniform_rank_share", "param_share", "oracle_param_share", "uniform_param_share",
                          "recall_at_k_rank", "recall_at_k_score", "planted_score_places"]

    def cell(column, value):
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        if column.endswith("_share"):
            return f"{100 * value:.1f}%"
        if column.startswith("recall"):
            return f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
