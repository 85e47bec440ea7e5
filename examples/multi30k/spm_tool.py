#!/usr/bin/env python
"""Tiny sentencepiece CLI (the pip package ships no spm_train/spm_encode binaries).

  spm_tool.py train  --input a.txt,b.txt --model-prefix PREFIX --vocab-size 8000
  spm_tool.py encode --model PREFIX.model < raw.txt > pieces.txt
  spm_tool.py decode --model PREFIX.model < pieces.txt > raw.txt
"""
import argparse
import sys

import sentencepiece as spm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cmd", choices=["train", "encode", "decode"])
    p.add_argument("--input")
    p.add_argument("--model-prefix")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="unigram")
    p.add_argument("--model")
    a = p.parse_args()
    if a.cmd == "train":
        spm.SentencePieceTrainer.train(
            input=a.input, model_prefix=a.model_prefix, vocab_size=a.vocab_size,
            model_type=a.model_type, character_coverage=1.0,
            # fairseq adds its own <s>/<pad>/</s>/<unk>; keep sentencepiece's unk only.
            bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False,
            num_threads=1, minloglevel=1)
        return
    sp = spm.SentencePieceProcessor(model_file=a.model)
    out = sys.stdout
    for line in sys.stdin:
        line = line.rstrip("\n")
        if a.cmd == "encode":
            out.write(" ".join(sp.encode(line, out_type=str)) + "\n")
        else:
            out.write(sp.decode(line.split()) + "\n")


if __name__ == "__main__":
    main()
