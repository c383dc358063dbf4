"""Tests for rank_allocation: scores -> integer ranks with an exact total (apportion_ranks) or within a parameter
budget (apportion_parameters).

Hand-computed cases, error cases, and properties checked against independent references (the clipped proportional
share found by bisection, or exactly on the breakpoints of the water level; an exhaustive search over every valid
integer allocation of small cases) on seeded loops and, when hypothesis is installed, on hypothesis-generated cases.
"""

import itertools
import math
import random
from fractions import Fraction

import pytest

from gradnorm_rank import apportion_parameters, apportion_ranks

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
    # All score on the FFN matrix: the attention matrices keep the floor (shares exactly 1), the FFN gets 56 / 20 = 2.8
    # -> 2; 16 parameters are left. The FFN's claim 0.8 no longer fits (20), and the attention matrices have no claim:
    # a unit there would put them a whole rank (100 %) past their share, so the 16 stay unspent.
    assert apportion_parameters([0, 0, 1], costs, budget) == [1, 1, 2]


# Exact references for the parameter budget: the continuous shares, solved on the breakpoints of sum(y)(lambda) rather
# than by water-filling, and an exhaustive search over every valid integer allocation.


def _exact_level(weights, budget, lows, highs):
    """y_k = clip(lam * w_k, lows[k], highs[k]) with sum(y) == budget (w_k > 0), exactly: sum(y) is linear in lam
    between consecutive breakpoints lows[k] / w_k, highs[k] / w_k."""
    def total(lam):
        return sum(min(max(lam * w, lo), hi) for w, lo, hi in zip(weights, lows, highs))

    points = sorted({Fraction(0)} | {Fraction(b) / w for w, lo, hi in zip(weights, lows, highs) for b in (lo, hi)})
    for a, b in zip(points, points[1:]):
        ta, tb = total(a), total(b)
        if ta <= budget <= tb:
            lam = a if ta == tb else a + (budget - ta) * (b - a) / (tb - ta)
            return [min(max(lam * w, lo), hi) for w, lo, hi in zip(weights, lows, highs)]
    raise AssertionError(f"budget {budget} outside [{sum(lows)}, {sum(highs)}]")


def exact_parameter_shares(scores, costs, budget, min_rank, caps):
    """The continuous ranks x_k as Fractions: parameters y_k = clip(lam * s_k, min_rank c_k, cap_k c_k), sum(y) == budget,
    x_k = y_k / c_k. All-zero scores count as uniform; when every scored matrix is at its cap, the zero-scored ones
    share what is left uniformly (what `apportion_parameters` does there)."""
    n = len(scores)
    s = [Fraction(v) for v in scores]
    if not any(s):
        s = [Fraction(1)] * n
    lows = [min_rank * c for c in costs]
    highs = [cap * c for cap, c in zip(caps, costs)]
    scored = [k for k in range(n) if s[k] > 0]
    zero = [k for k in range(n) if s[k] == 0]
    y = [Fraction(lo) for lo in lows]
    if sum(highs[k] for k in scored) + sum(lows[k] for k in zero) >= budget:
        part = _exact_level([s[k] for k in scored], budget - sum(lows[k] for k in zero),
                            [lows[k] for k in scored], [highs[k] for k in scored])
        for k, v in zip(scored, part):
            y[k] = v
    else:
        for k in scored:
            y[k] = Fraction(highs[k])
        part = _exact_level([1] * len(zero), budget - sum(highs[k] for k in scored),
                            [lows[k] for k in zero], [highs[k] for k in zero])
        for k, v in zip(zero, part):
            y[k] = v
    return [v / c for v, c in zip(y, costs)]


def valid_allocations(costs, budget, min_rank, caps):
    """Every integer allocation with min_rank <= r_k <= caps[k] and sum_k r_k c_k <= budget."""
    def extend(prefix, left):
        k = len(prefix)
        if k == len(costs):
            yield prefix
            return
        rest = min_rank * sum(costs[k + 1:])
        r = min_rank
        while r <= caps[k] and r * costs[k] + rest <= left:
            yield from extend(prefix + [r], left - r * costs[k])
            r += 1

    yield from extend([], budget)


def distance_to_shares(ranks, shares, scores, costs):
    """The distance `apportion_parameters` minimises, compared lexicographically: the shortfalls x_k - r_k > 0 from the
    largest down (each ranked by size, then score, then earlier module: leaving a higher score short is worse), then
    the parameters spent beyond the shares."""
    short = sorted(((x - r, scores[k], -k) for k, (r, x) in enumerate(zip(ranks, shares)) if r < x), reverse=True)
    beyond = sum((r - x) * c for r, x, c in zip(ranks, shares, costs) if r > x)
    return short, beyond


def check_parameter_properties(scores, costs, budget, min_rank, caps):
    """Guarantees 1 and 2 of `apportion_parameters` against the exact shares; returns (ranks, shares or None)."""
    ranks = apportion_parameters(scores, costs, budget, min_rank=min_rank, max_ranks=caps)
    caps_eff = caps if caps is not None else [budget // c for c in costs]
    assert all(isinstance(r, int) for r in ranks), ranks
    assert all(min_rank <= r <= cap for r, cap in zip(ranks, caps_eff)), (ranks, caps_eff)
    spent = sum(r * c for r, c in zip(ranks, costs))
    assert spent <= budget, (ranks, spent, budget)
    if budget >= sum(cap * c for cap, c in zip(caps_eff, costs)):
        assert ranks == caps_eff  # the caps hold less than the budget: every matrix at its cap
        return ranks, None
    shares = exact_parameter_shares(scores, costs, budget, min_rank, caps_eff)
    # 1. Every rank is the floor or the ceiling of its continuous share: never a whole unit (or more) away.
    assert all(math.floor(x) <= r <= math.ceil(x) for r, x in zip(ranks, shares)), (ranks, [float(x) for x in shares])
    # 2. What stays unspent is less than the unit of every matrix still below its share.
    short = [c for r, x, c in zip(ranks, shares, costs) if r < x]
    assert all(budget - spent < c for c in short), (ranks, budget - spent, short)
    return ranks, shares


SMALL_SCORES = ([1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 1.0, 2.0], [0.0, 1.0, 0.0, 3.0], [0.1, 0.7, 0.2, 0.3])
SMALL_CAPS = (2, 4, 3, 2)


def small_parameter_cases():
    """1-4 matrices with units in {2, 3, 5} (every combination), five score patterns (equal, ranked, tied, zeros,
    decimal floats), uncapped and capped, every third budget from the floor up."""
    for n in range(1, 5):
        for costs in itertools.product((2, 3, 5), repeat=n):
            for scores in SMALL_SCORES:
                for caps in (None, list(SMALL_CAPS[:n])):
                    low = sum(costs)
                    high = sum(c * cap for c, cap in zip(costs, caps)) if caps else low + 12
                    for budget in range(low, high + 1, 3):
                        yield scores[:n], list(costs), budget, 1, caps


def test_parameter_top_up_matches_the_exhaustive_best_allocation_on_all_small_cases():
    """Issue 19, point 10: the leftover goes to the largest fractional claims that fit, one unit each, and no further;
    no valid allocation is closer to the continuous shares (`distance_to_shares`). The old top-up, which cycled
    units to whatever still fitted, misses this on 547 of these 7,660 cases (509 with a rank outside
    [floor, ceil] of its share)."""
    cases = list(small_parameter_cases())
    assert len(cases) == 7660
    for scores, costs, budget, min_rank, caps in cases:
        ranks, shares = check_parameter_properties(scores, costs, budget, min_rank, caps)
        if shares is None:
            continue
        caps_eff = caps if caps is not None else [budget // c for c in costs]
        best = min(distance_to_shares(r, shares, scores, costs) for r in valid_allocations(costs, budget, min_rank, caps_eff))
        assert distance_to_shares(ranks, shares, scores, costs) == best, (scores, costs, budget, caps, ranks)


MINILM_COSTS = [768, 768, 768, 768, 1920, 1920] * 6  # L6-H384: q, k, v, attention output (384 + 384), FFN in/out (384 + 1536)
MINILM_BUDGET = 2 * sum(MINILM_COSTS)  # 82,944: uniform rank 2


def minilm_score_sets():
    rng = random.Random(0)
    yield [1.0] * 36
    yield [0.0] * 35 + [1.0]
    for _ in range(6):
        yield [rng.random() for _ in MINILM_COSTS]
        yield [rng.lognormvariate(0, 2) for _ in MINILM_COSTS]
        yield [rng.choice([0.0, rng.random()]) for _ in MINILM_COSTS]
        hot = rng.sample(range(36), 5)
        yield [rng.lognormvariate(0, 2) if k in hot else 0.0 for k in range(36)]


@pytest.mark.parametrize("cap", [None, 4])
def test_parameter_budget_on_minilm_shapes_no_rank_a_unit_from_its_share(cap):
    caps = None if cap is None else [min(cap, MINILM_BUDGET // c) for c in MINILM_COSTS]
    for scores in minilm_score_sets():
        check_parameter_properties(scores, MINILM_COSTS, MINILM_BUDGET, 1, caps)
    # Equal scores: 2,304 parameters each -> attention x = 3 exactly, FFN x = 1.2. The floors leave 4,608: the first two
    # FFN claims (0.2, 1,920 each) fit, 768 stay. The old top-up gave them to the first attention matrix (rank 4, a
    # whole rank past its share).
    ranks = apportion_parameters([1.0] * 36, MINILM_COSTS, MINILM_BUDGET, max_ranks=caps)
    assert ranks == [3, 3, 3, 3, 2, 2] + [3, 3, 3, 3, 1, 1] * 5
    assert MINILM_BUDGET - sum(r * c for r, c in zip(ranks, MINILM_COSTS)) == 768


def test_exact_ties_go_to_the_higher_score_then_the_earlier_module_not_to_float_noise():
    # Shares 1.6, 5.6, 2.8: the spare ranks go to 0.8, then to the tie 0.6 = 0.6 -> the higher score (module 1). In
    # floats the remainders are 0.6000000000000001 and 0.5999999999999996, which gave it to module 0.
    assert apportion_ranks([16, 56, 28], 10) == [1, 6, 3]
    # Parameter shares 16/3, 64/3, 16/3 -> ranks 2.67, 10.67, 1.07: floors leave 3; claims 2/3 = 2/3 tie between
    # module 0 (score 1) and module 1 (score 4): the higher score gets the unit (float noise gave it to module 0).
    assert apportion_parameters([1, 4, 1], [2, 2, 5], 32) == [2, 11, 1]
    # Ranks 16/3, 16/3, 4/3: three claims of 1/3, two units fit: the higher scores, and between the equal scores the
    # earlier module (float noise gave one to the lowest score, module 2).
    assert apportion_parameters([8, 8, 2], [2, 2, 2], 24) == [6, 5, 1]
    # Claims are exact and ties go by score, so with distinct scores the result does not depend on the modules' order.
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(2, 6)
        scores = [s / 10 for s in rng.sample(range(1, 40), n)]
        costs = [rng.choice([2, 3, 5]) for _ in range(n)]
        budget = sum(costs) + rng.randint(0, 30)
        ranks = apportion_parameters(scores, costs, budget)
        perm = rng.sample(range(n), n)
        assert apportion_parameters([scores[k] for k in perm], [costs[k] for k in perm], budget) == [ranks[k] for k in perm]
        assert apportion_ranks([scores[k] for k in perm], 3 * n) == [apportion_ranks(scores, 3 * n)[k] for k in perm]


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
    # With equal costs a parameter budget is a rank budget times the cost: the same shares, claims and ranks.
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
