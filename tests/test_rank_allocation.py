"""Tests for rank_allocation.apportion_ranks: scores -> integer ranks with an exact total.

Hand-computed cases, error cases, and properties checked against an independent reference (the clipped
proportional share found by bisection) on a seeded random loop and, when hypothesis is installed, on
hypothesis-generated cases.
"""

import math
import random

import pytest

from rank_allocation import apportion_parameters, apportion_ranks

# ---------------------------------------------------------------- reference and property checks


def reference_shares(scores, budget, min_rank, caps):
    """x_k = clip(lam * s_k, min_rank, cap_k) with sum(x) == budget, lam found by bisection (positive scores)."""
    def total(lam):
        return sum(min(max(lam * s, min_rank), cap) for s, cap in zip(scores, caps))

    lo, hi = 0.0, 1.0
    while total(hi) < budget and hi < 1e300:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if total(mid) < budget:
            lo = mid
        else:
            hi = mid
    return [min(max(hi * s, min_rank), cap) for s, cap in zip(scores, caps)]


def check_properties(scores, budget, min_rank, caps):
    ranks = apportion_ranks(scores, budget, min_rank=min_rank, max_ranks=caps)
    caps_eff = caps if caps is not None else [budget] * len(scores)
    assert all(isinstance(r, int) for r in ranks), ranks
    assert len(ranks) == len(scores)
    assert sum(ranks) == budget, (scores, budget, ranks)
    assert all(min_rank <= r <= cap for r, cap in zip(ranks, caps_eff)), (ranks, caps_eff)
    # Deterministic: the same input gives the same output.
    assert apportion_ranks(list(scores), budget, min_rank=min_rank, max_ranks=None if caps is None else list(caps)) == ranks
    equal_caps = len(set(caps_eff)) == 1
    if equal_caps:
        for i in range(len(scores)):
            for j in range(len(scores)):
                if scores[i] > scores[j]:
                    assert ranks[i] >= ranks[j], f"monotonicity: scores {scores}, ranks {ranks} ({i} vs {j})"
                if scores[i] == scores[j] and i < j:
                    # Ties: the earlier module gets the extra rank; equal scores never differ by more than one.
                    assert 0 <= ranks[i] - ranks[j] <= 1, (scores, ranks)
    if all(s > 0 for s in scores):
        # Largest-remainder rounding never moves a module by a whole rank from its clipped proportional share.
        shares = reference_shares(scores, budget, min_rank, caps_eff)
        for r, x in zip(ranks, shares):
            assert math.floor(x - 1e-6) <= r <= math.ceil(x + 1e-6), (scores, budget, caps_eff, shares, ranks)
    return ranks


def random_case(rng):
    n = rng.randint(1, 12)
    min_rank = rng.randint(1, 3)
    kind = rng.random()
    if kind < 0.15:
        scores = [0.0] * n
    elif kind < 0.3:
        if rng.random() < 0.5:  # all equal
            scores = [float(rng.choice([1, 2, 2, 5]))] * n
        else:  # many ties
            scores = [rng.choice([0.5, 1.0, 3.0]) for _ in range(n)]
    else:
        scores = [rng.choice([0.0, rng.uniform(0, 1), rng.uniform(0, 100), rng.expovariate(1.0) * 1e-6])
                  for _ in range(n)]
    if rng.random() < 0.5:
        caps = None
        budget = rng.randint(n * min_rank, n * min_rank + 40)
    else:
        caps = [rng.randint(min_rank, 16) for _ in range(n)] if rng.random() < 0.6 else [rng.randint(min_rank, 16)] * n
        budget = rng.randint(n * min_rank, sum(caps))
    return scores, budget, min_rank, caps


# ---------------------------------------------------------------- hand-computed examples


def test_proportional_exact():
    assert apportion_ranks([1, 2, 3, 4], 20) == [2, 4, 6, 8]
    assert apportion_ranks([0.1, 0.2, 0.3, 0.4], 20) == [2, 4, 6, 8]  # float scores that do not sum exactly


def test_largest_remainder_by_hand():
    # x = 7 * [5, 3, 2] / 10 = [3.5, 2.1, 1.4]: floors [3, 2, 1] (6), the spare rank to the largest remainder 0.5
    assert apportion_ranks([5, 3, 2], 7) == [4, 2, 1]
    # x = 12 * [2, 3, 5] / 10 = [2.4, 3.6, 6.0]: floors [2, 3, 6] (11), the spare rank to remainder 0.6
    assert apportion_ranks([2, 3, 5], 12) == [2, 4, 6]
    # x = 10 * [1, 1, 1, 7] / 10 = [1, 1, 1, 7] exactly; then 11 -> [1.1, 1.1, 1.1, 7.7]: floors 10, spare to 0.7
    assert apportion_ranks([1, 1, 1, 7], 10) == [1, 1, 1, 7]
    assert apportion_ranks([1, 1, 1, 7], 11) == [1, 1, 1, 8]
    # x = 13 * [1, 1, 1, 7] / 10 = [1.3, 1.3, 1.3, 9.1]: floors [1, 1, 1, 9] (12); remainders tie at 0.3 -> earliest
    assert apportion_ranks([1, 1, 1, 7], 13) == [2, 1, 1, 9]


def test_floor_and_cap_water_filling_by_hand():
    # Naive shares [0.1, 0.1, 9.8] fall below the floor 2: those two are fixed at 2, the rest (6) goes to module 2.
    assert apportion_ranks([1, 1, 98], 10, min_rank=2) == [2, 2, 6]
    # Naive shares [2, 4, 6, 8] exceed cap 5 for module 3: it is fixed at 5, the other 15 re-split over [1, 2, 3]
    # -> [2.5, 5, 7.5]: floors 14, remainders 0.5 tie between modules 0 and 2 -> the higher score (module 2) wins.
    assert apportion_ranks([1, 2, 3, 4], 20, min_rank=1, max_ranks=[8, 8, 8, 5]) == [2, 5, 8, 5]
    # Both bounds: cap pushes budget back onto the others, floor holds the tiny one.
    assert apportion_ranks([0.001, 1, 100], 12, min_rank=1, max_ranks=[12, 12, 6]) == [1, 5, 6]


def test_uniform_scores_uniform_ranks():
    for n, r in [(1, 8), (4, 8), (6, 2), (48, 8), (12, 1)]:
        assert apportion_ranks([3.7] * n, n * r) == [r] * n
        assert apportion_ranks([1.0] * n, n * r, min_rank=1, max_ranks=[r] * n) == [r] * n


def test_equal_scores_indivisible_budget_earlier_modules_get_extra():
    assert apportion_ranks([1, 1, 1], 10) == [4, 3, 3]
    assert apportion_ranks([2.5] * 4, 10) == [3, 3, 2, 2]
    assert apportion_ranks([1] * 5, 13, max_ranks=[3] * 5) == [3, 3, 3, 2, 2]
    # Same call twice, and with fresh list objects: same answer.
    assert apportion_ranks([1, 1, 1], 10) == apportion_ranks([1.0, 1.0, 1.0], 10)


def test_all_zero_scores_are_uniform():
    assert apportion_ranks([0, 0, 0, 0], 16) == [4, 4, 4, 4]
    assert apportion_ranks([0.0] * 3, 10) == [4, 3, 3]
    assert apportion_ranks([0, 0], 6, min_rank=2, max_ranks=[3, 8]) == [3, 3]


def test_zero_score_modules_get_the_floor():
    assert apportion_ranks([0, 5, 0, 5], 12) == [1, 5, 1, 5]
    assert apportion_ranks([0, 1], 8, min_rank=3) == [3, 5]


def test_higher_score_never_lower_rank_example():
    scores = [0.31, 0.30, 0.05, 0.29, 0.05]
    ranks = apportion_ranks(scores, 17)
    assert sum(ranks) == 17
    order = sorted(range(5), key=lambda k: -scores[k])
    assert [ranks[k] for k in order] == sorted(ranks, reverse=True)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "scores, budget, min_rank, caps, match",
    [
        ([1, 2, 3], 2, 1, None, "cannot give 3 modules"),  # budget < n * min_rank
        ([1, 2, 3], 8, 3, None, "cannot give 3 modules"),
        ([1, 2, 3], 13, 1, [4, 4, 4], "exceeds the sum"),  # budget > sum(caps)
        ([1, -0.5, 3], 9, 1, None, "finite and non-negative"),
        ([1, float("nan"), 3], 9, 1, None, "finite and non-negative"),
        ([1, float("inf"), 3], 9, 1, None, "finite and non-negative"),
        ([], 4, 1, None, "No modules"),
        ([1, 2], 4, 0, None, "min_rank must be >= 1"),
        ([1, 2], 4, 2, [1, 4], "below min_rank"),
        ([1, 2], 4, 1, [4], "one cap per score"),
    ],
)
def test_errors(scores, budget, min_rank, caps, match):
    with pytest.raises(ValueError, match=match):
        apportion_ranks(scores, budget, min_rank=min_rank, max_ranks=caps)


def test_boundary_budgets_are_accepted():
    assert apportion_ranks([1, 2, 3], 3) == [1, 1, 1]  # budget == n * min_rank
    assert apportion_ranks([1, 2, 3], 12, min_rank=1, max_ranks=[4, 4, 4]) == [4, 4, 4]  # budget == sum(caps)


# ---------------------------------------------------------------- properties


def test_properties_seeded_random_loop():
    rng = random.Random(1234)
    for _ in range(400):
        check_properties(*random_case(rng))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded loop above still runs
    given = None

if given is not None:

    @st.composite
    def allocation_cases(draw):
        n = draw(st.integers(1, 10))
        min_rank = draw(st.integers(1, 3))
        score = st.one_of(st.just(0.0), st.floats(1e-9, 1e6, allow_nan=False, allow_infinity=False))
        scores = draw(st.lists(score, min_size=n, max_size=n))
        if draw(st.booleans()):
            caps = None
            budget = draw(st.integers(n * min_rank, n * min_rank + 64))
        else:
            if draw(st.booleans()):
                caps = [draw(st.integers(min_rank, 20))] * n
            else:
                caps = draw(st.lists(st.integers(min_rank, 20), min_size=n, max_size=n))
            budget = draw(st.integers(n * min_rank, sum(caps)))
        return scores, budget, min_rank, caps

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(allocation_cases())
    def test_properties_hypothesis(case):
        check_properties(*case)


# ---------------------------------------------------------------- budgets in parameters


def test_parameter_budget_by_hand():
    # Two attention matrices (unit 2h = 8) and one FFN matrix (unit 5h = 20), h = 4; budget = r 2 everywhere.
    costs, budget = [8, 8, 20], 2 * (8 + 8 + 20)  # 72 parameters
    # Equal scores: equal parameter shares of 24 each -> ranks 3, 3, 1.2 -> floors 3, 3, 1 (68) -> 4 left: none fits.
    assert apportion_parameters([1, 1, 1], costs, budget) == [3, 3, 1]
    # All score on the FFN matrix: the attention matrices keep the floor (16), the FFN gets 56 / 20 -> 2, then 16
    # parameters are left: the FFN unit (20) no longer fits, the attention units (8) do, largest remainder first.
    assert apportion_parameters([0, 0, 1], costs, budget) == [2, 2, 2]


def check_parameter_properties(scores, costs, budget, min_rank, caps):
    ranks = apportion_parameters(scores, costs, budget, min_rank=min_rank, max_ranks=caps)
    caps_eff = caps if caps is not None else [budget // c for c in costs]
    spent = sum(r * c for r, c in zip(ranks, costs))
    assert spent <= budget, (ranks, spent, budget)
    room = [c for r, c, cap in zip(ranks, costs, caps_eff) if r < cap]
    assert not room or budget - spent < min(room), (ranks, budget - spent, room)  # shortfall < cheapest unit that fits
    assert all(min_rank <= r <= cap for r, cap in zip(ranks, caps_eff)), (ranks, caps_eff)
    return ranks


def test_parameter_budget_properties_seeded_random_loop():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 12)
        costs = [rng.choice([64, 64, 64, 64, 160, 160]) for _ in range(n)]  # 2h and 5h units, h = 32
        scores = [rng.choice([0.0, rng.random(), rng.random() * 100]) for _ in range(n)]
        min_rank = rng.randint(1, 2)
        caps = None if rng.random() < 0.5 else [rng.randint(min_rank, 16) for _ in range(n)]
        low = min_rank * sum(costs)
        high = sum(cap * c for cap, c in zip(caps, costs)) if caps else 64 * sum(costs)
        budget = rng.randint(low, max(low, high))
        check_parameter_properties(scores, costs, budget, min_rank, caps)


def test_parameter_budget_uniform_scores_uniform_costs_match_rank_budget():
    # With equal costs a parameter budget is a rank budget times the cost, up to the floor-fill rounding.
    for scores in ([1, 2, 3, 4], [5, 5, 5, 5], [0.1, 0, 7, 2]):
        by_params = apportion_parameters(scores, [10] * 4, 10 * 20)
        assert sum(by_params) == 20 and by_params == apportion_ranks(scores, 20)


@pytest.mark.parametrize("scores, costs, budget, min_rank, caps, match", [
    ([1, 1], [8, 20], 27, 1, None, "cannot give"),
    ([1, 1], [8, 20], 100, 1, [2, 2], "exceeds"),
    ([1], [0], 10, 1, None, "positive integer"),
    ([-1, 1], [8, 8], 32, 1, None, "non-negative"),
])
def test_parameter_budget_errors(scores, costs, budget, min_rank, caps, match):
    with pytest.raises(ValueError, match=match):
        apportion_parameters(scores, costs, budget, min_rank=min_rank, max_ranks=caps)
