#!/usr/bin/env python
"""Does refinement help more as a model trains? BLEU after 0, 1, ... K fixed decoding steps,
for a series of checkpoints of one training run.

    python scripts/steps_curve.py --data-bin examples/multi30k/work/data-bin \
        --ref examples/multi30k/work/raw/valid.de --gen-subset valid \
        --checkpoints 'examples/multi30k/work/checkpoints/refine_nat/history/*.pt' \
        --decoding refine --steps 0,1,4,10 --out examples/multi30k/results/refine_steps_curve

Each checkpoint is decoded with ``fairseq-generate --decoding D --iter-decode-max-iter K
--iter-decode-force-max-iter`` (refine: K refinement passes after decoder 1; delta: K delta
steps after the prior mean) and scored with sacreBLEU (cased, 13a) against the raw reference
file. The update count is read from the checkpoint. Writes OUT.json (every point), OUT.md (a
table: BLEU per step count, and the gain of the most steps over 0 and 1 step) and OUT.png (BLEU
against updates, one line per step count). The signal it gives: if the gain of later steps
grows with training, the method is learning to refine and more training would raise it;
flat, it would not.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-bin", required=True, help="binarised data (fairseq-preprocess output)")
    p.add_argument("--ref", required=True, help="raw (detokenised) reference file of --gen-subset")
    p.add_argument("--gen-subset", default="valid")
    p.add_argument("--checkpoints", required=True, action="append",
                   help="checkpoint paths or glob patterns (repeatable), one training run")
    p.add_argument("--decoding", default="refine", choices=["refine", "delta"],
                   help="nar_refine decoding: refine (refine_nat) or delta (LaNMT)")
    p.add_argument("--steps", default="0,1,4,10", help="comma-separated fixed step counts")
    p.add_argument("--remove-bpe", default="sentencepiece",
                   help="fairseq-generate --remove-bpe (sentencepiece, subword_nmt, or none)")
    p.add_argument("--threads", type=int, default=1, help="OMP threads for fairseq-generate")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--out", required=True, help="output prefix: OUT.json, OUT.md, OUT.png")
    return p


def checkpoint_updates(path):
    """num_updates stored in a fairseq checkpoint."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    return int(state["optimizer_history"][-1]["num_updates"])


def decode(a, ckpt, steps):
    """Hypotheses of the subset in id order after ``steps`` fixed steps."""
    cmd = [sys.executable, "-m", "fairseq_cli.generate", a.data_bin, "--path", ckpt, "--user-dir", str(REPO / "nar_refine"),
           "--task", "nar_translation", "--gen-subset", a.gen_subset, "--decoding", a.decoding,
           "--iter-decode-max-iter", str(steps), "--iter-decode-force-max-iter",
           "--max-tokens", str(a.max_tokens), "--num-workers", "0", "--cpu"]
    if a.remove_bpe != "none":
        cmd += ["--remove-bpe", a.remove_bpe]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"fairseq-generate failed on {ckpt} ({steps} steps):\n{proc.stderr[-2000:]}")
    hyps = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^H-(\d+)\t[^\t]*\t(.*)$", line)
        if m:
            hyps[int(m.group(1))] = m.group(2)
    return [hyps[i] for i in sorted(hyps)]


def write_outputs(a, points, steps):
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # OUT is a prefix, not a file name: "curve_alpha0.5" -> curve_alpha0.5.json (a suffix
    # replacement would drop its ".5")
    file = lambda ext: Path(f"{out}{ext}")
    meta = {"command": "python scripts/steps_curve.py " + " ".join(sys.argv[1:]),
            "decoding": a.decoding, "gen_subset": a.gen_subset, "steps": steps,
            "bleu": "sacreBLEU cased 13a", "points": points}
    text = json.dumps(meta, indent=1).replace(str(REPO) + os.sep, "")
    file(".json").write_text(text, encoding="utf-8")
    lo, hi = min(steps), max(steps)
    bases = [lo] + ([1] if 1 in steps and lo < 1 < hi else [])
    name = lambda k: f"{k} step{'s' * (k != 1)}"
    head = ["| updates | checkpoint | " + " | ".join(name(k) for k in steps) + " | "
            + " | ".join(f"{hi} vs {b}" for b in bases) + " |",
            "|---:|---|" + "---:|" * (len(steps) + len(bases))]
    rows = []
    for p in points:
        b = p["bleu"]
        cells = [f"{b[str(k)]:.2f}" for k in steps] + [f"{b[str(hi)] - b[str(k)]:+.2f}" for k in bases]
        rows.append(f"| {p['updates']} | `{os.path.relpath(p['checkpoint'], REPO)}` | " + " | ".join(cells) + " |")
    L = [f"# BLEU after fixed {a.decoding} steps, by training updates\n",
         f"{a.gen_subset} set, sacreBLEU cased 13a against `{os.path.relpath(a.ref, REPO)}`. Command:\n",
         "```\n" + meta["command"] + "\n```\n", *head, *rows, "", f"![BLEU vs updates]({out.name}.png)", ""]
    file(".md").write_text("\n".join(L).replace(str(REPO) + os.sep, ""), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in steps:
        ax.plot([p["updates"] for p in points], [p["bleu"][str(k)] for p in points], marker="o",
                label=name(k))
    ax.set_xlabel("training updates")
    ax.set_ylabel(f"BLEU ({a.gen_subset}, sacreBLEU 13a)")
    ax.set_title(f"{a.decoding}: BLEU after fixed steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(file(".png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    a = get_parser().parse_args(argv)
    import sacrebleu

    steps = sorted({int(s) for s in a.steps.split(",") if s.strip()})
    if not steps or steps[0] < 0:
        sys.exit(f"--steps: give non-negative step counts, got {a.steps!r}")
    paths = sorted({p for pattern in a.checkpoints for p in (glob.glob(pattern) or [pattern])})
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        sys.exit("no such checkpoint: " + ", ".join(missing))
    refs = Path(a.ref).read_text(encoding="utf-8").splitlines()
    ckpts = sorted((checkpoint_updates(p), p) for p in paths)
    points = []
    for i, (updates, path) in enumerate(ckpts, 1):
        bleu, t0 = {}, time.time()
        for k in steps:
            hyps = decode(a, path, k)
            if len(hyps) != len(refs):
                sys.exit(f"{path}: {len(hyps)} hypotheses but {len(refs)} reference lines in {a.ref}")
            bleu[str(k)] = round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score, 2)
        points.append({"updates": updates, "checkpoint": path, "bleu": bleu})
        print(f"[{i}/{len(ckpts)}] {updates} updates: " + ", ".join(f"{k} steps {v}" for k, v in bleu.items())
              + f" ({time.time() - t0:.0f} s)", flush=True)
    write_outputs(a, points, steps)
    print(f"wrote {a.out}.json, {a.out}.md, {a.out}.png")


if __name__ == "__main__":
    main()
