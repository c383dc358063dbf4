"""The share of the oracle's gain over uniform LoRA that each other arm recovers, from a control study's final runs:
(arm - lora) / (oracle - lora) on mean scores (all_results.json's eval_combined_score, the mean of the task's main
metrics, as compare_runs scores), with the seed-bootstrap interval of analysis.stats.share_of_gain (the oracle in
AdaLoRA's place there: no interval unless the oracle beats LoRA in at least 97.5 % of the resamples).

    python -m launch.oracle_share FINAL_DIR [ARM ...]      # default arms: glora_params adalora_params
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from analysis.stats import share_of_gain


def scores_by_arm(final_dir) -> dict:
    scores = defaultdict(list)
    for results in sorted(Path(final_dir).glob("*/all_results.json")):
        record = json.loads(results.read_text())
        scores[record["arm"]].append(record["eval_combined_score"])
    return scores


def main(final_dir, arms):
    scores = scores_by_arm(final_dir)
    lora, oracle = scores["lora"], scores["oracle"]
    print(f"lora {len(lora)} seeds, mean {100 * sum(lora) / len(lora):.2f}; oracle {len(oracle)} seeds, mean "
          f"{100 * sum(oracle) / len(oracle):.2f}; oracle - lora {100 * (sum(oracle) / len(oracle) - sum(lora) / len(lora)):+.2f}")
    print("| arm | seeds | mean score (x100) | arm - lora | share of the oracle's gain | 95% interval | note |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        s = share_of_gain(lora, oracle, scores[arm])
        interval = f"[{s.ci_low:.2f}, {s.ci_high:.2f}]" if s.ci_low is not None else "none"
        share = f"{s.share:.2f}" if s.share is not None else "undefined"
        print(f"| {arm} | {len(scores[arm])} | {100 * sum(scores[arm]) / len(scores[arm]):.2f} | {100 * s.glora_gain:+.2f} | "
              f"{share} | {interval} | {s.note.replace('AdaLoRA', 'oracle')} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["glora_params", "adalora_params"])
