"""One benchmark run, in order: the systems, each measured and scored, then results.json,
results.md, the plots and a summary; or only --replot, or only --translate-only."""

import datetime
import importlib.util
import json
import logging
import os
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path

from bench import ct2, relative
from bench.extra import ExtraSets, translate_only
from bench.options import command_line, get_parser, path_settings, resolve_paths
from bench.plots import make_plots
from bench.report import checkpoint_info, fmt, print_summary, read_notes, write_hypotheses, write_markdown
from bench.runner import Bench, load_evaluate_module, machine_info
from bench.scoring import add_speedups, bleu_scores, cmlm_frontier_check, targets
from bench.systems import System, build_systems, missing_checkpoints, select_systems

logger = logging.getLogger("benchmark")


def replot(a):
    """--replot: the plots, the targets and results.md again from OUT/results.json, nothing
    run (the measured rows are kept as they are)."""
    results = Path(a.out) / "results.json"
    if not results.is_file():
        sys.exit(f"--replot: no {results} (run the benchmark first)")
    data = json.loads(results.read_text())
    data["targets"] = targets(data["systems"])
    results.write_text(json.dumps(data, indent=1))
    plots = make_plots(a.out, data["systems"], a.length_bin)
    write_markdown(Path(a.out) / "results.md", data, data["systems"], data["targets"], plots,
                   notes=read_notes(a))
    print("redrew " + ", ".join(str(Path(a.out) / png) for _, png in plots) + " and results.md")


def quiet_logs():
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO, stream=sys.stdout)
    for noisy in ("fairseq.tasks.text_to_speech", "fairseq.tasks.translation", "fairseq.data.data_utils",
                  "fairseq.utils", "fairseq.tasks.fairseq_task"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # hydra's deprecation notes, raised by fairseq's config composition at every checkpoint load
    warnings.filterwarnings("ignore", message=r"(?s).*hydra\.cc/docs")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra\.")


def measure(bench, system, decode, refs, extra, out, ckpts, progress):
    """One row of the table: the system's ids and command, then its scores and timings, or why
    it has none (a missing checkpoint, an error: one broken system must not lose the others)."""
    row = {"key": system.key, "name": system.name, "family": system.family,
           "checkpoint": relative(ckpts[system.ckpt]), "needs": system.needs, "series": system.series,
           "passes": system.passes, "primary": system.primary,
           "fairseq_generate": equivalent_command(bench, system, ckpts)}
    absent = missing_checkpoints(system, ckpts)
    if absent:
        row["status"] = "missing checkpoint: " + ", ".join(relative(p) for p in absent)
        logger.warning("%s %s: %s", progress, system.key, row["status"])
        return row
    skipped = optional_dependency_missing(system)
    if skipped:
        row["status"] = skipped
        logger.warning("%s %s: %s", progress, system.key, row["status"])
        return row
    logger.info("%s %s: %s", progress, system.key, system.name)
    try:
        if system.engine == "ctranslate2":  # its test set read by the fairseq teacher's task
            reference = System("ar.reference", "", "AR", system.ckpt, ["--task", "translation"] + system.args)
            timings, raw, built = ct2.run(bench, system, reference)
        else:
            if system.ct2_teacher:  # its --teacher-path is the converted teacher
                ct2.converted_model(bench.a, ckpts["teacher"], system.ct2_teacher)
            timings, raw, built = bench.run(system)
        scores, cased = bleu_scores(raw, refs[:len(raw)], decode)
        write_hypotheses(out, system.key, cased)
        translated = extra.translate(bench, system, built, decode) if built is not None else {}
        row.update({"translated": translated, "status": "ok", **scores, **timings})
        logger.info("%s %s: BLEU %.2f (papers' %.2f) | batch-1 latency %.1f ms (median of %d) | "
                    "%.1f sent/s batched | mean steps %s", progress, system.key, row["bleu"],
                    row["bleu_papers"], row["latency_ms_median"], row["latency_sentences"],
                    row["throughput_sent_per_s"] or 0.0, fmt(row["mean_steps"], 2))
    except Exception as err:
        logger.error("%s %s failed:\n%s", progress, system.key, traceback.format_exc())
        row["status"] = f"error: {type(err).__name__}: {err}".replace("\n", " ")[:300]
    return row


def optional_dependency_missing(system):
    """A "skipped: ..." status when the row needs an optional package that is not installed
    (scripts/setup.sh installs them when it can), else None."""
    if system.engine == "ctranslate2" and not ct2.available():
        return ct2.SKIPPED
    if "--onnx-dir" in system.args and importlib.util.find_spec("onnxruntime") is None:
        return ("skipped: onnxruntime is not installed (pip install onnx onnxruntime; "
                "scripts/setup.sh installs them)")
    return None


def equivalent_command(bench, system, ckpts):
    """The command line that builds the system outside the benchmark (results.md lists them)."""
    if system.engine == "ctranslate2":
        a = bench.a
        out = os.path.join(a.ct2_dir, f"teacher-{system.quantization}")
        return (f"ct2-fairseq-converter --model_path {relative(ckpts[system.ckpt])} --data_dir "
                f"{relative(a.data_bin)} --source_lang {a.source_lang} --target_lang {a.target_lang} "
                f"--quantization {system.quantization} --unsafe_deserialization --output_dir "
                f"{relative(out)}   # then ctranslate2.Translator(OUTPUT_DIR, intra_threads="
                f"{a.threads}).translate_batch(subword tokens, beam_size={system.beam})")
    return ("fairseq-generate " + " ".join(shlex.quote(relative(x) if os.path.isabs(x) else x)
                                           for x in bench.generate_args(system))
            + "   # batch-1 latency: --batch-size 1")


def main(argv=None, description=None):
    a = get_parser(description).parse_args(argv)
    ckpts = resolve_paths(a)
    if a.replot:
        return replot(a)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(a.threads))
    quiet_logs()
    import nar_refine  # noqa: F401  (patches torch.load and fairseq before any checkpoint is read)
    import torch

    torch.set_num_threads(a.threads)
    if a.cuda and not torch.cuda.is_available():
        sys.exit("--cuda: no CUDA device available")
    decode = load_evaluate_module().Decoder(a.bpe, a.target_lang)
    if not os.path.isdir(a.data_bin):
        sys.exit(f"no data-bin {a.data_bin}: run the pipeline's prepare step (or pass --data-bin)")
    if not os.path.isfile(a.ref):
        sys.exit(f"no reference {a.ref} (pass --ref)")
    refs = [line.rstrip("\n") for line in open(a.ref, encoding="utf-8")]
    Path(a.out).mkdir(parents=True, exist_ok=True)

    command = command_line(sys.argv[1:] if argv is None else argv)
    machine = machine_info(a)
    t_start = time.perf_counter()
    logger.info("benchmark: %s", command)
    logger.info("machine: %s", json.dumps(machine))
    logger.info("work %s, data-bin %s, out %s, bpe %s, threads %d, device %s", a.work, a.data_bin, a.out,
                a.bpe, a.threads, machine["device"])

    extra = ExtraSets(a)
    if a.translate_only and not extra.dirs:
        sys.exit("--translate-only: give --translate FILE or --translate-dir DIR")
    systems = select_systems(build_systems(a, ckpts), a.systems)
    bench = Bench(a, ckpts)
    if a.translate_only:  # the extra files through fairseq's generators (CTranslate2 rows: not)
        systems = [s for s in systems if s.engine == "fairseq"]
        return translate_only(a, bench, systems, extra, decode, command, machine, t_start)
    rows = [measure(bench, s, decode, refs, extra, a.out, ckpts, f"[{i}/{len(systems)}]")
            for i, s in enumerate(systems, 1)]
    n_missing = sum(r["status"].startswith("missing checkpoint") for r in rows)
    n_error = sum(r["status"].startswith("error") for r in rows)

    fastest_ar = add_speedups(rows)
    cmlm_frontier_check(rows)
    target_lines = targets(rows)
    plots = make_plots(a.out, rows, a.length_bin)
    ok = [r for r in rows if r["status"] == "ok"]
    meta = {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine, "threads": a.threads, "data_bin": relative(a.data_bin), "gen_subset": a.gen_subset,
        "ref": relative(a.ref), "bpe": a.bpe, "test_sentences": ok[0]["test_sentences"] if ok else a.test_sentences,
        "latency_sentences": ok[0]["latency_sentences"] if ok else a.latency_sentences, "warmup": a.warmup,
        "max_tokens": a.max_tokens, "wall_seconds": time.perf_counter() - t_start,
        "settings": path_settings(a),
        "checkpoints": checkpoint_info(ckpts),
        "translated_sets": extra.sets,
        "fastest_ar": fastest_ar,
    }
    write_markdown(Path(a.out) / "results.md", meta, rows, target_lines, plots, notes=read_notes(a))
    with open(Path(a.out) / "results.json", "w") as f:
        json.dump({**meta, "targets": target_lines, "systems": rows}, f, indent=1)
    print_summary(a.out, rows, target_lines, plots)
    if n_error or (a.require_all and n_missing):
        logger.error("%d system(s) failed, %d missing checkpoint(s)", n_error, n_missing)
        return 1
    return 0
