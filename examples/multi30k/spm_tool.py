#!/usr/bin/env python
"""Tiny sentencepiece CLI (the pip package ships no spm_train/spm_encode binaries).

  spm_tool.py train  --input a.txt,b.txt --model-prefix PREFIX --vocab-size 8000
  spm_tool.py encode --model PREFIX.model < raw.txt > pieces.txt
  spm_tool.py decode --model PREFIX.model < pieces.txt > raw.txt
  spm_tool.py check  a.txt b.txt ...        (every line valid UTF-8, or one line naming the first
                                            that is not; prepare.sh runs it on the raw text)

Text must be UTF-8: a line that is not (in --input, on stdin, or in check's files) ends the
command with one line, ``spm_tool.py: error: FILE line N is not UTF-8 (byte 0xNN at column C)``,
and exit status 2.
"""
import argparse
import sys


class NotUTF8(Exception):
    pass


def utf8_lines(stream, name):
    """Decoded lines of a binary stream (newline kept off); NotUTF8 names the first bad one."""
    for number, raw in enumerate(stream, 1):
        try:
            yield raw.decode("utf-8").rstrip("\n")
        except UnicodeDecodeError as err:
            raise NotUTF8(f"{name} line {number} is not UTF-8 (byte 0x{raw[err.start:err.start + 1].hex()} "
                          f"at column {err.start + 1}); convert it first (e.g. iconv -f latin1 -t utf-8)")


def check_files(paths):
    for path in paths:
        try:
            with open(path, "rb") as f:
                for _ in utf8_lines(f, path):
                    pass
        except OSError as err:
            raise NotUTF8(f"{path}: {err.strerror}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cmd", choices=["train", "encode", "decode", "check"])
    p.add_argument("files", nargs="*", help="check: the text files")
    p.add_argument("--input")
    p.add_argument("--model-prefix")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", default="unigram")
    p.add_argument("--model")
    a = p.parse_args()
    if a.cmd == "check":
        check_files(a.files)
        return
    import sentencepiece as spm

    if a.cmd == "train":
        check_files(a.input.split(","))  # sentencepiece would stop in C++ on a bad byte
        spm.SentencePieceTrainer.train(
            input=a.input, model_prefix=a.model_prefix, vocab_size=a.vocab_size,
            model_type=a.model_type, character_coverage=1.0,
            # fairseq adds its own <s>/<pad>/</s>/<unk>; keep sentencepiece's unk only.
            bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False,
            num_threads=1, minloglevel=1)
        return
    sp = spm.SentencePieceProcessor(model_file=a.model)
    out = sys.stdout
    for line in utf8_lines(sys.stdin.buffer, "standard input"):
        if a.cmd == "encode":
            out.write(" ".join(sp.encode(line, out_type=str)) + "\n")
        else:
            out.write(sp.decode(line.split()) + "\n")


if __name__ == "__main__":
    try:
        main()
    except NotUTF8 as err:
        sys.stdout.flush()
        print(f"spm_tool.py: error: {err}", file=sys.stderr)
        sys.exit(2)
