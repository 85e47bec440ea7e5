#!/usr/bin/env python
"""Sequence-level knowledge distillation for fairseq (Kim & Rush, 2016) in one command.

Translates a binarised training set with an autoregressive teacher (fairseq-generate, beam 5)
and binarises the teacher's outputs as the new targets, reusing the original dictionaries, so
the result is a drop-in replacement data-bin for training a non-autoregressive student:

    python scripts/distill.py --data-bin data-bin --teacher ckpt/checkpoint_best.pt \\
        --out data-bin-distil --user-dir nar_refine

  * train is always distilled; add ``--splits train,valid`` to distil the valid set too.
    Splits that are not distilled (by default valid and test) are copied unchanged, so
    validation/test keep the real references.
  * The source side is written back from the generator's S- lines (the data-bin's own tokens),
    so source and target stay aligned line by line; hypotheses are kept as subword tokens
    (no --post-process), in the teacher's vocabulary. An empty hypothesis is replaced by its
    reference (T- line): a non-autoregressive model cannot learn an empty target.
  * Resumable: a split whose generation finished is not translated again.
  * Everything after ``--`` goes to fairseq-generate (e.g. ``-- --lenpen 1.2``).

Outputs in --out: the binarised data-bin, text/<split>.<lang> (subword text of the distilled
corpus), gen/<split>.txt (raw fairseq-generate output) and distill.json (settings, timings).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def log(msg):
    print(f"[distill {time.strftime('%H:%M:%S', time.gmtime())}] {msg}", flush=True)


def detect_langs(data_bin):
    """Return (src, tgt) from data-bin/train.SRC-TGT.SRC.idx."""
    for name in sorted(os.listdir(data_bin)):
        if name.startswith("train.") and name.endswith(".idx"):
            pair, lang = name.split(".")[1], name.split(".")[2]
            src, tgt = pair.split("-")
            if lang in (src, tgt):
                return src, tgt
    raise SystemExit(f"cannot find train.SRC-TGT.*.idx in {data_bin}; pass --source-lang/--target-lang")


def count_sentences(data_bin, split, src, tgt):
    from fairseq.data import data_utils  # noqa: WPS433 (imported late: fairseq import is slow)

    ds = data_utils.load_indexed_dataset(os.path.join(data_bin, f"{split}.{src}-{tgt}.{src}"), None)
    return len(ds)


def generate(args, split, src, tgt, gen_file):
    """Run fairseq-generate on one split; return its wall time in seconds."""
    cmd = ["fairseq-generate", args.data_bin, "--path", args.teacher,
           "--source-lang", src, "--target-lang", tgt, "--gen-subset", split,
           "--beam", str(args.beam), "--nbest", "1", "--max-tokens", str(args.max_tokens),
           "--batch-size", str(args.batch_size), "--num-workers", "0"]
    if args.user_dir:
        cmd += ["--user-dir", args.user_dir]
    if args.cpu:
        cmd += ["--cpu"]
    cmd += args.generate_args
    log(f"{split}: " + " ".join(cmd))
    t0 = time.time()
    tmp = gen_file + ".tmp"
    with open(tmp, "w") as out, open(gen_file + ".log", "w") as err:
        ret = subprocess.run(cmd, stdout=out, stderr=err).returncode
    if ret != 0:
        sys.stderr.write(open(gen_file + ".log").read()[-3000:])
        raise SystemExit(f"fairseq-generate failed on {split} (exit {ret}); log: {gen_file}.log")
    os.replace(tmp, gen_file)
    return time.time() - t0


def parse_generate(gen_file, n, refs=None):
    """S-/H- lines of fairseq-generate output -> (sources, hypotheses) ordered by sample id;
    ``refs`` (a dict) receives the T- lines (references), by sample id."""
    srcs, hyps = {}, {}
    with open(gen_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("S-") or (line.startswith("T-") and refs is not None):
                key, text = (line.rstrip("\n").split("\t", 1) + [""])[:2]
                (srcs if line.startswith("S-") else refs)[int(key[2:])] = text
            elif line.startswith("H-"):
                fields = line.rstrip("\n").split("\t")
                idx = int(fields[0][2:])
                if idx not in hyps:  # nbest 1: first H line per id
                    hyps[idx] = fields[2] if len(fields) > 2 else ""
    missing = [i for i in range(n) if i not in hyps or i not in srcs]
    if missing:
        raise SystemExit(f"{gen_file}: {len(missing)} of {n} sentences missing (e.g. ids {missing[:5]}); "
                         "every training pair needs a translation (sentences longer than the teacher's "
                         "max positions? delete the file and rerun with a larger -- --max-len-b)")
    return [srcs[i] for i in range(n)], [hyps[i] for i in range(n)]


def fill_empty_targets(hyps, refs):
    """An empty hypothesis cannot be learnt (a length-0 output) and nar_translation refuses
    training data with one: such a pair keeps its reference (``refs``: sample id -> T- line)."""
    return [h if h.strip() else refs.get(i, h) for i, h in enumerate(hyps)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-bin", required=True, help="binarised data (fairseq-preprocess output)")
    p.add_argument("--teacher", required=True, help="autoregressive teacher checkpoint")
    p.add_argument("--out", required=True, help="new data-bin with distilled targets")
    p.add_argument("--splits", default="train", help="comma-separated splits to distil (default: train)")
    p.add_argument("--copy-splits", default="valid,test",
                   help="splits copied unchanged when not distilled (default: valid,test)")
    p.add_argument("--source-lang", "-s")
    p.add_argument("--target-lang", "-t")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--user-dir", help="passed to fairseq-generate (nar_refine patches torch.load)")
    p.add_argument("--cpu", action="store_true", help="force CPU generation")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    p.add_argument("generate_args", nargs="*", help="extra fairseq-generate args after --")
    args = p.parse_args()

    src, tgt = (args.source_lang, args.target_lang)
    if not (src and tgt):
        src, tgt = detect_langs(args.data_bin)
    splits = [s for s in args.splits.split(",") if s]
    os.makedirs(os.path.join(args.out, "gen"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "text"), exist_ok=True)
    info = {"data_bin": os.path.abspath(args.data_bin), "teacher": os.path.abspath(args.teacher),
            "beam": args.beam, "splits": splits, "generate_args": args.generate_args,
            "source_lang": src, "target_lang": tgt, "generate_seconds": {}}

    old = os.path.join(args.out, "distill.json")
    if os.path.exists(old):  # resumed run: keep the timings of splits translated before
        with open(old) as f:
            info["generate_seconds"] = json.load(f).get("generate_seconds", {})
    t_start = time.time()
    for split in splits:
        n = count_sentences(args.data_bin, split, src, tgt)
        gen_file = os.path.join(args.out, "gen", f"{split}.txt")
        if os.path.exists(gen_file):
            log(f"{split}: {gen_file} exists, not translating again")
        else:
            log(f"{split}: translating {n} sentences with beam {args.beam}")
            secs = generate(args, split, src, tgt, gen_file)
            info["generate_seconds"][split] = round(secs, 1)
            log(f"{split}: done in {secs:.0f} s ({n / max(secs, 1e-9):.1f} sentences/s)")
        refs = {}
        sources, hyps = parse_generate(gen_file, n, refs)
        empty = sum(1 for h in hyps if not h.strip())
        hyps = fill_empty_targets(hyps, refs)
        for lang, lines in ((src, sources), (tgt, hyps)):
            with open(os.path.join(args.out, "text", f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
        info.setdefault("sentences", {})[split] = n
        info.setdefault("empty_hypotheses", {})[split] = empty
        log(f"{split}: wrote {n} pairs ({empty} empty hypotheses, replaced by their references) "
            f"to {args.out}/text/{split}.{{{src},{tgt}}}")

    # Binarise with the teacher data's dictionaries so token ids are unchanged.
    cmd = ["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt,
           "--srcdict", os.path.join(args.data_bin, f"dict.{src}.txt"),
           "--tgtdict", os.path.join(args.data_bin, f"dict.{tgt}.txt"),
           "--destdir", args.out, "--workers", str(args.workers)]
    for split in splits:
        flag = {"train": "--trainpref", "valid": "--validpref", "test": "--testpref"}.get(split)
        if flag is None:
            raise SystemExit(f"fairseq-preprocess only knows train/valid/test, not {split}")
        cmd += [flag, os.path.join(args.out, "text", split)]
    log("binarising: " + " ".join(cmd))
    with open(os.path.join(args.out, "preprocess.log"), "w") as err:
        if subprocess.run(cmd, stdout=err, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"fairseq-preprocess failed; see {args.out}/preprocess.log")

    # Keep the real references for the splits we did not distil.
    for split in args.copy_splits.split(","):
        if not split or split in splits:
            continue
        for lang in (src, tgt):
            for ext in ("bin", "idx"):
                name = f"{split}.{src}-{tgt}.{lang}.{ext}"
                if os.path.exists(os.path.join(args.data_bin, name)):
                    shutil.copy(os.path.join(args.data_bin, name), os.path.join(args.out, name))
        log(f"{split}: copied unchanged (real references)")

    info["total_seconds_this_run"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "distill.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    log(f"done: {args.out}")


if __name__ == "__main__":
    main()
