"""The pilot runs of docs/controls.md ("How the design was reached") as Markdown tables: per pilot folder (holding
lora/ and oracle/ runs) the arm, the data's target and read-out, rate, epochs and dev score; then per data folder the
read-out's unexplained share and the linear probes (its ground_truth.json).

    python -m launch.pilot_table PILOT_DIR [PILOT_DIR ...] --data DATA_DIR [DATA_DIR ...]     # from the repo root
"""

import json
import sys
from pathlib import Path

from harness.records import Results, RunArgs


def main(argv):
    split = argv.index("--data")
    pilots, datas = argv[:split], argv[split + 1:]
    print("| pilot | arm | data | read-out | lr | epochs | dev score (x100) | adapter params | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in pilots:
        for arm in ("lora", "oracle"):
            r, a = Results.read(Path(d, arm)), RunArgs.read(Path(d, arm))
            truth = json.loads((Path(a.data["dataset_dir"]) / "ground_truth.json").read_text())
            metric = "pearson" if r.task == "stsb" else "accuracy"
            print(f"| {d} | {arm} | {truth['target']} | {truth['readout'].get('direction', 'least_predictable')} | "
                  f"{a.training['learning_rate']:g} | {a.training['num_train_epochs']:g} | "
                  f"{metric} {100 * r.metrics['eval_' + metric]:.2f} | {r.adapter_params_start:,} | "
                  f"{r.train_runtime:.0f} |")
    print()
    print("| data | target | read-out | unexplained share of the read-out's variance | linear probe on dev: base features "
          "| teacher features |")
    print("|---|---|---|---|---|---|")
    for data in datas:
        t = json.loads(Path(data, "ground_truth.json").read_text())
        key = next(iter(t["probes"]["base_features"]))
        print(f"| {data} | {t['target']} | {t['readout'].get('direction', 'least_predictable')} | "
              f"{t['readout']['unexplained_share']:.4f} | {key} {t['probes']['base_features'][key]:.4f} | "
              f"{t['probes']['teacher_features'][key]:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
