"""Extra source files (e.g. the blind test sets, sources only), translated by every system.

Each raw file is segmented with the pipeline's subword model (WORK/spm/spm.model, or Moses +
WORK/fastbpe/codes) and binarised with fairseq-preprocess and the data-bin's source dictionary
into WORK/data-bin-extra/SET/ (SET: the file name without .SRC); every system then translates it
(batched, as the throughput run) into OUT/blind/SET/SYSTEM.TGT, detokenised as hyps/, one line
per source line, in order. Nothing is scored: these files have no references here.
"""

import datetime
import json
import logging
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

from bench import REPO, relative
from bench.runner import hypothesis_text
from bench.systems import missing_checkpoints

logger = logging.getLogger("benchmark")


class ExtraSets:
    """The extra source files of a run (--translate FILE, --translate-dir DIR), binarised once."""

    def __init__(self, a):
        files = list(a.translate)
        if a.translate_dir:
            found = sorted(Path(a.translate_dir).glob(f"*.{a.source_lang}"))
            if not found:
                sys.exit(f"--translate-dir: no *.{a.source_lang} files in {a.translate_dir}")
            files += [str(f) for f in found]
        binarised = [binarise_extra(a, f) for f in files]
        names = [b[0] for b in binarised]
        if len(set(names)) != len(names):
            sys.exit(f"--translate: two extra files with the same set name: {names}")
        self.a = a
        self.dirs = {name: d for name, d, _ in binarised}  # set name -> binarised data dir
        # set name -> source file (relative to the repository) and its number of lines
        self.sets = {name: {"source": relative(f), "lines": n} for f, (name, _, n) in zip(files, binarised)}

    def translate(self, bench, system, built, decode):
        """Every extra set with this system; -> {set: lines, seconds, output file}."""
        return {name: self.translate_set(bench, system, built, decode, name, set_dir)
                for name, set_dir in self.dirs.items()}

    def translate_set(self, bench, system, built, decode, set_name, set_dir):
        """Translate a binarised source-only set (binarise_extra) with this system's generator;
        the dataset is built by the system's own task class (e.g. translation_lev's BOS), from
        set_dir instead of the data-bin. Writes OUT/blind/SET/KEY.TGT in source order."""
        from fairseq import tasks, utils
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        a = self.a
        cfg, task, models, generator, _ = built
        key = (set_dir, cfg.task._name)
        if key not in bench.datasets:
            set_cfg = cfg.task.copy()
            set_cfg.data = set_dir
            set_task = tasks.setup_task(set_cfg)
            set_task.load_dataset("test", task_cfg=bench.saved_cfg(built).task)
            bench.datasets[key] = set_task.dataset("test")
        dataset = bench.datasets[key]
        n = len(dataset)
        indices = dataset.ordered_indices()
        batches = dataset.batch_by_size(indices, max_tokens=a.max_tokens, max_sentences=None)
        strip = get_symbols_to_strip_from_output(generator)
        hyps = {}
        utils.set_torch_seed(a.seed)
        t0 = time.perf_counter()
        for b in batches:
            sample = dataset.collater([dataset[i] for i in b])
            sample = utils.move_to_cuda(sample) if a.cuda else sample
            out = task.inference_step(generator, models, sample)
            for j, sid in enumerate(sample["id"].tolist()):
                hyps[sid] = decode(hypothesis_text(out[j][0], cfg, task.target_dictionary, strip))
        seconds = time.perf_counter() - t0
        if sorted(hyps) != list(range(n)):
            raise RuntimeError(f"{set_name}: {n} source lines but hypotheses for {len(hyps)}")
        out_dir = Path(a.out) / "blind" / set_name
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{system.key}.{a.target_lang}"
        path.write_text("".join(hyps[i] + "\n" for i in range(n)), encoding="utf-8")
        logger.info("  %s: %d lines -> %s (%.1f s)", set_name, n, path, seconds)
        return {"lines": n, "seconds": round(seconds, 3), "output": relative(path)}


def segment_lines(a, lines):
    """Raw text -> the pipeline's subword tokens (as examples/multi30k/prepare.sh segments)."""
    work = Path(a.work)
    if a.bpe == "sentencepiece":
        import sentencepiece as spm

        model = work / "spm" / "spm.model"
        if not model.is_file():
            raise SystemExit(f"--translate: no sentencepiece model {model} (the pipeline's prepare step)")
        sp = spm.SentencePieceProcessor(model_file=str(model))
        return [" ".join(sp.encode(line, out_type=str)) for line in lines]
    if a.bpe == "fastbpe":
        import subprocess
        import tempfile

        from sacremoses import MosesTokenizer

        fast, codes = work / "fastbpe" / "fast", work / "fastbpe" / "codes"
        if not (fast.is_file() and codes.is_file()):
            raise SystemExit(f"--translate: no fastBPE tool/codes in {work / 'fastbpe'} (the pipeline's prepare step)")
        tok = MosesTokenizer(lang=a.source_lang)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "tok", Path(tmp) / "bpe"
            src.write_text("".join(tok.tokenize(line.strip(), return_str=True, escape=False) + "\n"
                                   for line in lines), encoding="utf-8")
            subprocess.run([str(fast), "applybpe", str(dst), str(src), str(codes)], check=True,
                           stdout=subprocess.DEVNULL)
            return dst.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines]


def binarise_extra(a, raw_path):
    """Raw source file -> WORK/data-bin-extra/SET/ (split "test", source side only, the data-bin's
    dictionaries). Returns (set name, data dir, lines)."""
    import shutil
    import subprocess

    raw_path = Path(raw_path)
    suffix = "." + a.source_lang
    if not raw_path.is_file():
        raise SystemExit(f"--translate: no file {raw_path}")
    name = raw_path.name[: -len(suffix)] if raw_path.name.endswith(suffix) else raw_path.name
    lines = raw_path.read_text(encoding="utf-8").splitlines()
    if a.translate_lines is not None:
        lines = lines[: a.translate_lines]
    out = Path(a.work) / "data-bin-extra" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seg = segment_lines(a, lines)
    if len(seg) != len(lines):
        raise RuntimeError(f"{raw_path}: {len(lines)} lines but {len(seg)} after segmentation")
    (out / f"text.{a.source_lang}").write_text("".join(x + "\n" for x in seg), encoding="utf-8")
    src_dict = Path(a.data_bin) / f"dict.{a.source_lang}.txt"
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", a.source_lang,
           "--target-lang", a.target_lang, "--only-source", "--srcdict", str(src_dict),
           "--testpref", str(out / "text"), "--destdir", str(out), "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed for {raw_path}:\n{proc.stderr[-2000:]}")
    shutil.copy(Path(a.data_bin) / f"dict.{a.target_lang}.txt", out / f"dict.{a.target_lang}.txt")
    logger.info("extra source %s: %d lines, segmented (%s) and binarised into %s", raw_path, len(lines), a.bpe, out)
    return name, str(out), len(lines)


def merge_earlier_translations(path, done, sets, systems):
    """Keep an earlier run's entries for the systems this run did not translate (a run with
    --systems retranslates only those), if they cover the same sets; their files are untouched.
    Entries keep the date of the run that wrote them; -> (entries, the earlier runs whose
    entries are kept: date and command)."""
    if not path.is_file():
        return done, []
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        logger.warning("%s is not JSON: its entries are not kept", path)
        return done, []
    earlier = meta.get("systems", {})
    rerun = {s.key for s in systems}
    kept = {k: {**v, "date": v.get("date", meta.get("date", ""))} for k, v in earlier.items()
            if k not in rerun and set(v.get("sets", {})) == set(sets)}
    if kept:
        logger.info("kept the earlier translations of %d system(s) not rerun: %s", len(kept), ", ".join(kept))
    order = list(earlier) + [k for k in done if k not in earlier]
    dates = {v["date"] for v in kept.values()}
    runs = [r for r in meta.get("earlier_runs", []) + [{"date": meta.get("date", ""), "command": meta.get("command", "")}]
            if r["date"] in dates]
    return {k: done.get(k, kept.get(k)) for k in order if k in done or k in kept}, runs


def translate_only(a, bench, systems, extra, decode, command, machine, t_start):
    """Translate the extra files with every system; OUT/blind/translations.{json,md}."""
    out = Path(a.out) / "blind"
    out.mkdir(parents=True, exist_ok=True)
    done, failed = {}, []
    for i, s in enumerate(systems, 1):
        absent = missing_checkpoints(s, bench.ckpts)
        if absent:
            failed.append(f"{s.key}: missing checkpoint " + ", ".join(relative(p) for p in absent))
            logger.warning("[%d/%d] %s: %s", i, len(systems), s.key, failed[-1])
            continue
        logger.info("[%d/%d] %s: %s", i, len(systems), s.key, s.name)
        try:
            done[s.key] = {"name": s.name, "sets": extra.translate(bench, s, bench.setup(s), decode),
                           "fairseq_generate": " ".join(shlex.quote(x) for x in s.args)}
        except Exception as err:
            logger.error("[%d/%d] %s failed:\n%s", i, len(systems), s.key, traceback.format_exc())
            failed.append(f"{s.key}: {type(err).__name__}: {err}")
    sets = extra.sets
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    for entry in done.values():
        entry["date"] = date
    done, runs = merge_earlier_translations(out / "translations.json", done, sets, systems)
    meta = {"command": command, "machine": machine, "threads": a.threads, "bpe": a.bpe,
            "date": date, "wall_seconds": round(time.perf_counter() - t_start, 1), "sets": sets,
            "checkpoints": {k: relative(v) for k, v in bench.ckpts.items()},
            "systems": done, "failed": failed, "earlier_runs": runs}
    (out / "translations.json").write_text(json.dumps(meta, indent=1).replace(str(REPO) + os.sep, ""),
                                           encoding="utf-8")
    L = ["# Translations of extra source files (no references here: not scored)\n",
         f"Date (UTC): {meta['date']}; {a.threads} thread(s); total {meta['wall_seconds']:.0f} s. Command:\n",
         "```\n" + command + "\n```\n",
         *[f"Systems dated {r['date']} were translated earlier by `{r['command']}`.\n" for r in meta["earlier_runs"]],
         "Each source file is segmented with the pipeline's subword model (" + a.bpe + "), binarised with "
         "the data-bin's dictionary (WORK/data-bin-extra/SET), translated by every system in batches and "
         f"detokenised as the test2016 hypotheses: `SET/SYSTEM.{a.target_lang}`, one line per source line, "
         "in source order. The system names are those of results.json.\n",
         "| set | source | lines |", "|---|---|---:|"]
    L += [f"| {n} | `{v['source']}` | {v['lines']} |" for n, v in sets.items()]
    L += ["", "| system | " + " | ".join(f"{n} (s)" for n in sets) + " | translated (UTC) |",
          "|---|" + "---:|" * len(sets) + "---|"]
    L += [f"| {k} | " + " | ".join(f"{v['sets'][n]['seconds']:.1f}" for n in sets) + f" | {v.get('date', '')} |"
          for k, v in done.items()]
    if failed:
        L += ["", "Not translated:", ""] + [f"* {f}" for f in failed]
    (out / "translations.md").write_text(("\n".join(L) + "\n").replace(str(REPO) + os.sep, ""),
                                         encoding="utf-8")
    logger.info("translated %d set(s) with %d system(s): %s", len(sets), len(done), out)
    if failed:
        logger.error("%d system(s) not translated", len(failed))
        return 1
    return 0
