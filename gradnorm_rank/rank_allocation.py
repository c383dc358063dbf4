"""Scores -> integer ranks: the rank maths of GLoRA, pure functions with no torch in them.

`apportion_ranks` splits a budget counted in ranks; `apportion_parameters` one counted in parameters. The continuous
shares are computed in exact rational arithmetic (the float scores taken exactly as `Fraction`s), so a fractional part
is exactly what it is: two equal remainders tie exactly, and the tie goes to the score, not to float noise.
"""

import math
from fractions import Fraction


def apportion_ranks(scores, rank_budget: int, *, min_rank: int = 1, max_ranks=None) -> list:
    """Split `rank_budget` into integer ranks proportional to `scores`, with sum(ranks) == rank_budget.

    1. Continuous shares x_k = lambda * s_k clipped to [min_rank, max_ranks[k]], with lambda chosen so that
       sum(x) == rank_budget (clipped modules are fixed and the rest re-solved until nothing violates a bound).
    2. Largest-remainder rounding: floor(x_k), then one more rank to the largest fractional parts (at most one per
       module). Exact ties (x_k is exact, see the module docstring) go to the higher score, then to the earlier
       module, so the result is deterministic and does not depend on the order of the modules when scores differ.

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

    shares = _clipped_shares(scores, rank_budget, min_rank, max_ranks)  # exact: min_rank <= x_k <= cap_k
    ranks = [math.floor(x) for x in shares]
    # The leftover is the sum of the fractional parts, an integer below the number of modules that have one (and those
    # are below their cap): the first `leftover` modules of the order each get one rank.
    leftover = rank_budget - sum(ranks)
    order = sorted(range(n), key=lambda k: (-(shares[k] - ranks[k]), -scores[k], k))
    for k in order[:leftover]:
        ranks[k] += 1
    assert sum(ranks) == rank_budget and all(min_rank <= r <= cap for r, cap in zip(ranks, max_ranks))
    return ranks


def _clipped_shares(scores, budget, min_rank, max_ranks):
    """Exact x_k = lambda * s_k clipped to [min_rank, cap_k] with sum(x) == budget."""
    return _water_fill(scores, budget, [min_rank] * len(scores), max_ranks)


def apportion_parameters(scores, costs, param_budget: int, *, min_rank: int = 1, max_ranks=None) -> list:
    """Split a budget in *parameters* into integer ranks: matrix k's parameter share follows its score.

    A rank unit of matrix k costs c_k = d_in + d_out parameters. The continuous solution gives matrix k the
    parameters p_k = lambda * s_k, i.e. the rank x_k = lambda * s_k / c_k, clipped to [min_rank, max_ranks[k]] with
    sum_k x_k c_k == param_budget (water-filling in parameter space, as `apportion_ranks` in rank space, in exact
    arithmetic). Integers: r_k = floor(x_k); then the matrices with a fractional claim x_k - r_k > 0 are taken
    largest claim first (exact ties: higher score, then earlier module) and each gets one more rank if its unit still
    fits in what is left. A matrix without a claim (its share is an integer, or it already got its unit) gets
    nothing, and what is left after the last claim that fits stays unspent.

    Guarantees, with P = param_budget:
    1. sum_k r_k c_k <= P and floor(x_k) <= r_k <= ceil(x_k): no rank is a whole unit from its continuous share.
    2. The unspent budget P - sum_k r_k c_k is smaller than c_k for every matrix still below its share (r_k < x_k).
    3. Among all integer allocations with min_rank <= r_k <= max_ranks[k] and sum_k r_k c_k <= P, none leaves a
       smaller largest shortfall max(x_k - r_k, 0), or the same largest and a smaller second largest, and so on
       (of two equal shortfalls the higher score's, then the earlier module's, counts as the larger); and none with
       these shortfalls spends fewer parameters beyond the shares. (A claim is skipped only when its unit does not
       fit after every larger claim got one; serving it would mean leaving a larger claim short instead.)
    tests/test_rank_allocation.py checks 1-3 against the exact shares and an exhaustive search of small cases. Guarantee
    3 is about shortfalls: a unit that fits goes to the largest claim that fits even when that claim is small, so
    max_k |r_k - x_k| is below 1 but not always the least possible. The budget is not always spent down to the
    cheapest unit either: spending the rest would put a matrix a whole unit or more past its share.
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
    x = [y / c for y, c in zip(shares, costs)]  # exact ranks, min_rank <= x_k <= cap_k
    ranks = [math.floor(v) for v in x]
    left = param_budget - sum(r * c for r, c in zip(ranks, costs))
    claims = sorted((k for k in range(n) if x[k] > ranks[k]), key=lambda k: (-(x[k] - ranks[k]), -scores[k], k))
    for k in claims:  # ranks[k] < x_k <= cap_k: the unit is within the cap
        if costs[k] <= left:
            ranks[k] += 1
            left -= costs[k]
    assert left >= 0 and all(min_rank <= r <= cap for r, cap in zip(ranks, max_ranks))
    return ranks


def _water_fill(scores, budget, lows, highs):
    """Exact y_k = lambda * s_k clipped to [lows[k], highs[k]] with sum(y) == budget, as `Fraction`s.

    Standard water-filling: fix the modules that violate a bound, re-solve the rest, one side at a time (the side
    that needs the bigger correction), until nothing violates a bound. The float scores are taken exactly
    (`Fraction(s)`), so the shares carry no rounding error."""
    n = len(scores)
    scores = [Fraction(s) for s in scores]
    budget = Fraction(budget)
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
                fixed[k] = Fraction(lows[k])
        else:
            for k in high:
                fixed[k] = Fraction(highs[k])
