"""Run run_glue_peft.main under torchrun and save each process's trainable parameters after training, so that the
DDP test can compare replicas. Usage: torchrun ... tests/ddp_driver.py OUT_DIR [run_glue_peft flags...]
(the project root must be on PYTHONPATH)."""

import os
import sys

import torch

import run_glue_peft


def main():
    out, flags = sys.argv[1], sys.argv[2:]
    train = run_glue_peft.GlueTrainer.train

    def train_and_dump(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        params = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(params, os.path.join(out, f"params_rank{os.environ['RANK']}.pt"))
        return result

    run_glue_peft.GlueTrainer.train = train_and_dump
    run_glue_peft.main(flags)


if __name__ == "__main__":
    main()
