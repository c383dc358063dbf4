"""How tests/data/old_runs/ was made: real runs of run_glue_peft.py at commit a15be9c (before records.py), on a tiny
random BERT and the tests' sst2 fixture, two seeds of four arms; kept are the records compare_runs.py reads, with the
machine's temporary paths replaced by short names. Run from a checkout of that commit:

    python tests/data/make_old_runs.py OUT
"""

import shutil
import sys
import tempfile
from pathlib import Path

import run_glue_peft
from tests.conftest import save_tiny_model, trial_args, write_glue_fixture

ARMS = {"lora": ("lora",), "adalora": ("adalora", "--tinit", "2", "--tfinal", "4", "--deltaT", "1"),
        "glora": ("glora",), "glora_params": ("glora", "--budget_unit", "params")}
KEPT = ("run_args.json", "all_results.json", "ranks.json", "predictions_validation.csv")


def main(out):
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny_bert", "bert")
        data = write_glue_fixture(tmp / "glue", "sst2", n_train=96, n_eval=40)
        for arm, (method, *extra) in ARMS.items():
            for seed in (1, 2):
                run_dir = tmp / "runs" / f"{arm}_seed{seed}"
                run_glue_peft.main(trial_args(model, data, "sst2", method, run_dir, "--max_steps", "12",
                                              "--seed", str(seed), *extra))
                kept = out / run_dir.name
                kept.mkdir(parents=True)
                for name in KEPT:
                    text = (run_dir / name).read_text()
                    for path, short in ((run_dir, f"runs/{run_dir.name}"), (model, "tiny_bert"), (data, "glue")):
                        text = text.replace(str(path), short)
                    (kept / name).write_text(text)
        shutil.rmtree(tmp / "runs")


if __name__ == "__main__":
    main(sys.argv[1])
