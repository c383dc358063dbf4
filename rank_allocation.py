"""Scores -> integer ranks: the rank maths of GLoRA, pure functions with no torch in them.

`apportion_ranks` splits a budget counted in ranks; `apportion_parameters` one counted in parameters.
"""

import math


def apportion_ranks(scores, rank_budget: int, *, min_rank: int = 1, max_ranks=None) -> list:
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
    return _water_fill(scores, budget, [min_rank] * len(scores), max_ranks)


def apportion_parameters(scores, costs, param_budget: int, *, min_rank: int = 1, max_ranks=None) -> list:
    """Split a budget in *parameters* into integer ranks: matrix k's parameter share follows its score.

    A rank unit of matrix k costs c_k = d_in + d_out parameters. The continuous solution gives matrix k the
    parameters p_k = lambda * s_k, i.e. the rank x_k = lambda * s_k / c_k, clipped to [min_rank, max_ranks[k]] with
    sum_k x_k c_k == param_budget (water-filling in parameter space, as `apportion_ranks` in rank space). Integers:
    floor(x_k), then one more rank at a time, largest fractional part first (ties: higher score, earlier module),
    to every matrix whose unit still fits in what is left, until none fits. So sum_k r_k c_k <= param_budget, and the
    shortfall is smaller than the cheapest unit of a matrix that is still below its cap.
    """
    n = len(scores)
    if n == 0:
        raise ValueError("No modules to allocate ranks to.")
    if len(costs) != n or any(int(c) != c or c < 1 for c in costs):
        raise ValueError(f"costs needs one positive integer (d_in + d_out) per score, got {costs}.")
    scores = [float(s) for s in scores]
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise ValueError(f"Scores must be finite and non-negative, got {scores}.")
    costs = [int(c) for c in costs]
    capped = max_ranks is not None
    max_ranks = [int(m) for m in max_ranks] if capped else [param_budget // c for c in costs]
    if min_rank < 1:
        raise ValueError(f"min_rank must be >= 1 (a LoRA layer cannot have rank 0), got {min_rank}.")
    if any(cap < min_rank for cap in max_ranks):
        raise ValueError(f"A rank cap {min(max_ranks)} is below min_rank {min_rank}.")
    floor_cost = min_rank * sum(costs)
    if param_budget < floor_cost:
        raise ValueError(f"Parameter budget {param_budget} cannot give {n} modules at least {min_rank} rank each ({floor_cost}).")
    ceiling_cost = sum(cap * c for cap, c in zip(max_ranks, costs))
    if param_budget >= ceiling_cost:
        if capped and param_budget > ceiling_cost:
            raise ValueError(f"Parameter budget {param_budget} exceeds what the per-module caps can hold ({ceiling_cost}).")
        return max_ranks  # uncapped: every module as large as the budget alone allows; the rest cannot be spent
    if sum(scores) == 0:
        scores = [1.0] * n

    # In parameter units y_k = x_k c_k the problem is `_clipped_shares` with bounds [min_rank c_k, cap_k c_k].
    shares = _water_fill(scores, param_budget, [min_rank * c for c in costs], [m * c for m, c in zip(max_ranks, costs)])
    ranks = [min(max(int(math.floor(y / c + 1e-9)), min_rank), cap) for y, c, cap in zip(shares, costs, max_ranks)]
    left = param_budget - sum(r * c for r, c in zip(ranks, costs))
    order = sorted(range(n), key=lambda k: (-(shares[k] / costs[k] - ranks[k]), -scores[k], k))
    grew = True
    while grew:
        grew = False
        for k in order:
            if ranks[k] < max_ranks[k] and costs[k] <= left:
                ranks[k] += 1
                left -= costs[k]
                grew = True
    assert left >= 0
    return ranks


def _water_fill(scores, budget, lows, highs):
    """Real-valued y_k = lambda * s_k clipped to [lows[k], highs[k]] with sum(y) == budget.

    Standard water-filling: fix the modules that violate a bound, re-solve the rest, one side at a time (the side
    that needs the bigger correction), until nothing violates a bound."""
    n = len(scores)
    fixed = [None] * n
    while True:
        free = [k for k in range(n) if fixed[k] is None]
        remaining = budget - sum(y for y in fixed if y is not None)
        free_score = sum(scores[k] for k in free)
        if free_score > 0:
            y = {k: remaining * scores[k] / free_score for k in free}
        else:
            y = {k: remaining / len(free) for k in free}
        low = [k for k in free if y[k] < lows[k]]
        high = [k for k in free if y[k] > highs[k]]
        if not low and not high:
            return [fixed[k] if fixed[k] is not None else y[k] for k in range(n)]
        if sum(lows[k] - y[k] for k in low) >= sum(y[k] - highs[k] for k in high):
            for k in low:
                fixed[k] = float(lows[k])
        else:
            for k in high:
                fixed[k] = float(highs[k])
