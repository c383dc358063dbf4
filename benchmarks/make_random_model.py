#!/usr/bin/env python3
"""Save a randomly initialised DeBERTa-v3-base-shaped encoder with a given tokenizer, for run_glue_peft.py's
--model_name_or_path. The shape is benchmarks/common.DEBERTA_V3_BASE (hidden 768, 12 layers, 12 heads, FFN 3072,
relative attention) except the vocabulary, which is the tokenizer's, so real text can be fed. Built on the machine
that uses it: pretrained weights never travel.

    python3 -m benchmarks.make_random_model TOKENIZER_DIR OUT_DIR [--tiny]
"""

import argparse
import sys

from benchmarks.common import DEBERTA_V3_BASE, TINY_DEBERTA


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tokenizer", help="A saved tokenizer directory (AutoTokenizer.from_pretrained).")
    p.add_argument("out", help="Where to save the model and the tokenizer.")
    p.add_argument("--tiny", action="store_true", help="The tiny DeBERTa of the tests (common.TINY_DEBERTA) instead.")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    shape = {**(TINY_DEBERTA if args.tiny else DEBERTA_V3_BASE), "vocab_size": len(tokenizer)}
    torch.manual_seed(0)
    model = DebertaV2Model(DebertaV2Config(**shape, pooler_hidden_size=shape["hidden_size"]))
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"random DeBERTa-v2 ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, vocab "
          f"{shape['vocab_size']}): {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
