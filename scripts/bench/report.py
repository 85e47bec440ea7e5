"""What a run reports: results.md, the hypotheses (hyps/SYSTEM.txt) and the summary printed at
the end."""

import logging
import os
import sys
from pathlib import Path

from bench import REPO, relative, relative_paths_in

logger = logging.getLogger("benchmark")


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def write_hypotheses(out, key, lines):
    """OUT/hyps/KEY.txt: one detokenised hypothesis a line, in test order."""
    hyp_dir = Path(out) / "hyps"
    hyp_dir.mkdir(parents=True, exist_ok=True)
    (hyp_dir / f"{key}.txt").write_text("".join(h + "\n" for h in lines), encoding="utf-8")


def checkpoint_info(ckpts):
    """Path (relative to the repository), existence and the pipeline's DONE summary (if any) of
    every checkpoint."""
    info = {}
    for name, path in ckpts.items():
        done = Path(path).parent / "DONE"
        info[name] = {"path": relative(path), "exists": os.path.isfile(path),
                      "done": relative_paths_in(done.read_text(errors="replace").strip()) if done.is_file() else None}
    return info


def read_notes(a):
    """--notes, or OUT/notes.md when it exists: hand-written markdown for results.md."""
    path = Path(a.notes) if a.notes else Path(a.out) / "notes.md"
    if a.notes and not path.is_file():
        sys.exit(f"--notes: no file {path}")
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def write_markdown(path, meta, rows, target_lines, plots, notes=None):
    """results.md: the table, how each column is measured, extra sets, checkpoints, targets,
    plots and the equivalent fairseq-generate commands."""
    L = []
    L.append("# Multi30k benchmark: every system, one process, this machine\n")
    if notes:
        L.append(notes + "\n")
    L.append(f"Date (UTC): {meta['date']}  ")
    L.append(f"Machine: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} logical CPUs), "
             f"{meta['machine']['platform']}; device {meta['machine']['device']}; "
             f"torch {meta['machine']['torch']}, fairseq {meta['machine']['fairseq']}  ")
    la = meta["machine"].get("load_average_at_start")
    L.append(f"Threads: torch.set_num_threads({meta['threads']}); load average at start {la} "
             f"(the machine is shared: timings move with its load)  ")
    L.append(f"Test set: {meta['data_bin']} `{meta['gen_subset']}`, {meta['test_sentences']} sentences; "
             f"reference {meta['ref']}  ")
    L.append(f"Latency: median over the first {meta['latency_sentences']} sentences at batch size 1, after "
             f"{meta['warmup']} warm-up sentences. Throughput: batches of --max-tokens {meta['max_tokens']}.  ")
    L.append(f"Total wall time: {meta['wall_seconds']:.0f} s\n")
    L.append("Command:\n")
    L.append("```\n" + meta["command"] + "\n```\n")
    fastest = meta.get("fastest_ar")
    L.append("| system | BLEU (cased, 13a) | papers' BLEU (lc, dedup) | latency b=1 (ms, median) "
             f"| speed-up vs AR beam 5 | speed-up vs fastest AR{f' ({fastest})' if fastest else ''} "
             "| throughput (sent/s) | mean steps | params (M) | ≥ CMLM frontier |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        if r["status"] != "ok":
            L.append(f"| {r['name']} | {r['status']} | | | | | | | | |")
            continue
        front = {True: "yes", False: "**no**"}.get(r.get("at_or_above_cmlm_frontier"), "")
        params = r["params"] / 1e6
        extra = " + teacher" if "teacher" in r["needs"] else ""
        L.append(f"| {r['name']} | {r['bleu']:.2f} | {r['bleu_papers']:.2f} | {r['latency_ms_median']:.1f} "
                 f"| {fmt(r.get('speedup_vs_ar_beam5'), 2)}x | {fmt(r.get('speedup_vs_fastest_ar'), 2)}x "
                 f"| {fmt(r['throughput_sent_per_s'])} "
                 f"| {fmt(r['mean_steps'], 2)} | {params:.2f}{extra} | {front} |")
    L.append("")
    L.append("* BLEU (cased, 13a): sacreBLEU on detokenised cased output against the raw reference, "
             f"`{next((r['bleu_signature'] for r in rows if r['status'] == 'ok'), '')}`.")
    L.append("* papers' BLEU: the NAT papers' variant, hypothesis and reference lowercased, a word "
             "repeated right after itself removed from the hypothesis (after joining subwords), "
             "sacreBLEU 13a. Only comparable with itself.")
    L.append("* Steps: CMLM iterations are decoder passes (fairseq `--iter-decode-max-iter` = "
             "iterations - 1); refine_nat steps are refinement passes after the first decoder "
             "(k steps = k + 1 decoder passes); delta steps are delta-posterior updates (at most k; "
             "k + 1 decoder passes). 'mean steps' is the mean number actually run per sentence "
             "(adaptive stopping; CMLM: iterations, i.e. fairseq's 0-based step + 1).")
    L.append("* ≥ CMLM frontier: BLEU at least the best CMLM BLEU among CMLM settings that are no "
             "slower at batch 1.")
    L.append("* Latent search candidates are rescored by the AR teacher (its parameters not counted).")
    L.append("* Speed-ups: ratios of median batch-1 latencies, against fairseq's AR beam 5 and against "
             "the fastest autoregressive row (fairseq or CTranslate2, any beam). CTranslate2 rows: the "
             "teacher converted by ct2-fairseq-converter (float32 or int8 weights), timed on the same "
             "sentences and threads; rows named 'compiled' decode with the model's passes exported to "
             "ONNX (scripts/export_onnx.py, --onnx-dir) and run by ONNX Runtime.\n")
    if meta.get("translated_sets"):
        L.append("## Extra source files (no references here, not scored)\n")
        L.append("Segmented with the pipeline's subword model, binarised with the data-bin's dictionary, "
                 "translated by every system (batched) and detokenised as hyps/: "
                 "`blind/SET/SYSTEM.<target>`, one line per source line.\n")
        for name, info in meta["translated_sets"].items():
            L.append(f"* **{name}**: `{info['source']}`, {info['lines']} lines")
        L.append("")
    if meta.get("checkpoints"):
        L.append("## Checkpoints\n")
        L.append("Training summaries (the pipeline's `checkpoints/NAME/DONE`: command, wall time, "
                 "last validation line with the number of updates).\n")
        for name, info in meta["checkpoints"].items():
            L.append(f"* **{name}**: `{info['path']}`" + ("" if info["exists"] else " (missing)"))
            if info.get("done"):
                L.append("  ```\n" + "\n".join("  " + line for line in info["done"].splitlines()) + "\n  ```")
        L.append("")
    if target_lines:
        L.append("## Targets\n")
        L.extend(f"* {t}" for t in target_lines)
        L.append("")
    if plots:
        L.append("## Plots\n")
        for title, fn in plots:
            L.append(f"![{title}]({fn})\n")
    L.append("## Equivalent fairseq-generate commands\n")
    L.append("Each system is built as fairseq-generate builds it from these arguments (paths "
             "relative to the repository; the throughput run batches by --max-tokens, the latency "
             "run uses one sentence per batch).\n")
    L.append("```")
    for r in rows:
        L.append(f"# {r['key']}: {r['name']}")
        L.append(r["fairseq_generate"])
    L.append("```")
    # paths relative to the repository, as the equivalent commands are
    Path(path).write_text(("\n".join(L) + "\n").replace(str(REPO) + os.sep, ""), encoding="utf-8")


def print_summary(out, rows, target_lines, plots):
    """One line per system and the targets, on stdout."""
    logger.info("results: %s, %s; plots: %s", Path(out) / "results.md", Path(out) / "results.json",
                ", ".join(fn for _, fn in plots))
    width = max(len(r["key"]) for r in rows) if rows else 10
    print(f"{'system':<{width}}  {'BLEU':>6} {'papers':>6} {'ms/sent':>8} {'speedup':>7} {'sent/s':>8}  status")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['key']:<{width}}  {r['bleu']:6.2f} {r['bleu_papers']:6.2f} {r['latency_ms_median']:8.1f} "
                  f"{fmt(r.get('speedup_vs_ar_beam5'), 2):>7} {fmt(r['throughput_sent_per_s']):>8}  ok")
        else:
            print(f"{r['key']:<{width}}  {'':6} {'':6} {'':8} {'':7} {'':8}  {r['status']}")
    for t in target_lines:
        print("target:", t)
