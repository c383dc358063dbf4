"""The share of the oracle's gain over uniform LoRA that each other arm recovers, from a control study's final runs:
(arm - lora) / (oracle - lora) on mean scores (the task score compare_runs ranks by: records.Results.score, the mean
of the task's main metrics), with the seed-bootstrap interval of analysis.stats.share_of_gain (the oracle in
AdaLoRA's place there: no interval unless the oracle beats LoRA in at least 97.5 % of the resamples). First, oracle
vs lora over every seed present: Welch's t-test and, since both arms ran the same seeds (common random numbers: the
same batches and head per seed), the t-test paired by seed (analysis.stats.paired_t, as compare_runs.py reports it);
each arm's row has its own paired t against lora.

    python -m launch.oracle_share FINAL_DIR [ARM ...]      # default arms: glora_params adalora_params
"""

import sys
from pathlib import Path

from analysis.comparable import data_content
from analysis.stats import paired_t, share_of_gain, welch
from harness.glue_tasks import GLUE_TASKS
from harness.records import RESULTS_FILE, RUN_ARGS_FILE, Results, RunArgs


def seed_scores(final_dir, arm) -> dict:
    """{seed: score} of one arm's final runs. Two runs of one arm and seed (two data contents, a copied folder) are
    refused in one line: keyed by seed, one would silently replace the other."""
    out, where = {}, {}
    for path in sorted(Path(final_dir).glob(f"*/{RESULTS_FILE}")):
        results = Results.read(path.parent)
        if results.arm != arm:
            continue
        if results.seed in out:
            raise SystemExit(f"{final_dir}: arm {arm} has two runs of seed {results.seed} ({where[results.seed]}, "
                             f"{path.parent}): the share is computed over one run per arm and seed; give a folder of "
                             "one study's final runs.")
        out[results.seed], where[results.seed] = results.score(GLUE_TASKS[results.task]), path.parent
    return out


def data_contents(final_dir) -> set:
    """The data contents (analysis.comparable.data_content) the runs in final_dir recorded; runs without one are not
    counted."""
    contents = set()
    for path in sorted(Path(final_dir).glob(f"*/{RUN_ARGS_FILE}")):
        content = data_content(RunArgs.read(path.parent))
        if content is not None and (path.parent / RESULTS_FILE).is_file():
            contents.add(content)
    return contents


def main(final_dir, arms):
    contents = data_contents(final_dir)
    if len(contents) > 1:
        raise SystemExit(f"{final_dir}: its runs trained on {len(contents)} data contents ({'; '.join(sorted(contents))}):"
                         " compare one study's final runs, on one data.")
    by_seed = {arm: seed_scores(final_dir, arm) for arm in ("lora", "oracle")}
    missing = [arm for arm, runs in by_seed.items() if not runs]
    if missing:
        raise SystemExit(f"{final_dir}: no finished run of arm {' or '.join(missing)} (all_results.json with "
                         "\"arm\": \"lora\" / \"oracle\" one folder down): the share of the oracle's gain needs both.")
    lora, oracle = list(by_seed["lora"].values()), list(by_seed["oracle"].values())
    print(f"lora {len(lora)} seeds, mean {100 * sum(lora) / len(lora):.2f}; oracle {len(oracle)} seeds, mean "
          f"{100 * sum(oracle) / len(oracle):.2f}; oracle - lora {100 * (sum(oracle) / len(oracle) - sum(lora) / len(lora)):+.2f}")
    paired = sorted(set(by_seed["lora"]) & set(by_seed["oracle"]))
    diffs = [by_seed["oracle"][s] - by_seed["lora"][s] for s in paired]
    pair = paired_versus_lora(by_seed["oracle"], by_seed["lora"])
    print(f"oracle vs lora over all seeds: Welch p {welch(oracle, lora).p:.3g}; paired by seed ({pair.n} seeds, "
          f"differences {', '.join(f'{100 * d:+.2f}' for d in diffs)}): t {pair.t:.3g}, p {pair.p:.3g}")
    print("| arm | seeds | mean score (x100) | arm - lora | oracle - lora | share of the oracle's gain | 95% interval | "
          "note | paired t vs lora: p (seeds) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in arms:  # on the seeds that lora, the oracle and the arm all ran
        runs = seed_scores(final_dir, arm)
        seeds = sorted(set(runs) & set(paired))
        base, best, own = ([by_seed["lora"][k] for k in seeds], [by_seed["oracle"][k] for k in seeds],
                           [runs[k] for k in seeds])
        s = share_of_gain(base, best, own)
        interval = f"[{s.ci_low:.2f}, {s.ci_high:.2f}]" if s.ci_low is not None else "none"
        share = f"{s.share:.2f}" if s.share is not None else "undefined"
        own_pair = paired_versus_lora(runs, by_seed["lora"])
        print(f"| {arm} | {','.join(map(str, seeds))} | {100 * sum(own) / len(own):.2f} | {100 * s.glora_gain:+.2f} | "
              f"{100 * s.adalora_gain:+.2f} | {share} | {interval} | {s.note.replace('AdaLoRA', 'oracle')} | "
              f"{own_pair.p:.3g} ({own_pair.n}) |")


def paired_versus_lora(arm: dict, lora: dict):
    """analysis.stats.PairedT of an arm's {seed: score} against lora's, over the seeds both ran."""
    return paired_t(list(arm.values()), list(lora.values()), list(arm), list(lora))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["glora_params", "adalora_params"])
