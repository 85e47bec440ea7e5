#!/usr/bin/env python
"""Two-mode toy: does refinement / latent inference pick ONE output mode?

Each toy target is, by a fair coin, written all in one of two styles ('w3 w5' -> 'W3 W5' or
'V3 V5'), so y is not a function of x. A non-autoregressive decoder that predicts each token
independently can mix the styles ('W3 V5'): the multimodality problem. This script measures,
through the real fairseq CLIs, how often each decoder settles on one mode:

1. writes the corpus and binarizes it (fairseq-preprocess --joined-dictionary);
2. trains refine_nat_tiny (refine_nat_loss), lanmt_tiny (lanmt_elbo, KL budget held for the
   whole run, validation logs z_usage) and score_net_tiny (score_matching) on that LaNMT;
3. decodes the test split with fairseq-generate: refine_nat per refinement step
   (--retain-iter-history, 10 forced steps) and with its adaptive stop; LaNMT with --decoding
   prior, delta (plain chain, 1/2/4 steps) and score (1 step);
4. writes OUT/results.json and OUT/results.md: per decoder the share of outputs in one style
   (all W or all V), mixed, and exactly right in either style, plus the LaNMT's final valid
   z_usage (nats/token: NLL at the prior mean - NLL at the posterior mean). OUT is --out, by
   default the --work folder: the committed results change only with --out examples/toy_two_mode.
   Paths in them are relative to the repository.

    python scripts/two_mode_toy.py --work runs/two_mode_toy --threads 1
    python scripts/two_mode_toy.py --work runs/two_mode_toy --threads 1 --out examples/toy_two_mode

Run from the repository root with the environment that has fairseq and nar_refine installed.
"""
import argparse
import datetime
import json
import logging
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "nar_refine")
BIN = Path(sys.executable).parent
REFINE_STEPS = 10
logger = logging.getLogger("two_mode_toy")


# -- data -----------------------------------------------------------------------------------------
def write_two_style_corpus(folder, n_train=2000, n_valid=100, n_test=200, vocab=24, min_len=3,
                           max_len=8, seed=1):
    """'w3 w5' -> 'W3 W5' or 'V3 V5' (one style per sentence, by a fair coin).

    The generator of tests/test_lanmt.py (same seed and draws), with a larger test split."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        src, tgt = [], []
        for _ in range(n):
            ids = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
            style = rng.choice("WV")
            src.append(" ".join(f"w{i}" for i in ids))
            tgt.append(" ".join(f"{style}{i}" for i in ids))
        (folder / f"{split}.src").write_text("\n".join(src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    return folder


# -- mode classification --------------------------------------------------------------------------
def classify(hyp, src):
    """Mode of one hypothesis for source ``src``: 'exact' (the right words, all in one style:
    the source with every 'wK' written 'WK', or every one 'VK'), 'single' (all words of one
    style, W or V, but not the right ones), 'mixed' (both W- and V-words) or 'other' (empty,
    or a word of neither style, e.g. <unk>)."""
    words, ids = hyp.split(), [w[1:] for w in src.split()]
    styles = {w[0] if re.fullmatch(r"[WV]\d+", w) else "?" for w in words}
    if {"W", "V"} <= styles:
        return "mixed"
    if not words or styles not in ({"W"}, {"V"}):
        return "other"
    style = styles.pop()
    return "exact" if words == [style + i for i in ids] else "single"


def mode_shares(pairs):
    """Shares over (hypothesis, source) pairs: single_style (one style, exact or not), exact,
    mixed, other; and n."""
    kinds = [classify(h, s) for h, s in pairs]
    n = len(kinds)
    share = (lambda *ks: sum(k in ks for k in kinds) / n) if n else (lambda *ks: float("nan"))
    return {"single_style": share("exact", "single"), "exact": share("exact"),
            "mixed": share("mixed"), "other": share("other"), "n": n}


# -- fairseq-generate output ----------------------------------------------------------------------
def parse_generate(out):
    """{id: {'src', 'hyp', 'steps', 'history': {step: text}}} and BLEU (or None) from
    fairseq-generate's S-/H-/I-/E- lines."""
    sents = {}

    def sent(i):
        return sents.setdefault(int(i), {"src": None, "hyp": None, "steps": None, "history": {}})

    for line in out.splitlines():
        if m := re.match(r"^S-(\d+)\t(.*)$", line):
            sent(m.group(1))["src"] = m.group(2)
        elif m := re.match(r"^H-(\d+)\t\S+\t(.*)$", line):
            sent(m.group(1))["hyp"] = m.group(2)
        elif m := re.match(r"^I-(\d+)\t(\d+)$", line):
            sent(m.group(1))["steps"] = int(m.group(2))
        elif m := re.match(r"^E-(\d+)_(\d+)\t(.*)$", line):
            sent(m.group(1))["history"][int(m.group(2))] = m.group(3)
    bleu = re.search(r"BLEU4? = ([\d.]+)", out)
    return sents, float(bleu.group(1)) if bleu else None


def step_shares(sents, n_steps):
    """Mode shares of the output after each refinement step 0..n_steps (--retain-iter-history;
    a sentence that stopped early keeps its last output)."""
    rows = []
    for step in range(n_steps + 1):
        pairs = []
        for s in sents.values():
            hist = s["history"]
            last = max((k for k in hist if k <= step), default=None)
            pairs.append((hist[last] if last is not None else s["hyp"], s["src"]))
        rows.append({"step": step, **mode_shares(pairs)})
    return rows


def decode_summary(out):
    """Mode shares, BLEU and mean steps of one fairseq-generate run."""
    sents, bleu = parse_generate(out)
    steps = [s["steps"] for s in sents.values() if s["steps"] is not None]
    return {**mode_shares([(s["hyp"], s["src"]) for s in sents.values()]), "bleu": bleu,
            "mean_steps": sum(steps) / len(steps) if steps else None}


# -- CLI runs -------------------------------------------------------------------------------------
def cli(name):
    path = BIN / name
    return str(path) if path.exists() else name


def portable(word):
    """A command word as results.json records it: a console script by its name, an absolute path
    relative to the repository (no machine's paths in the results)."""
    word = str(word)
    if word.startswith(str(BIN) + os.sep):
        return word[len(str(BIN)) + 1:]
    return os.path.relpath(word, REPO) if os.path.isabs(word) else word


class Runner:
    """Runs fairseq CLIs with a thread limit, logs each to WORK/logs/NAME.log, records commands."""

    def __init__(self, work, threads):
        self.logs = Path(work) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                        PYTHONHASHSEED="0")
        self.commands = {}

    def __call__(self, name, cmd):
        cmd = [str(c) for c in cmd]
        self.commands[name] = shlex.join(portable(c) for c in cmd)
        start = time.time()
        logger.info("%s: %s", name, shlex.join(cmd[:1] + cmd[1:6]) + " ...")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        out = proc.stdout + proc.stderr
        (self.logs / f"{name}.log").write_text(out)
        done = "done training in" in proc.stdout
        if proc.returncode != 0 and not (proc.returncode == -6 and done):
            # (-6 after 'done training': fairseq's rare teardown abort, checkpoints are complete)
            raise SystemExit(f"{name} failed ({proc.returncode}); see {self.logs / name}.log\n"
                             f"{out[-3000:]}")
        logger.info("%s: done in %.0f s", name, time.time() - start)
        return out


OPTIM = ["--optimizer", "adam", "--lr-scheduler", "inverse_sqrt", "--max-tokens", "2000",
         "--no-epoch-checkpoints", "--num-workers", "0", "--seed", "1", "--no-progress-bar",
         "--log-format", "simple", "--log-interval", "50"]
NAR = ["--task", "nar_translation"]


def train(run, name, data, work, updates, args):
    save = Path(work) / "checkpoints" / name
    out = run(f"train_{name}", [cli("fairseq-train"), data, "--user-dir", USER_DIR,
                                "--save-dir", save, "--max-update", updates, *NAR, *OPTIM, *args])
    return str(save / "checkpoint_last.pt"), out


def generate(run, name, data, path, args=()):
    return run(f"generate_{name}", [cli("fairseq-generate"), data, "--user-dir", USER_DIR,
                                    "--path", path, "--gen-subset", "test", "--batch-size", "50",
                                    "--num-workers", "0", *NAR, *args])


def final_valid(log, key):
    """``key`` in the last validation line of a fairseq-train log (None if absent)."""
    vals = [m.group(1) for line in log.splitlines() if "valid on 'valid' subset" in line
            for m in [re.search(rf"\| {key} (-?[\d.]+)", line)] if m]
    return float(vals[-1]) if vals else None


def run_all(args):
    work = Path(args.work).resolve()
    for old in ("bin", "checkpoints"):  # fairseq-preprocess refuses, fairseq-train would resume
        shutil.rmtree(work / old, ignore_errors=True)
    run = Runner(work, args.threads)
    raw = write_two_style_corpus(work / "raw", n_test=args.test_sentences)
    data = str(work / "bin")
    run("preprocess", [cli("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
                       "--trainpref", raw / "train", "--validpref", raw / "valid",
                       "--testpref", raw / "test", "--destdir", data, "--joined-dictionary",
                       "--workers", "1"])
    score_updates = args.score_updates or max(1, args.updates // 2)
    lengths = [len(line.split()) for line in (raw / "test.src").read_text().splitlines()]
    results = {"updates": {"refine_nat": args.updates, "lanmt": args.updates,
                           "score_net": score_updates},
               "test_sentences": args.test_sentences,
               # one style by luck if every word's style were a fair coin: 2 * 2^-L per sentence
               "chance_single_style": sum(2.0 ** (1 - n) for n in lengths) / len(lengths)}

    # refine_nat: every refinement step (forced), then the default adaptive stop
    refine, _ = train(run, "refine_nat", data, work, args.updates, [
        "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", "--share-all-embeddings",
        "--lr", "2e-3", "--warmup-updates", "50", "--disable-validation"])
    out = generate(run, "refine_steps", data, refine, [
        "--retain-iter-history", "--iter-decode-max-iter", REFINE_STEPS,
        "--iter-decode-force-max-iter"])
    sents, bleu = parse_generate(out)
    results["refine_nat"] = {"steps": step_shares(sents, REFINE_STEPS), "forced_bleu": bleu,
                             "adaptive": decode_summary(generate(
                                 run, "refine_adaptive", data, refine,
                                 ["--iter-decode-max-iter", REFINE_STEPS, "--print-step"]))}

    # LaNMT: budget held for the whole run (anneal starts after it ends), validated twice
    lanmt, log = train(run, "lanmt", data, work, args.updates, [
        "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", "--share-all-embeddings",
        "--lr", "3e-3", "--warmup-updates", "20",
        "--kl-budget-hold-updates", args.updates, "--kl-budget-anneal-updates", args.updates,
        "--validate-interval", "1000", "--validate-interval-updates", max(1, args.updates // 2)])
    results["lanmt_valid"] = {k: final_valid(log, k) for k in ("z_usage", "nll_loss", "kl")}
    score, _ = train(run, "score_net", data, work, score_updates, [
        "--arch", "score_net_tiny", "--criterion", "score_matching", "--lanmt-path", lanmt,
        "--lr", "3e-3", "--warmup-updates", "20", "--disable-validation"])
    latent = {"prior": decode_summary(generate(run, "lanmt_prior", data, lanmt,
                                               ["--decoding", "prior"]))}
    for k in args.delta_steps:
        latent[f"delta_{k}"] = decode_summary(generate(
            run, f"lanmt_delta_{k}", data, lanmt,
            ["--decoding", "delta", "--iter-decode-max-iter", k, "--print-step"]))
    latent["score_1"] = decode_summary(generate(run, "score_1", data, score,
                                                ["--decoding", "score", "--score-steps", "1"]))
    results["lanmt"] = latent
    results["commands"] = run.commands
    return results


# -- report ---------------------------------------------------------------------------------------
def pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def num(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def write_report(results, out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    r, u = results["refine_nat"], results["updates"]
    lines = [
        "# Two-mode toy: one mode or a mix?",
        "",
        f"Generated by `{results['command']}` on {results['date']} "
        f"({results['wall_minutes']:.1f} min; seeds fixed, CPU).",
        "",
        "Each target is, by a fair coin, written all in one style: `w3 w5` -> `W3 W5` or `V3 V5` "
        "(2000 training pairs, vocabulary 24, 3-8 words). A decoder that predicts tokens "
        "independently can mix the styles (`W3 V5`). *One style*: every output word is a W-word, "
        "or every one a V-word (right words or not); *mixed*: both styles; *exact*: the right "
        f"words in one style (either is a correct translation). {results['test_sentences']} test "
        "sentences; shares in %. If each word's style were a fair coin, "
        f"{pct(results['chance_single_style'])}% of the outputs would be in one style by luck.",
        "",
        f"## refine_nat_tiny ({u['refine_nat']} updates), per refinement step",
        "",
        f"`fairseq-generate --retain-iter-history --iter-decode-max-iter {REFINE_STEPS} "
        "--iter-decode-force-max-iter`; step 0 is the first decoder's output.",
        "",
        "| step | one style | mixed | exact |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {s['step']} | {pct(s['single_style'])} | {pct(s['mixed'])} | {pct(s['exact'])} |"
              for s in r["steps"]]
    a = r["adaptive"]
    lines += [f"| adaptive (mean {num(a['mean_steps'], '{:.1f}')} steps) | {pct(a['single_style'])} "
              f"| {pct(a['mixed'])} | {pct(a['exact'])} |", ""]
    z = results["lanmt_valid"]
    lines += [
        f"## lanmt_tiny ({u['lanmt']} updates, KL budget held) and score_net_tiny "
        f"({u['score_net']} updates)",
        "",
        f"Final valid z_usage (NLL at the prior mean - NLL at the posterior mean): "
        f"**{num(z['z_usage'], '{:.3f}')} nats/token** (valid NLL {num(z['nll_loss'])} bits/token, "
        f"KL {num(z['kl'])}). Delta is the plain chain (stops when y is unchanged, at most k "
        "steps); score takes 1 step from the prior mean. BLEU is against the one reference, "
        "whose style is the coin's: an output right in the other style scores 0 there, so a "
        "decoder that is always right in one style or the other scores about 50, not 100.",
        "",
        "| decoding | one style | mixed | exact | BLEU | mean steps |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {"prior": "prior mean (`--decoding prior`)", "score_1": "score, 1 step (`--decoding score`)"}
    for key, s in results["lanmt"].items():
        label = names.get(key) or f"delta, <= {key.split('_')[1]} steps (`--decoding delta`)"
        lines.append(f"| {label} | {pct(s['single_style'])} | {pct(s['mixed'])} | {pct(s['exact'])} "
                     f"| {num(s['bleu'])} | {num(s['mean_steps'], '{:.2f}')} |")
    lines += ["", "## What it shows", "", *results.get("summary", []), "",
              "Every fairseq command the script ran is in `results.json` (`commands`)."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")


def summarize(results):
    """Plain sentences stating what the numbers show (written into results.md)."""
    steps, lat = results["refine_nat"]["steps"], results["lanmt"]
    s0, sn = steps[0], steps[-1]
    best = max(steps, key=lambda s: s["exact"])
    a = results["refine_nat"]["adaptive"]
    out = [f"- refine_nat: one style {pct(s0['single_style'])}% after the first decoder, "
           f"{pct(sn['single_style'])}% after {sn['step']} steps; "
           + ("refinement raises the share of one-style outputs. "
              if sn["single_style"] > s0["single_style"] else
              "refinement does not raise the share of one-style outputs. ")
           + f"Exact {pct(s0['exact'])}% -> {pct(sn['exact'])}% (highest {pct(best['exact'])}% "
           f"at step {best['step']}"
           + ("; later steps change words of one-style outputs" if sn["exact"] < best["exact"] else "")
           + f"); the adaptive stop ({num(a['mean_steps'], '{:.1f}')} steps on average) gives "
           f"{pct(a['exact'])}% exact."]
    p = lat["prior"]
    for key, s in lat.items():
        if key == "prior":
            continue
        d = s["single_style"] - p["single_style"]
        verdict = "raises" if d > 0 else ("does not change" if d == 0 else "lowers")
        out.append(f"- LaNMT {key}: one style {pct(s['single_style'])}% vs {pct(p['single_style'])}% "
                   f"at the prior mean ({verdict} it, {100 * d:+.1f} points); exact "
                   f"{pct(s['exact'])}% vs {pct(p['exact'])}%.")
    z = results["lanmt_valid"]["z_usage"]
    out.append(f"- LaNMT z_usage {num(z, '{:.3f}')} nats/token: "
               + ("the decoder reads z (the style bit alone is worth ln 2 = 0.69 nats/token to a "
                  "decoder that hedges 50/50 at the prior mean)."
                  if z is not None and z > 0.05 else "the decoder barely reads z."))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "two_mode_toy"),
                   help="folder for the corpus, data-bin, checkpoints and CLI logs; its bin/ and "
                   "checkpoints/ are deleted first (default: %(default)s)")
    p.add_argument("--out", help="folder for results.md and results.json (default: the --work "
                   "folder; the committed results: --out examples/toy_two_mode)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP/MKL threads of every fairseq process (default: %(default)s)")
    p.add_argument("--updates", type=int, default=600,
                   help="training updates of refine_nat and LaNMT (default: %(default)s)")
    p.add_argument("--score-updates", type=int, default=0,
                   help="training updates of the score network; 0 = half of --updates")
    p.add_argument("--test-sentences", type=int, default=200,
                   help="sentences in the test split (default: %(default)s)")
    p.add_argument("--delta-steps", default="1,2,4",
                   help="comma-separated maximum step counts of the delta chain (default: %(default)s)")
    args = p.parse_args(argv)
    args.out = args.out or args.work
    args.delta_steps = [int(k) for k in args.delta_steps.split(",") if k.strip()]
    logging.basicConfig(level=logging.INFO, format="[two_mode_toy %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    start = time.time()
    results = run_all(args)
    results["command"] = shlex.join(["python", "scripts/two_mode_toy.py",
                                     *(portable(w) for w in (argv or sys.argv[1:]))])
    results["date"] = datetime.date.today().isoformat()
    results["wall_minutes"] = (time.time() - start) / 60
    results["threads"] = args.threads
    results["summary"] = summarize(results)
    write_report(results, args.out)
    logger.info("wrote %s/results.md and results.json (%.1f min)", args.out, results["wall_minutes"])
    for line in results["summary"]:
        logger.info("%s", line)


if __name__ == "__main__":
    main()
