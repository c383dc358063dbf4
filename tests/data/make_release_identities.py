"""How tests/data/release_identities/ was made: the run_identity.json of checkpoint-2 of one short run per method
(tiny random BERT, the tests' sst2 fixture, 4 steps, a checkpoint every 2), written once by the harness of the
release 6534415 (`<method>_6534415.json`) and once by the harness after the merges of issues 26-28
(`<method>_now.json`, same command), with the machine's temporary paths replaced by short names. Run from a checkout
of each commit (`git archive 6534415 | tar -x -C OLD`):

    PYTHONPATH=. python tests/data/make_release_identities.py OUT SUFFIX
"""

import sys
import tempfile
from pathlib import Path

import run_glue_peft
from tests.conftest import save_tiny_model, trial_args, write_glue_fixture

ARMS = {"lora": (), "adalora": ("--tinit", "1", "--tfinal", "1", "--deltaT", "1"), "glora": ("--glora_warmup_steps", "3")}
STEPS = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")


def main(out, suffix):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_model(tmp / "tiny_bert", "bert")
        data = write_glue_fixture(tmp / "glue", "sst2")
        for method, extra in ARMS.items():
            run_glue_peft.main(trial_args(model, data, "sst2", method, tmp / method, *STEPS, *extra))
            text = (tmp / method / "checkpoint-2" / "run_identity.json").read_text()
            (out / f"{method}_{suffix}.json").write_text(text.replace(str(model), "tiny_bert").replace(str(tmp / "glue"), "glue"))


if __name__ == "__main__":
    main(*sys.argv[1:])
