#!/usr/bin/env python
"""Cut the quickstart's SST-2 sample (data/glue/sst2) from a full GLUE SST-2 copy in the HF `glue` schema.

    python data/make_sample.py /work/shared/data/glue/sst2      # writes data/glue/sst2/{train,validation}.parquet

train: N rows drawn without replacement with a fixed seed, kept in their original order (with their original
`idx`); validation: the whole dev set, unchanged. The HF feature metadata (ClassLabel names) is kept.
"""

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "glue" / "sst2"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Folder holding the full SST-2 train.parquet and validation.parquet.")
    parser.add_argument("--train_rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train = pq.read_table(args.source / "train.parquet")
    rows = np.sort(np.random.default_rng(args.seed).choice(train.num_rows, size=args.train_rows, replace=False))
    OUT.mkdir(parents=True, exist_ok=True)
    pq.write_table(train.take(rows), OUT / "train.parquet")
    pq.write_table(pq.read_table(args.source / "validation.parquet"), OUT / "validation.parquet")
    for split in ("train", "validation"):
        table = pq.read_table(OUT / f"{split}.parquet")
        labels = np.bincount(table.column("label").to_numpy(), minlength=2)
        print(f"{OUT / split}.parquet: {table.num_rows} rows, negative {labels[0]}, positive {labels[1]}")


if __name__ == "__main__":
    main()
