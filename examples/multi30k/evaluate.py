#!/usr/bin/env python
"""Score fairseq-generate output against the raw (untokenised, cased) reference.

    python examples/multi30k/evaluate.py GEN_OUTPUT --ref work/raw/test.de [--bpe sentencepiece]

Reads the H- lines (hypotheses, first per id), sorts them by sample id, undoes the subword
segmentation and reports two sacreBLEU scores, labelled:

  * "sacreBLEU (cased, detok, 13a)": standard sacreBLEU on detokenised cased text.
  * "papers' BLEU (lowercased, dedup)": the NAT papers' variant -- hypothesis and reference
    lowercased and consecutive duplicate words removed from the hypothesis (after the subwords
    are joined, before Moses detokenisation), then sacreBLEU with tokenize 13a.

Works with or without fairseq-generate --post-process/--remove-bpe (already-joined text is left
as it is). --bpe fastbpe: removes "@@ " and Moses-detokenises (needs sacremoses).
Options: --gen-log FILE (stderr of fairseq-generate: speed line), --out-hyp FILE (detokenised hypotheses in id order), --json FILE (scores + speed).
"""
import argparse
import json
import re
import sys

import sacrebleu


def read_hypotheses(path, log_path=None):
    """H- lines by sample id, and fairseq-generate's "Translated N sentences ..." line (stdout or log)."""
    hyps = {}
    speed = None
    for p in [path] + ([log_path] if log_path else []):
        with open(p, encoding="utf-8") as f:
            for line in f:
                if p == path and line.startswith("H-"):
                    fields = line.rstrip("\n").split("\t")
                    idx = int(fields[0][2:])
                    hyps.setdefault(idx, fields[2] if len(fields) > 2 else "")
                elif "Translated " in line and "sentences" in line:
                    speed = line[line.index("Translated "):].strip()
    return hyps, speed


def dedup(tokens):
    return [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]


class Decoder:
    def __init__(self, bpe, lang):
        self.bpe = bpe
        if bpe == "fastbpe":
            from sacremoses import MosesDetokenizer

            self.detok = MosesDetokenizer(lang=lang)

    def __call__(self, text, remove_duplicates=False):
        """Subword tokens -> text. ``remove_duplicates`` drops a word repeated right after itself,
        on words (subwords joined first), so that a subword repeated inside a correct word
        ("s@@ s@@") is never removed."""
        tokens = text.split()
        if self.bpe == "sentencepiece" and any("\u2581" in t for t in tokens):
            tokens = "".join(tokens).replace("\u2581", " ").split()  # pieces -> words
        elif self.bpe == "fastbpe":
            tokens = re.sub(r"@@( |$)", "", " ".join(tokens)).split()  # BPE -> Moses tokens
        if remove_duplicates:
            tokens = dedup(tokens)
        if self.bpe == "fastbpe":
            return self.detok.detokenize(tokens)
        return " ".join(tokens)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gen_output", help="fairseq-generate stdout ('-' for stdin)")
    p.add_argument("--ref", required=True, help="raw reference file, one sentence per line")
    p.add_argument("--bpe", choices=["sentencepiece", "fastbpe", "none"], default="sentencepiece")
    p.add_argument("--lang", default="de", help="target language (Moses detokeniser)")
    p.add_argument("--gen-log", help="fairseq-generate stderr, to pick up its speed line")
    p.add_argument("--out-hyp", help="write detokenised hypotheses here (id order)")
    p.add_argument("--json", help="write the scores here")
    p.add_argument("--name", default="", help="label printed with the scores")
    a = p.parse_args()

    hyps, speed = read_hypotheses("/dev/stdin" if a.gen_output == "-" else a.gen_output, a.gen_log)
    refs = [line.rstrip("\n") for line in open(a.ref, encoding="utf-8")]
    missing = [i for i in range(len(refs)) if i not in hyps]
    if missing or len(hyps) != len(refs):
        sys.exit(f"{len(hyps)} hypotheses for {len(refs)} references (missing ids e.g. {missing[:5]})")
    decode = Decoder(a.bpe, a.lang)
    raw = [hyps[i] for i in range(len(refs))]
    cased = [decode(h) for h in raw]
    papers = [decode(h, remove_duplicates=True).lower() for h in raw]

    bleu_cased = sacrebleu.metrics.BLEU(tokenize="13a")
    s1 = bleu_cased.corpus_score(cased, [refs])
    bleu_lc = sacrebleu.metrics.BLEU(tokenize="13a", lowercase=True)
    s2 = bleu_lc.corpus_score(papers, [refs])
    label = f"[{a.name}] " if a.name else ""
    print(f"{label}sacreBLEU (cased, detok, 13a)           = {s1.score:.2f}  ({s1}; {bleu_cased.get_signature()})")
    print(f"{label}papers' BLEU (lowercased, dedup, 13a)   = {s2.score:.2f}  ({s2}; {bleu_lc.get_signature()})")
    if speed:
        print(f"{label}speed: {speed}")
    if a.out_hyp:
        with open(a.out_hyp, "w", encoding="utf-8") as f:
            f.writelines(h + "\n" for h in cased)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"name": a.name, "sentences": len(refs),
                       "sacrebleu_cased_13a": round(s1.score, 2), "sacrebleu_cased_13a_full": str(s1),
                       "signature_cased": str(bleu_cased.get_signature()),
                       "papers_lowercased_dedup_13a": round(s2.score, 2),
                       "papers_full": str(s2), "signature_papers": str(bleu_lc.get_signature()),
                       "generate_speed": speed}, f, indent=2)


if __name__ == "__main__":
    main()
