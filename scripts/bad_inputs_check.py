#!/usr/bin/env python
"""Run the bad inputs a new user hit, on tiny toy models, and say how each one ends.

    python scripts/bad_inputs_check.py [--work DIR] [--out table.md] [--only SUBSTRING]

Trains tiny models on a toy corpus (lowercase words -> uppercase words; about two minutes on
two CPU cores): refine_nat, LaNMT, a score network and an autoregressive teacher, then runs
every case through the real CLIs (fairseq-train, fairseq-generate, fairseq-interactive), the
Python API (in a subprocess) or the Multi30k tools, and classifies what the user sees:

    one clear line   exit 2 and exactly one ``nar_refine: error:`` (or ``spm_tool.py: error:``)
                     line, no traceback (the API: a NARConfigError raised)
    fairseq line     a non-zero exit with argparse's/fairseq's own one-line error
    warning, exit 0  exit 0 and a ``nar_refine: warning:`` line (the input is used anyway)
    handled, exit 0  exit 0 and what the case needs done (progress lines, chunks, a decode)
    silent exit 0    exit 0 and none of the above
    traceback        a traceback, or killed

It prints a markdown table (case, how it ended before, how it ends now, what is expected) and
exits 1 when a case does not end as expected. docs/bad_inputs.md lists the same cases with
their tests. Cases whose memory estimate depends on the machine run with a small
``--decode-memory-gb`` (the toy's dictionary is tiny; the 8k Multi30k one is not).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "nar_refine")
BIN = Path(sys.executable).parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")

CLEAR, FAIRSEQ, WARNING, HANDLED = "one clear line", "fairseq line", "warning, exit 0", "handled, exit 0"
SILENT, TRACEBACK = "silent exit 0", "traceback"


def cli(name):
    return str(BIN / name) if (BIN / name).exists() else name


def run(cmd, env=None, stdin=None, timeout=600):
    return subprocess.run([str(c) for c in cmd], capture_output=True, input=stdin,
                          env=dict(ENV, **(env or {})), timeout=timeout)


# -- toy data and models --------------------------------------------------------------------
def toy_corpus(folder, n_train=2000, n_valid=100, n_test=60, seed=1):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(24)]
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        src = [[rng.choice(words) for _ in range(rng.randint(3, 8))] for _ in range(n)]
        (folder / f"{split}.src").write_text("\n".join(" ".join(s) for s in src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(" ".join(w.upper() for w in s) for s in src) + "\n")
    return folder


def preprocess(raw, dest, extra=()):
    proc = run([cli("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
                "--trainpref", raw / "train", "--validpref", raw / "valid", "--testpref", raw / "test",
                "--destdir", dest, "--joined-dictionary", "--workers", "1", *extra])
    if proc.returncode:
        raise SystemExit(proc.stderr.decode()[-3000:])
    return str(dest)


NAR = ["--task", "nar_translation"]
OPTIM = ["--optimizer", "adam", "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates",
         "20", "--max-tokens", "2000", "--no-epoch-checkpoints", "--disable-validation"]
REFINE = [*NAR, "--arch", "refine_nat_tiny", "--criterion", "refine_nat_loss", "--share-all-embeddings", *OPTIM]
LANMT = [*NAR, "--arch", "lanmt_tiny", "--criterion", "lanmt_elbo", "--share-all-embeddings", *OPTIM]
TEACHER = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
           "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
           "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
           "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--criterion",
           "cross_entropy", *OPTIM]


def train_cmd(data, save_dir, args, max_update=2):
    return [cli("fairseq-train"), data, "--user-dir", USER_DIR, "--save-dir", save_dir,
            "--max-update", str(max_update), "--num-workers", "0", "--seed", "1", "--cpu",
            "--log-format", "simple", "--no-progress-bar", *args]


def train(data, save_dir, args, max_update):
    proc = run(train_cmd(data, save_dir, args, max_update))
    if proc.returncode:
        raise SystemExit(f"training {save_dir} failed:\n{proc.stderr.decode()[-3000:]}")
    return str(Path(save_dir) / "checkpoint_last.pt")


def generate_cmd(data, path, args=()):
    return [cli("fairseq-generate"), data, "--user-dir", USER_DIR, "--path", path, "--gen-subset",
            "test", "--batch-size", "32", "--num-workers", "0", *NAR, *args]


def interactive_cmd(data, path, args=()):
    return [cli("fairseq-interactive"), data, "--user-dir", USER_DIR, "--path", path, *NAR,
            "-s", "src", "-t", "tgt", *args]


def api_cmd(ckpt, data, call):
    """A Python snippet that loads ``ckpt`` with the hub and runs ``call`` on ``nat``."""
    code = (f"from nar_refine.hub import from_pretrained\n"
            f"nat = from_pretrained({str(Path(ckpt).parent)!r}, 'checkpoint_last.pt', "
            f"data_name_or_path={data!r})\n"
            f"from nar_refine.errors import NARConfigError\n"
            f"try:\n    print('RESULT', {call})\n"
            f"except NARConfigError as err:\n    print('nar_refine: error:', err, file=__import__('sys').stderr)\n"
            f"    raise SystemExit(2)\n")
    return [sys.executable, "-c", code]


# -- classification -------------------------------------------------------------------------
def classify(proc, handled=None):
    out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else proc.stdout
    err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
    errors = [l for l in err.splitlines() if l.startswith(("nar_refine: error:", "spm_tool.py: error:"))]
    if "Traceback" in err or proc.returncode not in (0, 1, 2):
        return TRACEBACK, (errors or [l for l in err.splitlines() if l.strip()][-1:] or [""])[-1]
    if proc.returncode == 2 and len(errors) == 1:
        return CLEAR, errors[0]
    if proc.returncode != 0:
        line = [l for l in err.splitlines() if "error:" in l][-1:] or err.splitlines()[-1:] or [""]
        return FAIRSEQ, line[0]
    warnings = [l for l in err.splitlines() if l.startswith("nar_refine: warning:")]
    if handled is not None:
        ok, what = handled(out, err)
        if ok:
            return HANDLED, what
    if warnings:
        return WARNING, warnings[0]
    return SILENT, (out.strip().splitlines() or [""])[-1]


def count_hypotheses(out):
    return sum(1 for l in out.splitlines() if l.startswith("H-"))


def decodes(n):
    return lambda out, err: (count_hypotheses(out) == n, f"{count_hypotheses(out)} hypotheses")


def log_line(phrase, n=None):
    def check(out, err):
        lines = [l for l in (out + err).splitlines() if phrase in l]
        ok = bool(lines) and (n is None or count_hypotheses(out) == n)
        return ok, (lines[-1].split("|")[-1].strip() if lines else "")
    return check


# -- the cases ------------------------------------------------------------------------------
def other_dictionaries(data, folder, change):
    shutil.copytree(data, folder)
    for side in ("src", "tgt"):
        path = Path(folder) / f"dict.{side}.txt"
        lines = path.read_text().splitlines()
        if change == "swap":
            lines[0], lines[1] = lines[1], lines[0]
        else:
            lines.append("zzz 1")
        path.write_text("\n".join(lines) + "\n")
    return str(folder)


def moved_teacher(teacher, dest, keep_record):
    import torch

    state = torch.load(teacher, map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = str(Path(dest).parent / "moved-away")
    if not keep_record:
        state["task_state"].pop("nar_refine_dictionaries", None)
    torch.save(state, dest)
    return str(dest)


def empty_line_data(work, data, split_file, index):
    raw = toy_corpus(work / f"raw-empty-{split_file}", n_train=40, n_valid=10, n_test=5)
    lines = (raw / split_file).read_text().splitlines()
    lines[index] = ""
    (raw / split_file).write_text("\n".join(lines) + "\n")
    return preprocess(raw, work / f"bin-empty-{split_file}", ["--srcdict", f"{data}/dict.src.txt"])


def two_trainings(work, data):
    """Start a long training, then a second into the same --save-dir; classify the second."""
    save = work / "shared-save-dir"
    first = subprocess.Popen([str(c) for c in train_cmd(data, save, REFINE, 100000)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        for _ in range(120):  # until it has taken the lock
            if (save / "train.lock").exists():
                break
            time.sleep(1)
        return run(train_cmd(data, save, REFINE, 2))
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait()


def cases(work, data, m):
    """(name, issue's class, expected, how to run it -> CompletedProcess, handled check)."""
    swap = lambda: other_dictionaries(data, work / "dict-swapped", "swap")  # noqa: E731
    bigger = lambda: other_dictionaries(data, work / "dict-bigger", "add")  # noqa: E731
    prog = {"NAR_REFINE_PROGRESS_SECONDS": "1"}
    bad_utf8 = work / "bad.txt"
    bad_utf8.write_bytes(b"a man\nrides \xff a bike\n")
    spm = [sys.executable, str(REPO / "examples" / "multi30k" / "spm_tool.py")]
    t = lambda args: run(train_cmd(data, work / "refused", args))  # noqa: E731
    g = lambda path, args=(), env=None, d=None: run(generate_cmd(d or data, path, args), env=env)  # noqa: E731
    return [
        # silently wrong before
        ("data-bin with same-size other dictionaries (generate)", SILENT, CLEAR,
         lambda: g(m["refine"], d=swap()), None),
        ("--score-alpha 1e30", SILENT, CLEAR, lambda: g(m["score"], ["--score-alpha", "1e30"]), None),
        ("two trainings into one --save-dir", SILENT, CLEAR, lambda: two_trainings(work, data), None),
        ("fairseq-interactive without --bpe (raw words for a subword data-bin)", SILENT, WARNING,
         lambda: run(interactive_cmd(data, m["refine"]), stdin=b"A man rides a bike .\n"), None),
        # crash / unbounded before
        ("--latent-search-size 5000 (one sentence over the memory budget)", "crash", CLEAR,
         lambda: g(m["lanmt"], ["--latent-search-size", "5000", "--decode-memory-gb", "0.05"]), None),
        ("--latent-search-size 200 (the batch over the memory budget)", "crash", HANDLED,
         lambda: g(m["lanmt"], ["--latent-search-size", "200", "--decode-memory-gb", "0.02"]),
         log_line("decoding it in chunks of", 60)),
        ("--iter-decode-with-beam 1000", "crash", CLEAR,
         lambda: g(m["refine"], ["--iter-decode-with-beam", "1000", "--decode-memory-gb", "0.05"]), None),
        ("--iter-decode-max-iter 100000 --iter-decode-force-max-iter", "unbounded", CLEAR,
         lambda: g(m["refine"], ["--iter-decode-max-iter", "100000", "--iter-decode-force-max-iter"]), None),
        ("--iter-decode-max-iter 1000 --iter-decode-force-max-iter (the maximum)", "unbounded", HANDLED,
         lambda: g(m["refine"], ["--iter-decode-max-iter", "1000", "--iter-decode-force-max-iter"], prog),
         log_line("refinement steps so far", 60)),
        ("--score-steps 100000", "unbounded", CLEAR, lambda: g(m["score"], ["--score-steps", "100000"]), None),
        ("latent search in small chunks (--latent-search-max-tokens 1)", "unbounded", HANDLED,
         lambda: g(m["lanmt"], ["--latent-search-size", "20", "--latent-search-max-tokens", "1"], prog),
         log_line("chunks done", 60)),
        # tracebacks before
        ("train --arch lanmt_tiny --criterion refine_nat_loss", TRACEBACK, CLEAR,
         lambda: t([*LANMT[:4], "--criterion", "refine_nat_loss", *LANMT[6:]]), None),
        ("train refine_nat --criterion cross_entropy", TRACEBACK, CLEAR,
         lambda: t([*REFINE, "--criterion", "cross_entropy"]), None),
        ("train --cpu --fp16", TRACEBACK, CLEAR, lambda: t([*REFINE, "--fp16"]), None),
        ("train --cpu --bf16", TRACEBACK, CLEAR, lambda: t([*REFINE, "--bf16"]), None),
        ("train --update-freq 0", TRACEBACK, CLEAR, lambda: t([*REFINE, "--update-freq", "0"]), None),
        ("data-bin with another dictionary size (generate)", TRACEBACK, CLEAR,
         lambda: g(m["refine"], d=bigger()), None),
        ("spm_tool.py encode on text that is not UTF-8", TRACEBACK, CLEAR,
         lambda: run([*spm, "encode", "--model", m["spm"]], stdin=bad_utf8.read_bytes()), None),
        ("spm_tool.py train on text that is not UTF-8", TRACEBACK, CLEAR,
         lambda: run([*spm, "train", "--input", bad_utf8, "--model-prefix", work / "spm-bad"]), None),
        ("Python API on text that is not valid UTF-8", TRACEBACK, CLEAR,
         lambda: run(api_cmd(m["refine"], data, "nat.translate(['w1 \\udcff w2'])")), None),
        ("Python API on bytes (not a str)", TRACEBACK, CLEAR,
         lambda: run(api_cmd(m["refine"], data, "nat.translate([b'w1 w2'])")), None),
        ("translate(..., iter_decode_max_iter='abc')", TRACEBACK, CLEAR,
         lambda: run(api_cmd(m["refine"], data, "nat.translate(['w1'], iter_decode_max_iter='abc')")), None),
        # accepted nonsense before
        ("train --kl-budget nan", "accepted", CLEAR, lambda: t([*LANMT, "--kl-budget", "nan"]), None),
        ("train --kl-budget inf", "accepted", CLEAR, lambda: t([*LANMT, "--kl-budget", "inf"]), None),
        ("train --lr -1", "accepted", CLEAR, lambda: t([*REFINE, "--lr", "-1"]), None),
        ("train --max-tokens 0", "accepted", CLEAR, lambda: t([*REFINE, "--max-tokens", "0"]), None),
        ("train --max-tokens -5", "accepted", CLEAR, lambda: t([*REFINE, "--max-tokens", "-5"]), None),
        ("train --batch-size 0", "accepted", CLEAR, lambda: t([*REFINE, "--batch-size", "0"]), None),
        ("--score-line-search 0.5,,1", "accepted", CLEAR,
         lambda: g(m["score"], ["--score-line-search", "0.5,,1"]), None),
        ("--nbest 5", "accepted", CLEAR, lambda: g(m["refine"], ["--nbest", "5"]), None),
        ("--latent-search-noise 1e30", "accepted", CLEAR,
         lambda: g(m["lanmt"], ["--decoding", "prior", "--latent-search-size", "3",
                                "--latent-search-noise", "1e30"]), None),
        ("generate --fp16 on a CPU", "accepted", CLEAR, lambda: g(m["refine"], ["--fp16"]), None),
        ("generate --bf16 on a CPU", "accepted", CLEAR, lambda: g(m["refine"], ["--bf16"]), None),
        ("empty target line in the train split", "accepted", CLEAR,
         lambda: run(train_cmd(empty_line_data(work, data, "train.tgt", 5), work / "refused", REFINE)), None),
        ("empty source line in the valid split", "accepted", CLEAR,
         lambda: run(train_cmd(empty_line_data(work, data, "valid.src", 3), work / "refused",
                               REFINE[:-1])), None),
        ("teacher whose data-bin was moved (dictionaries recorded)", "accepted", HANDLED,
         lambda: g(m["lanmt"], ["--latent-search-size", "2", "--teacher-path",
                                moved_teacher(m["teacher"], work / "moved.pt", True)]), decodes(60)),
        ("teacher of nar_refine 0.2.0 whose data-bin was moved", "accepted", CLEAR,
         lambda: g(m["lanmt"], ["--latent-search-size", "2", "--teacher-path",
                                moved_teacher(m["teacher"], work / "old.pt", False)]), None),
        ("prepare.sh on raw text that is not UTF-8", "-", CLEAR, lambda: prepare_bad(work, bad_utf8), None),
    ]


def prepare_bad(work, bad):
    data = work / "multi30k-bad"
    data.mkdir(exist_ok=True)
    for name in ("train", "val", "test_2016_flickr"):
        for lang in ("en", "de"):
            (data / f"{name}.{lang}").write_text("a man rides a bike .\n" * 10)
    shutil.copy(bad, data / "train.de")
    env = {"DATA": str(data), "PATH": f"{BIN}:{os.environ['PATH']}"}
    return run(["bash", REPO / "examples" / "multi30k" / "prepare.sh", "--smoke", work / "prepare-work"], env=env)


def build_models(work):
    data = preprocess(toy_corpus(work / "raw"), work / "bin")
    m = {"refine": train(data, work / "refine", REFINE, 40), "lanmt": train(data, work / "lanmt", LANMT, 20),
         "teacher": train(data, work / "teacher", TEACHER, 20)}
    m["score"] = train(data, work / "score", [*NAR, "--arch", "score_net_tiny", "--criterion",
                                               "score_matching", "--lanmt-path", m["lanmt"], *OPTIM], 2)
    text = work / "spm.txt"
    text.write_text("a man rides a bike .\ntwo dogs play in the snow .\n" * 20)
    proc = run([sys.executable, REPO / "examples" / "multi30k" / "spm_tool.py", "train", "--input",
                text, "--model-prefix", work / "spm", "--vocab-size", "30"])
    if proc.returncode:
        raise SystemExit(proc.stderr.decode())
    m["spm"] = str(work / "spm.model")
    return data, m


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="working folder (default: a temporary one, removed at the end)")
    p.add_argument("--out", help="also write the table (markdown) and a JSON of it here (OUT.md, OUT.json)")
    p.add_argument("--only", help="run only the cases whose name contains this")
    a = p.parse_args()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        data, models = build_models(work)
        print(f"toy models trained in {time.time() - t0:.0f} s ({work})", file=sys.stderr)
        rows = []
        for name, before, expected, fn, handled in cases(work, data, models):
            if a.only and a.only not in name:
                continue
            t = time.time()
            now, line = classify(fn(), handled)
            rows.append({"case": name, "before": before, "now": now, "expected": expected,
                         "ok": now == expected, "line": line[:300], "seconds": round(time.time() - t, 1)})
            print(f"[{'ok' if now == expected else 'UNEXPECTED'}] {name}: {now}", file=sys.stderr)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    table = ["| # | case | before | now | expected | what the user sees (abbreviated) |",
             "|---:|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        mark = "" if r["ok"] else " **(unexpected)**"
        seen = r["line"].replace("|", "\\|")[:160]
        table.append(f"| {i} | {r['case']} | {r['before']} | {r['now']}{mark} | {r['expected']} | {seen} |")
    counts = {}
    for r in rows:
        counts[r["now"]] = counts.get(r["now"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    text = "\n".join(table) + f"\n\n{len(rows)} cases: {summary}; {sum(not r['ok'] for r in rows)} unexpected.\n"
    print(text)
    if a.out:
        Path(a.out + ".md").write_text(text)
        Path(a.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
