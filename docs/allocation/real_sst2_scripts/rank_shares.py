"""Where each allocating arm of the real-SST-2 study put its rank, from the committed records: the share of the final
rank per matrix type and per layer (all seeds pooled), the largest rank of any matrix, and GLoRA's own overhead
(ranks.json glora.method_overhead_seconds) as a share of train_runtime.

    python3 docs/allocation/real_sst2_scripts/rank_shares.py docs/allocation/real_sst2/final
"""
import collections
import json
import sys
from pathlib import Path

final = Path(sys.argv[1])
print("| arm | seeds | max rank | " + " | ".join(["query", "key", "value", "attention_output", "ffn_in", "ffn_out"])
      + " | layers 0-5 | GLoRA overhead / train_runtime, mean [min, max] |")
print("|---" * 11 + "|")
for arm in ["glora_rank", "glora_cal", "glora_pru", "glora_un", "adalora"]:
    types, layers, top, shares = collections.Counter(), collections.Counter(), 0, []
    runs = sorted(final.glob(f"{arm}_seed*/ranks.json"))
    for path in runs:
        record = json.loads(path.read_text())
        for module in record["modules"].values():
            types[module["matrix"]] += module["final_rank"]
            layers[module["layer"]] += module["final_rank"]
            top = max(top, module["final_rank"])
        if "glora" in record:
            runtime = json.loads((path.parent / "all_results.json").read_text())["train_runtime"]
            shares.append(100 * record["glora"]["method_overhead_seconds"] / runtime)
    total = sum(types.values())
    cells = [f"{types[t] / total:.2f}" for t in ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]]
    overhead = f"{sum(shares) / len(shares):.2f} % [{min(shares):.2f}, {max(shares):.2f}]" if shares else ""
    print(f"| {arm} | {len(runs)} | {top} | " + " | ".join(cells) + " | "
          + " ".join(f"{layers[i] / total:.2f}" for i in sorted(layers)) + f" | {overhead} |")
