#!/usr/bin/env python
"""Refinement shown step by step (the talk's qualitative tables), from fairseq-generate's
``--retain-iter-history`` output.

    python scripts/qualitative.py --data-bin examples/multi30k/work/data-bin --gen-subset test \
        --ref examples/multi30k/work/raw/test.de --refine-nat examples/multi30k/models/refine_nat.pt \
        --lanmt examples/multi30k/models/lanmt.pt --score-net examples/multi30k/models/score_net.pt \
        --out examples/multi30k/results

1. refine_nat (``--refine-nat``): ``fairseq-generate --decoding refine --iter-decode-max-iter N
   --iter-decode-force-max-iter --retain-iter-history`` (N = ``--refine-steps``, default 10);
   the E- lines give decoder 1's output (step 0) and the output after every refinement step.
   Shown: decoder 1, steps ``--show-steps`` (default 1,2,4,8) and the last step, each with the
   words new since the row above in **bold** (dropped ones ~~struck through~~), for ``--num``
   (default 6) sentences with source and reference. Rule: among sentences of at most
   ``--max-words`` source words, those whose output changes most between decoder 1 and the
   last step (word edits), ties by more word edits summed over all steps, then by id.
2. Delta inference (``--lanmt``, ``--decoding delta --iter-decode-max-iter K``, the plain chain,
   K = ``--delta-steps``) and score inference (``--score-net``, ``--decoding score --score-steps
   n``): "original" = the prior mean's output (the history's step 0), "refined" = the final
   output. Shown: ``--pairs`` (default 3) pairs per method with non-local changes, words not
   matched by the in-order alignment of the two outputs in **bold**. Rule: among changed
   sentences of at most ``--max-words`` source words, the most moved words (words both outputs
   hold that the in-order alignment cannot match, i.e. that changed places), ties by more
   separate edited places, then by id; a pair needs a moved word or edits in two or more places.

Writes OUT/qualitative.md (the tables, the rules, corpus BLEU of the shown steps, the commands)
and OUT/qualitative.json (every sentence's outputs per step, for other selections).
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import (REPO, USER_DIR, command_line, corpus_bleu, relative,  # noqa: E402
                     remove_bpe_arg, write_json)
from figures.text import (changed_flags, edit_spans, marked, marked_change, md_escape,  # noqa: E402
                          moved_words, word_edits)

OUT_NAME = "qualitative"


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-bin", required=True, help="binarised data the models were trained with")
    p.add_argument("--gen-subset", default="test", help="split to decode (default test)")
    p.add_argument("--ref", help="raw (detokenised) reference file of --gen-subset (default: "
                   "fairseq-generate's T- lines)")
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="fairseq-generate --remove-bpe (sentencepiece, subword_nmt; none for "
                   "word-level data)")
    p.add_argument("--refine-nat", help="refine_nat checkpoint")
    p.add_argument("--lanmt", help="LaNMT checkpoint: delta inference (and the score network's "
                   "--lanmt-path)")
    p.add_argument("--score-net", help="score_net (or energy_net) checkpoint: score inference")
    p.add_argument("--refine-steps", type=int, default=10, help="refine_nat: refinement steps run")
    p.add_argument("--show-steps", default="1,2,4,8",
                   help="refine_nat: steps shown between decoder 1 and the last step")
    p.add_argument("--num", type=int, default=6, help="refine_nat: sentences shown")
    p.add_argument("--delta-steps", type=int, default=4, help="delta inference: at most K steps")
    p.add_argument("--score-steps", type=int, default=1, help="score inference: n steps")
    p.add_argument("--pairs", type=int, default=3, help="original/refined pairs per method")
    p.add_argument("--max-words", type=int, default=30,
                   help="the rules consider sentences of at most this many source words")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cuda", action="store_true", help="decode on the GPU")
    p.add_argument("--out", required=True, help="output folder (made if missing)")
    return p


# -- fairseq-generate ------------------------------------------------------------------------------
def generate(a, ckpt, options):
    """Run fairseq-generate with the history kept; returns (command, {id: record}) where a
    record holds the source, reference, final output and the detokenised history."""
    args = [a.data_bin, "--user-dir", USER_DIR, "--task", "nar_translation", "--path", ckpt,
            "--gen-subset", a.gen_subset, "--max-tokens", str(a.max_tokens), "--num-workers", "0",
            "--retain-iter-history", *options]
    if remove_bpe_arg(a.remove_bpe):
        args += ["--remove-bpe", a.remove_bpe]
    if not a.cuda:
        args.append("--cpu")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    proc = subprocess.run([sys.executable, "-m", "fairseq_cli.generate", *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"fairseq-generate failed on {ckpt}:\n{proc.stderr[-3000:]}")
    shown = "fairseq-generate " + " ".join(relative(x) if os.path.exists(x) else x for x in args)
    return shown.replace(USER_DIR, "nar_refine"), parse_generate(proc.stdout, remove_bpe_arg(a.remove_bpe))


def parse_generate(stdout, remove_bpe):
    """{id: {"source", "target", "output", "history": [text per step]}} from S/T/D/E lines."""
    from fairseq.data.data_utils import post_process

    recs = {}
    for line in stdout.splitlines():
        m = re.match(r"^([STDE])-(\d+)(?:_(\d+))?\t(.*)$", line)
        if not m:
            continue
        kind, sid, step, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        r = recs.setdefault(sid, {"history": {}})
        if kind == "S":
            r["source"] = rest
        elif kind == "T":
            r["target"] = rest
        elif kind == "D":
            r["output"] = rest.split("\t", 1)[1] if "\t" in rest else ""
        else:
            r["history"][int(step)] = post_process(rest, remove_bpe) if remove_bpe else rest
    for r in recs.values():
        r["history"] = [r["history"][k] for k in sorted(r["history"])]
    return recs


# -- refine_nat ------------------------------------------------------------------------------------
def refine_rows(history, show, last):
    """[(label, step)] of the rows shown: decoder 1, the ``show`` steps the history holds, the last."""
    rows = [("decoder 1 (step 0)", 0)]
    rows += [(f"step {k}", k) for k in show if 0 < k < last and k < len(history)]
    rows.append((f"step {last} (last)", last))
    return rows


def refine_section(a, recs, refs, command):
    show = sorted({int(s) for s in a.show_steps.split(",") if s.strip()})
    ids = sorted(recs)
    last = {i: len(recs[i]["history"]) - 1 for i in ids}
    words = {i: [h.split() for h in recs[i]["history"]] for i in ids}
    value = {i: (word_edits(words[i][0], words[i][-1]),
                 sum(word_edits(x, y) for x, y in zip(words[i], words[i][1:]))) for i in ids}
    pool = [i for i in ids if len(recs[i]["source"].split()) <= a.max_words]
    chosen = sorted(pool, key=lambda i: (-value[i][0], -value[i][1], i))[: a.num]
    steps_bleu = {}
    for k in [0, *show, a.refine_steps]:
        if k <= a.refine_steps:
            hyps = [recs[i]["history"][min(k, last[i])] for i in ids]
            steps_bleu[k] = corpus_bleu(hyps, [refs[i] for i in ids])
    L = ["## refine_nat: refinement, step by step\n",
         f"Sentences: the {len(chosen)} of the {a.gen_subset} set (of the {len(pool)} with at most "
         f"{a.max_words} source words) whose output changes most between decoder 1 and the last "
         f"step (word edits), ties by more word edits summed over all steps, then by id. Words in "
         f"**bold** are new since the row above, ~~struck~~ words were dropped there (in-order "
         f"word alignment; steps not shown may have changed words back and forth). Command:\n",
         "```\n" + command + "\n```\n",
         f"BLEU of the whole {a.gen_subset} set (sacreBLEU cased 13a) after "
         + ", ".join(f"{'decoder 1' if k == 0 else f'step {k}'}: {b:.2f}" for k, b in steps_bleu.items())
         + ".\n"]
    shown = []
    for n, i in enumerate(chosen, 1):
        rows = refine_rows(words[i], show, last[i])
        L += [f"### {n}. {a.gen_subset} sentence {i} (decoder 1 -> last step: {value[i][0]} word "
              f"edits; all steps: {value[i][1]})\n", "| | |", "|---|---|",
              f"| source | {md_escape(recs[i]['source'])} |"]
        prev = None
        for label, k in rows:
            w = words[i][k]
            L.append(f"| {label} | {marked_change(prev if prev is not None else w, w)} |")
            prev = w
        L += [f"| reference | {md_escape(refs[i])} |", ""]
        shown.append({"id": i, "rows": [{"label": lab, "step": k, "text": recs[i]["history"][k]}
                                        for lab, k in rows]})
    return L, {"command": command, "chosen": shown, "bleu_by_step": steps_bleu,
               "histories": {i: recs[i]["history"] for i in ids}}


# -- delta / score: original vs refined ---------------------------------------------------------------
def latent_section(a, title, recs, refs, command):
    ids = sorted(recs)
    orig = {i: recs[i]["history"][0] if recs[i]["history"] else recs[i]["output"] for i in ids}
    final = {i: recs[i]["output"] for i in ids}
    stats = {}
    for i in ids:
        o, r = orig[i].split(), final[i].split()
        stats[i] = (moved_words(o, r), edit_spans(o, r))
    changed = [i for i in ids if orig[i] != final[i]]
    pool = [i for i in changed if len(recs[i]["source"].split()) <= a.max_words
            and (stats[i][0] > 0 or stats[i][1] >= 2)]
    chosen = sorted(pool, key=lambda i: (-stats[i][0], -stats[i][1], i))[: a.pairs]
    n = len(ids)
    bleu = (corpus_bleu([orig[i] for i in ids], [refs[i] for i in ids]),
            corpus_bleu([final[i] for i in ids], [refs[i] for i in ids]))
    L = [f"## {title}: original vs refined\n",
         f"Original: the prior mean's output; refined: the final output. Of the {n} sentences of "
         f"the {a.gen_subset} set, refinement changed {len(changed)} "
         f"({100 * len(changed) / max(n, 1):.1f}%), "
         f"moved words in {sum(stats[i][0] > 0 for i in changed)} and edited two or more separate "
         f"places in {sum(stats[i][1] >= 2 for i in changed)}; BLEU {bleu[0]:.2f} -> {bleu[1]:.2f} "
         f"(sacreBLEU cased 13a). Pairs: among changed sentences of at most {a.max_words} source "
         f"words with a moved word (one both outputs hold that the in-order alignment cannot "
         f"match) or edits in two or more places, the most moved words, ties by more edited "
         f"places, then by id. Words in **bold** are not matched by the in-order alignment of "
         f"the two outputs. Command:\n", "```\n" + command + "\n```\n"]
    if not chosen:
        L += ["No sentence meets the rule.", ""]
    for k, i in enumerate(chosen, 1):
        o, r = orig[i].split(), final[i].split()
        L += [f"### {k}. {a.gen_subset} sentence {i} ({stats[i][0]} moved words, {stats[i][1]} "
              f"edited places)\n", "| | |", "|---|---|",
              f"| source | {md_escape(recs[i]['source'])} |", f"| reference | {md_escape(refs[i])} |",
              f"| original | {marked(o, changed_flags(r, o))} |",
              f"| refined | {marked(r, changed_flags(o, r))} |", ""]
    return L, {"command": command, "chosen": [{"id": i, "original": orig[i], "refined": final[i],
                                               "moved_words": stats[i][0], "edited_places": stats[i][1]}
                                              for i in chosen],
               "bleu_original_refined": bleu, "changed": len(changed), "sentences": n,
               "outputs": {i: {"original": orig[i], "refined": final[i]} for i in ids}}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    if not (a.refine_nat or a.lanmt or a.score_net):
        sys.exit("give at least one of --refine-nat, --lanmt, --score-net")
    t0 = time.time()
    cmd = command_line("qualitative.py", argv)
    L = ["# Refinement, step by step\n", "Command:\n", "```\n" + cmd + "\n```\n"]
    res = {"command": cmd, "gen_subset": a.gen_subset}
    ref_lines = Path(a.ref).read_text(encoding="utf-8").splitlines() if a.ref else None
    runs = []
    if a.refine_nat:
        runs.append(("refine_nat", a.refine_nat, ["--decoding", "refine", "--iter-decode-max-iter",
                                                  str(a.refine_steps), "--iter-decode-force-max-iter"]))
    if a.lanmt:
        runs.append(("delta", a.lanmt, ["--decoding", "delta", "--iter-decode-max-iter", str(a.delta_steps)]))
    if a.score_net:
        extra = ["--lanmt-path", a.lanmt] if a.lanmt else []
        runs.append(("score", a.score_net,
                     ["--decoding", "auto", "--score-steps", str(a.score_steps), *extra]))
    for name, ckpt, options in runs:
        command, recs = generate(a, ckpt, options)
        if ref_lines is not None and len(ref_lines) != len(recs):
            sys.exit(f"{len(recs)} sentences decoded but {len(ref_lines)} lines in --ref {a.ref}")
        refs = {i: ref_lines[i] if ref_lines is not None else recs[i].get("target", "") for i in recs}
        if name == "refine_nat":
            part, data = refine_section(a, recs, refs, command)
        else:
            title = (f"delta inference (at most {a.delta_steps} steps)" if name == "delta"
                     else f"score inference ({a.score_steps} step{'s' * (a.score_steps != 1)})")
            part, data = latent_section(a, title, recs, refs, command)
        L += part
        res[name] = data
        print(f"{name}: {len(recs)} sentences ({time.time() - t0:.0f} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{OUT_NAME}.md").write_text("\n".join(L).replace(str(REPO) + os.sep, ""), encoding="utf-8")
    write_json(out / f"{OUT_NAME}.json", res)
    print(f"wrote {out / OUT_NAME}.md/.json ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
