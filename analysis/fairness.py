"""Is a comparison like with like? Adapter capacity (effective adapter parameters, no task head) and
tuning effort (run_args.json's "hpo" block) per arm of a comparable group."""
import math

from analysis.runs import arm_name, blocks, place
from search.pruning import PRUNING_RATE_MARGIN, pruning_rate_gap

CAPACITY_TOLERANCE = 0.02  # adapter parameters may differ by this fraction of the smaller before a pair is flagged


def unequal_capacity(groups):
    """'' when every group's mean effective adapter parameters are within CAPACITY_TOLERANCE of each
    other (or unknown), else a note naming them."""
    params = {arm_name(g.arm, g.method): g.mean_of("adapter_params_effective") for g in groups}
    known = {m: p for m, p in params.items() if math.isfinite(p) and p > 0}
    if len(known) < 2 or max(known.values()) <= (1 + CAPACITY_TOLERANCE) * min(known.values()):
        return ""
    listed = ", ".join(f"{m} {p:,.0f}" for m, p in known.items())
    return f"unequal capacity (adapter params {listed}; > {CAPACITY_TOLERANCE:.0%} apart)"


def hpo_summary(group):
    """'n_trials trials (complete, pruned), tuned on X' over the group's runs; 'not tuned' without hpo blocks."""
    records = list(dict.fromkeys(r.hpo for r in group.runs))
    if records == [None]:
        return "not tuned"
    return "; ".join("not tuned" if h is None else
                     f"{h.n_trials} trials ({h.n_complete} complete, {h.n_pruned} pruned), tuned on {h.tuned_on}"
                     for h in records)


def tuning_warnings(groups, pruning_rate_margin: float = PRUNING_RATE_MARGIN):
    """Warning lines for each comparable group whose arms had unequal tuning effort, pruning rates more than
    `pruning_rate_margin` apart, or were tuned on dev."""
    out = []
    for (task, budget, group), gs in blocks(groups).items():
        trials = {arm_name(g.arm, g.method): {r.hpo.n_trials if r.hpo else 0 for r in g.runs} for g in gs}
        where = f"{place(task, group)} (R_total = {budget})"
        if any(trials.values()) and len({frozenset(v) for v in trials.values()}) > 1:
            listed = ", ".join(f"{m} {'/'.join(map(str, sorted(v)))}" for m, v in trials.items())
            untuned = [m for m, v in trials.items() if 0 in v]
            what = f"{', '.join(untuned)} not tuned" if untuned else "different numbers of trials"
            out.append(f"{where}: unequal tuning effort ({what}; trials per method: {listed}, 0 = not tuned)")
        rates = {}
        for g in gs:
            studies = list(dict.fromkeys(r.hpo for r in g.runs if r.hpo and r.hpo.n_pruned >= 0))
            if studies:
                rates[arm_name(g.arm, g.method)] = (sum(h.n_pruned for h in studies), sum(h.n_trials for h in studies))
        gap = pruning_rate_gap(rates, pruning_rate_margin)
        if gap:
            out.append(f"{where}: {gap}")
        on_dev = [arm_name(g.arm, g.method) for g in gs if any(r.hpo and r.hpo.tuned_on == "dev" for r in g.runs)]
        if on_dev:
            out.append(f"{where}: {', '.join(on_dev)} tuned on the dev set: dev numbers are optimistic")
    return out
