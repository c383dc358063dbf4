"""Scores -> integer ranks: the rank maths of GLoRA, a pure function with no torch in it."""

import math


def apportion_ranks(scores, rank_budget: int, min_rank: int = 1, max_ranks=None) -> list:
    """Split `rank_budget` into integer ranks proportional to `scores`, with sum(ranks) == rank_budget.

    1. Continuous shares x_k = lambda * s_k clipped to [min_rank, max_ranks[k]], with lambda chosen so that
       sum(x) == rank_budget (clipped modules are fixed and the rest re-solved until nothing violates a bound).
    2. Largest-remainder rounding: floor(x_k), then one more rank to the largest fractional parts.
       Ties go to the higher score, then to the earlier module, so the result is deterministic.

    With equal caps a higher score never gets a lower rank; equal scores get equal ranks when the
    budget divides evenly. All-zero scores are treated as uniform.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("No modules to allocate ranks to.")
    scores = [float(s) for s in scores]
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise ValueError(f"Scores must be finite and non-negative, got {scores}.")
    max_ranks = [rank_budget] * n if max_ranks is None else [int(m) for m in max_ranks]
    if len(max_ranks) != n:
        raise ValueError("max_ranks needs one cap per score.")
    if min_rank < 1:
        raise ValueError(f"min_rank must be >= 1 (a LoRA layer cannot have rank 0), got {min_rank}.")
    if any(cap < min_rank for cap in max_ranks):
        raise ValueError(f"A rank cap {min(max_ranks)} is below min_rank {min_rank}.")
    if rank_budget < n * min_rank:
        raise ValueError(f"Rank budget {rank_budget} cannot give {n} modules at least {min_rank} each ({n * min_rank}).")
    if rank_budget > sum(max_ranks):
        raise ValueError(f"Rank budget {rank_budget} exceeds the sum of the per-module caps ({sum(max_ranks)}).")
    if sum(scores) == 0:
        scores = [1.0] * n

    shares = _clipped_shares(scores, rank_budget, min_rank, max_ranks)
    ranks = [min(max(int(math.floor(x + 1e-9)), min_rank), cap) for x, cap in zip(shares, max_ranks)]
    leftover = rank_budget - sum(ranks)
    order = sorted(range(n), key=lambda k: (-(shares[k] - ranks[k]), -scores[k], k))
    for k in order:
        if leftover == 0:
            break
        if ranks[k] < max_ranks[k]:
            ranks[k] += 1
            leftover -= 1
    # Rounding noise can only leave a leftover of a rank or two; give it to the best-scored modules with room.
    for k in sorted(range(n), key=lambda k: (-scores[k], k)):
        while leftover > 0 and ranks[k] < max_ranks[k]:
            ranks[k] += 1
            leftover -= 1
        while leftover < 0 and ranks[k] > min_rank:
            ranks[k] -= 1
            leftover += 1
    assert sum(ranks) == rank_budget
    return ranks


def _clipped_shares(scores, budget, min_rank, max_ranks):
    """Real-valued x_k = lambda * s_k clipped to [min_rank, cap_k] with sum(x) == budget."""
    n = len(scores)
    fixed = [None] * n
    while True:
        free = [k for k in range(n) if fixed[k] is None]
        remaining = budget - sum(x for x in fixed if x is not None)
        free_score = sum(scores[k] for k in free)
        if free_score > 0:
            x = {k: remaining * scores[k] / free_score for k in free}
        else:  # only zero-score modules are left: share what remains equally
            x = {k: remaining / len(free) for k in free}
        low = [k for k in free if x[k] < min_rank]
        high = [k for k in free if x[k] > max_ranks[k]]
        # Fix one side at a time: the side that needs the bigger correction (standard water-filling).
        if not low and not high:
            return [fixed[k] if fixed[k] is not None else x[k] for k in range(n)]
        deficit = sum(min_rank - x[k] for k in low)
        excess = sum(x[k] - max_ranks[k] for k in high)
        if deficit >= excess:
            for k in low:
                fixed[k] = float(min_rank)
        else:
            for k in high:
                fixed[k] = float(max_ranks[k])
