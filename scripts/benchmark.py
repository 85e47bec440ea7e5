#!/usr/bin/env python
"""Speed/quality benchmark: every system on the same test set, on this machine, in ONE process.

    python scripts/benchmark.py [--work examples/multi30k/work] [--out examples/multi30k/results]
    python scripts/benchmark.py --smoke          # work-smoke, a handful of sentences (CI)

Systems (each row "missing checkpoint" when its checkpoint does not exist):

  * AR Transformer teacher, beam 1 and beam 5 (fairseq SequenceGenerator, task translation)
  * fairseq's CMLM (task translation_lev, IterativeRefinementGenerator), 1/4/10 iterations
  * refine_nat: adaptive refinement (max 10 steps) and fixed 1/2/4/10 steps; adaptive with a
    length beam of 3 (--iter-decode-with-beam), ranked by refine_nat itself and reranked by the
    teacher (--teacher-path)
  * LaNMT: prior, delta inference (<= 1/2/4 steps; the plain chain, and with --delta-ascent-check),
    latent search m = 5/10/20 rescored by the teacher
  * score inference, score inference + latent search (teacher), energy inference

Every system is built exactly as ``fairseq-generate`` builds it: its fairseq-generate arguments
(written to results.json as an equivalent command) are parsed by fairseq's generation parser,
the checkpoint is loaded with ``checkpoint_utils.load_model_ensemble`` into ``task``,
``task.build_generator(models, cfg.generation)`` picks the generator and every sentence goes
through ``task.inference_step``.

Measured per system:
  * BLEU: sacreBLEU on detokenised output of the whole test set (batched run), cased, 13a; and
    the papers' variant (lowercased, consecutive duplicate words removed), labelled.
    Scoring is examples/multi30k/evaluate.py's.
  * latency: median wall time of ``task.inference_step`` at batch size 1 over the first N test
    sentences (``--latency-sentences``, after ``--warmup`` untimed sentences), ms per sentence.
  * throughput: sentences / total ``inference_step`` time over the test set in batches of
    ``--max-tokens`` source+target tokens (fairseq's batch_by_size over length-sorted indices).
  * speed-up vs AR beam 5 at batch 1 (ratio of median latencies).
Clocks: time.perf_counter, with torch.cuda.synchronize() before each reading under --cuda.

Outputs in --out: results.md, results.json, latency_vs_length.png, bleu_vs_steps.png,
bleu_vs_latency.png, hyps/SYSTEM.txt (detokenised hypotheses in test order).

Extra source files (e.g. the blind test sets, sources only): ``--translate FILE`` (repeatable) or
``--translate-dir DIR`` (every ``*.SRC`` file in it). Each raw file is segmented with the
pipeline's subword model (WORK/spm/spm.model, or Moses + WORK/fastbpe/codes) and binarised with
fairseq-preprocess and the data-bin's source dictionary into WORK/data-bin-extra/SET/ (SET: the
file name without .SRC); every system then translates it (batched, as the throughput run) and
writes OUT/blind/SET/SYSTEM.TGT, detokenised as hyps/, one line per source line, in order.
Nothing is scored there: these files have no references here.
--replot redraws the three plots and rewrites results.md from --out/results.json without running
anything; --notes MD (default OUT/notes.md) puts hand-written notes after results.md's header.
"""

import argparse
import datetime
import fnmatch
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "nar_refine")
EXAMPLE_DIR = REPO / "examples" / "multi30k"

logger = logging.getLogger("benchmark")

# checkpoint folder names of the Multi30k pipeline (WORK/checkpoints/NAME/checkpoint_best.pt)
CHECKPOINTS = ["teacher", "cmlm", "refine_nat", "lanmt", "score_net", "energy_net"]


def int_list(text):
    return [int(x) for x in str(text).split(",") if x.strip()]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="smoke test: work dir examples/multi30k/work-smoke, a few sentences, "
                        "output in WORK/benchmark, AR length cap 1.2*src+10 (as the smoke pipeline)")
    p.add_argument("--work", help="pipeline work dir (default examples/multi30k/work, "
                                  "examples/multi30k/work-smoke with --smoke)")
    p.add_argument("--out", help="output dir (default examples/multi30k/results; WORK/benchmark with --smoke)")
    p.add_argument("--data-bin", help="binarised data with the real test references (default WORK/data-bin)")
    p.add_argument("--ref", help="raw reference file (default WORK/raw/test.TGT)")
    p.add_argument("--bpe", choices=["sentencepiece", "fastbpe", "none"],
                   help="subword model to undo (default: WORK/bpe_type, else sentencepiece)")
    p.add_argument("--source-lang", default="en")
    p.add_argument("--target-lang", default="de")
    p.add_argument("--gen-subset", default="test")
    p.add_argument("--checkpoint-name", default="checkpoint_best.pt",
                   help="file name inside WORK/checkpoints/NAME/")
    for name in CHECKPOINTS:
        flag = name.replace("_", "-")
        p.add_argument(f"--{flag}", dest=f"ckpt_{name}", metavar="PT",
                       help=f"checkpoint (default WORK/checkpoints/{name}/CHECKPOINT_NAME)")
    # what to measure
    p.add_argument("--test-sentences", type=int, default=None,
                   help="BLEU and throughput on the first K test sentences (default: all)")
    p.add_argument("--latency-sentences", type=int, default=200,
                   help="batch-1 latency over the first N test sentences (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batch-1 sentences first (default 10)")
    p.add_argument("--max-tokens", type=int, default=4096, help="batched throughput: tokens per batch")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--cuda", action="store_true", help="run on CUDA (default: CPU)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--systems", default="*",
                   help="comma-separated glob patterns of system ids to run (default all), e.g. 'ar.*,score.*'")
    p.add_argument("--require-all", action="store_true",
                   help="exit with status 1 when a checkpoint is missing (for the final table)")
    p.add_argument("--translate", action="append", default=[], metavar="FILE",
                   help="also translate this raw source file with every system (repeatable): "
                        "OUT/blind/SET/SYSTEM.TGT, SET = the file name without .SRC")
    p.add_argument("--translate-dir", metavar="DIR",
                   help="also translate every DIR/*.SRC file (e.g. ../shared/data/multi30k-blind)")
    p.add_argument("--translate-lines", type=int, default=None,
                   help="only the first K lines of each extra file (default all; 20 with --smoke)")
    p.add_argument("--translate-only", action="store_true",
                   help="only translate the extra files (no test set, no timing; results.md/json "
                        "untouched): OUT/blind/SET/SYSTEM.TGT and OUT/blind/translations.{json,md}; with "
                        "--systems, the other systems' earlier entries are kept")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the plots and rewrite results.md (with --notes) from "
                        "OUT/results.json of an earlier run")
    p.add_argument("--notes", metavar="MD",
                   help="markdown put into results.md after its header (what changed since the "
                        "last table and why); default OUT/notes.md when it exists")
    # system settings
    p.add_argument("--ar-beams", type=int_list, default=[1, 5])
    p.add_argument("--ar-max-len-a", type=float, default=None, help="fairseq --max-len-a for the AR systems")
    p.add_argument("--ar-max-len-b", type=int, default=None, help="fairseq --max-len-b for the AR systems")
    p.add_argument("--cmlm-iters", type=int_list, default=[1, 4, 10],
                   help="CMLM mask-predict iterations = decoder passes (fairseq --iter-decode-max-iter N-1)")
    p.add_argument("--cmlm-length-beam", type=int, default=1, help="CMLM --iter-decode-with-beam")
    p.add_argument("--refine-max-iter", type=int, default=10, help="refine_nat adaptive: max refinement steps")
    p.add_argument("--refine-steps", type=int_list, default=[0, 1, 2, 4, 10],
                   help="refine_nat fixed refinement steps (--iter-decode-force-max-iter)")
    p.add_argument("--refine-length-beam", type=int, default=1, help="refine_nat --iter-decode-with-beam")
    p.add_argument("--refine-rerank-beams", type=int_list, default=[3],
                   help="refine_nat length beams (adaptive) run without and with teacher reranking")
    p.add_argument("--delta-steps", type=int_list, default=[1, 2, 4], help="LaNMT delta inference, max steps")
    p.add_argument("--search-sizes", type=int_list, default=[5, 10, 20],
                   help="LaNMT latent search: candidates m (rescored by the teacher)")
    p.add_argument("--search-delta-steps", type=int, default=1,
                   help="LaNMT latent search: delta steps per candidate")
    p.add_argument("--search-noise", type=float, default=0.5, help="--latent-search-noise")
    p.add_argument("--score-steps", type=int, default=1, help="score/energy inference steps")
    p.add_argument("--score-alpha", type=float, default=1.0, help="score/energy step size")
    p.add_argument("--score-search-sizes", type=int_list, default=[10],
                   help="score inference + latent search: candidates m (teacher rescoring)")
    p.add_argument("--length-bin", type=int, default=5, help="latency-vs-length plot: bin width (source tokens)")
    return p


# -- systems ------------------------------------------------------------------------------------
@dataclass
class System:
    key: str                       # short id, e.g. "refine_nat.fixed4"
    name: str                      # table label
    family: str                    # AR, CMLM, refine_nat, LaNMT, score, energy
    ckpt: str                      # checkpoint name (CHECKPOINTS)
    args: List[str]                # fairseq-generate arguments (task + generation)
    needs: List[str] = field(default_factory=list)   # other checkpoints it reads (teacher)
    series: Optional[str] = None   # BLEU-vs-steps series
    passes: Optional[int] = None   # decoder passes (max) for that plot
    primary: bool = False          # drawn in the latency-vs-length plot


def build_systems(a, ckpts):
    nar = ["--task", "nar_translation", "--beam", "1"]
    ar_len = []
    if a.ar_max_len_a is not None:
        ar_len += ["--max-len-a", str(a.ar_max_len_a)]
    if a.ar_max_len_b is not None:
        ar_len += ["--max-len-b", str(a.ar_max_len_b)]
    teacher = ckpts["teacher"]
    out = []
    for b in a.ar_beams:
        out.append(System(f"ar.beam{b}", f"AR Transformer, beam {b}", "AR", "teacher",
                          ["--task", "translation", "--beam", str(b)] + ar_len, primary=True))
    for n in a.cmlm_iters:
        lb = f", length beam {a.cmlm_length_beam}" if a.cmlm_length_beam > 1 else ""
        out.append(System(f"cmlm.iter{n}", f"CMLM (fairseq), {n} iteration{'s' * (n > 1)}{lb}", "CMLM", "cmlm",
                          ["--task", "translation_lev", "--iter-decode-max-iter", str(n - 1),
                           "--iter-decode-eos-penalty", "0", "--iter-decode-with-beam", str(a.cmlm_length_beam),
                           "--beam", "1"],
                          series="CMLM (iterations)", passes=n, primary=n == max(a.cmlm_iters)))
    refine = nar + ["--decoding", "refine", "--iter-decode-with-beam", str(a.refine_length_beam)]
    out.append(System(f"refine_nat.adaptive{a.refine_max_iter}",
                      f"refine_nat, adaptive (max {a.refine_max_iter} steps)", "refine_nat", "refine_nat",
                      refine + ["--iter-decode-max-iter", str(a.refine_max_iter)], primary=True))
    for k in a.refine_steps:
        label = "refine_nat, decoder 1 only (0 steps)" if k == 0 else f"refine_nat, {k} step{'s' * (k > 1)} (fixed)"
        out.append(System(f"refine_nat.fixed{k}", label,
                          "refine_nat", "refine_nat",
                          refine + ["--iter-decode-max-iter", str(k), "--iter-decode-force-max-iter"],
                          series="refine_nat (fixed steps)", passes=k + 1))
    for lb in a.refine_rerank_beams:
        beam = nar + ["--decoding", "refine", "--iter-decode-with-beam", str(lb),
                      "--iter-decode-max-iter", str(a.refine_max_iter)]
        out.append(System(f"refine_nat.beam{lb}", f"refine_nat, adaptive, length beam {lb}",
                          "refine_nat", "refine_nat", beam))
        out.append(System(f"refine_nat.beam{lb}.teacher",
                          f"refine_nat, adaptive, length beam {lb} (teacher reranking)",
                          "refine_nat", "refine_nat", beam + ["--teacher-path", teacher],
                          needs=["teacher"]))
    out.append(System("lanmt.prior", "LaNMT, prior mean (no refinement)", "LaNMT", "lanmt",
                      nar + ["--decoding", "prior"], series="LaNMT delta (max steps)", passes=1))
    for ascent in (False, True):  # the paper's plain chain (default), then with the ascent check
        for k in a.delta_steps:
            steps = f"<= {k} step{'s' * (k > 1)}"
            out.append(System(
                f"lanmt.delta{k}" + ".ascent" * ascent,
                f"LaNMT, delta inference with ascent check ({steps})" if ascent
                else f"LaNMT, delta inference ({steps})", "LaNMT", "lanmt",
                nar + ["--decoding", "delta", "--iter-decode-max-iter", str(k)]
                + ["--delta-ascent-check"] * ascent,
                series=f"LaNMT delta{' + ascent check' * ascent} (max steps)", passes=k + 1,
                primary=not ascent and k == max(a.delta_steps)))
    for m in a.search_sizes:
        out.append(System(f"lanmt.search{m}", f"LaNMT, latent search m={m} (delta <= {a.search_delta_steps}, "
                          f"teacher rescoring)", "LaNMT", "lanmt",
                          nar + ["--decoding", "delta", "--iter-decode-max-iter", str(a.search_delta_steps),
                                 "--latent-search-size", str(m), "--latent-search-noise", str(a.search_noise),
                                 "--teacher-path", teacher], needs=["teacher"]))
    score = ["--score-steps", str(a.score_steps), "--score-alpha", str(a.score_alpha)]
    out.append(System(f"score.steps{a.score_steps}", f"score inference ({a.score_steps} step{'s' * (a.score_steps > 1)})",
                      "score", "score_net", nar + ["--decoding", "score"] + score, primary=True))
    for m in a.score_search_sizes:
        out.append(System(f"score.search{m}", f"score inference + latent search m={m} (teacher rescoring)",
                          "score", "score_net",
                          nar + ["--decoding", "score"] + score +
                          ["--latent-search-size", str(m), "--latent-search-noise", str(a.search_noise),
                           "--teacher-path", teacher], needs=["teacher"], primary=m == max(a.score_search_sizes)))
    out.append(System(f"energy.steps{a.score_steps}", f"energy inference ({a.score_steps} step{'s' * (a.score_steps > 1)})",
                      "energy", "energy_net", nar + ["--decoding", "energy"] + score, primary=True))
    return out


# -- helpers ------------------------------------------------------------------------------------
def load_evaluate_module():
    spec = importlib.util.spec_from_file_location("multi30k_evaluate", EXAMPLE_DIR / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine_info(a):
    import torch
    import fairseq

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "fairseq": fairseq.__version__,
        "torch_threads": torch.get_num_threads(), "device": "cpu",
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if a.cuda:
        info["device"] = f"cuda: {torch.cuda.get_device_name(0)}"
    return info


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def hypothesis_text(hypo, cfg, tgt_dict, strip):
    """A hypothesis as fairseq-generate prints it (H- line text, subwords removed per
    --post-process)."""
    from fairseq import utils

    _, text, _ = utils.post_process_prediction(
        hypo_tokens=hypo["tokens"].int().cpu(), src_str="", alignment=hypo.get("alignment"),
        align_dict=None, tgt_dict=tgt_dict, remove_bpe=cfg.common_eval.post_process,
        extra_symbols_to_ignore=strip)
    return text


class Bench:
    """Loads tasks, datasets and models once, then measures systems one by one."""

    def __init__(self, a, ckpts, decode, refs, evaluate_mod):
        import torch

        self.torch = torch
        self.a = a
        self.ckpts = ckpts
        self.decode = decode
        self.refs = refs
        self.ev = evaluate_mod
        self.models = {}    # (ckpt path, task name) -> (models, saved_cfg)
        self.datasets = {}  # task name -> dataset
        self.extra = {}     # set name -> binarised source-only data dir (translate_extra)

    def sync(self):
        if self.a.cuda:
            self.torch.cuda.synchronize()

    def generate_args(self, system):
        a = self.a
        args = [a.data_bin, "--path", self.ckpts[system.ckpt], "--user-dir", USER_DIR,
                "--gen-subset", a.gen_subset, "--source-lang", a.source_lang, "--target-lang", a.target_lang,
                "--seed", str(a.seed), "--max-tokens", str(a.max_tokens), "--num-workers", "0"]
        if not a.cuda:
            args.append("--cpu")
        return args + system.args

    def setup(self, system):
        """(cfg, task, models, generator, dataset) exactly as fairseq-generate builds them."""
        import ast

        from fairseq import checkpoint_utils, options, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        argv = self.generate_args(system)
        parser = options.get_generation_parser()
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))
        task = tasks.setup_task(cfg.task)
        key = (cfg.common_eval.path, cfg.task._name)
        if key not in self.models:
            overrides = ast.literal_eval(cfg.common_eval.model_overrides)
            logger.info("loading %s (task %s)", cfg.common_eval.path, cfg.task._name)
            models, saved_cfg = checkpoint_utils.load_model_ensemble(
                utils.split_paths(cfg.common_eval.path), arg_overrides=overrides, task=task,
                suffix=cfg.checkpoint.checkpoint_suffix,
                strict=(cfg.checkpoint.checkpoint_shard_count == 1),
                num_shards=cfg.checkpoint.checkpoint_shard_count)
            for model in models:
                if self.a.cuda:
                    model.cuda()
                model.prepare_for_inference_(cfg)
                model.eval()
            self.models[key] = (models, saved_cfg)
        models, saved_cfg = self.models[key]
        if cfg.task._name not in self.datasets:
            task.load_dataset(cfg.dataset.gen_subset, task_cfg=saved_cfg.task)
            self.datasets[cfg.task._name] = task.dataset(cfg.dataset.gen_subset)
        dataset = self.datasets[cfg.task._name]
        generator = task.build_generator(models, cfg.generation)
        return cfg, task, models, generator, dataset

    def run(self, system):
        import numpy as np
        from fairseq import utils
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        a = self.a
        t_setup = time.perf_counter()
        cfg, task, models, generator, dataset = self.setup(system)
        setup_s = time.perf_counter() - t_setup
        tgt_dict = task.target_dictionary
        strip = get_symbols_to_strip_from_output(generator)
        n_test = min(len(dataset), a.test_sentences or len(dataset))

        def sample_of(ids):
            s = dataset.collater([dataset[i] for i in ids])
            return utils.move_to_cuda(s) if a.cuda else s

        def infer(sample):
            return task.inference_step(generator, models, sample)

        # 1. batch-1 latency over the first N sentences (after a warm-up)
        n_lat = min(a.latency_sentences, n_test)
        lat_samples = [sample_of([i]) for i in range(n_lat)]
        for s in lat_samples[: a.warmup] if a.warmup else []:
            infer(s)
        latencies = []
        utils.set_torch_seed(a.seed)
        for s in lat_samples:
            self.sync()
            t0 = time.perf_counter()
            infer(s)
            self.sync()
            latencies.append((time.perf_counter() - t0) * 1000.0)
        special = {tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()}
        src_lens = [sum(1 for t in dataset[i]["source"].tolist() if t not in special) for i in range(n_lat)]

        # 2. batched throughput over the test set (also the hypotheses for BLEU)
        indices = dataset.ordered_indices()
        indices = indices[indices < n_test]
        batches = dataset.batch_by_size(indices, max_tokens=a.max_tokens, max_sentences=None)
        samples = [sample_of(list(b)) for b in batches]
        hyps, steps = {}, []
        np.random.seed(a.seed)
        utils.set_torch_seed(a.seed)
        total = 0.0
        for s in samples:
            self.sync()
            t0 = time.perf_counter()
            out = infer(s)
            self.sync()
            total += time.perf_counter() - t0
            for j, sid in enumerate(s["id"].tolist()):
                hypo = out[j][0]
                hyps[sid] = hypothesis_text(hypo, cfg, tgt_dict, strip)
                if hypo.get("steps") is not None:
                    # fairseq's IterativeRefinementGenerator counts from 0: report decoder passes
                    steps.append(int(hypo["steps"]) + (1 if system.family == "CMLM" else 0))
        missing = [i for i in range(n_test) if i not in hyps]
        if missing:
            raise RuntimeError(f"no hypothesis for sample ids {missing[:5]}...")

        # 3. BLEU (evaluate.py's two variants)
        import sacrebleu

        raw = [hyps[i] for i in range(n_test)]
        refs = self.refs[:n_test]
        cased = [self.decode(h) for h in raw]
        papers = [self.decode(h, remove_duplicates=True).lower() for h in raw]
        bleu_cased = sacrebleu.metrics.BLEU(tokenize="13a")
        bleu_lc = sacrebleu.metrics.BLEU(tokenize="13a", lowercase=True)
        s1, s2 = bleu_cased.corpus_score(cased, [refs]), bleu_lc.corpus_score(papers, [refs])
        hyp_dir = Path(a.out) / "hyps"
        hyp_dir.mkdir(parents=True, exist_ok=True)
        (hyp_dir / f"{system.key}.txt").write_text("".join(h + "\n" for h in cased), encoding="utf-8")

        translated = {}
        for set_name, set_dir in self.extra.items():
            translated[set_name] = self.translate_extra(system, cfg, task, models, generator, set_name, set_dir)

        params = count_params(models[0])
        return {
            "translated": translated,
            "status": "ok",
            "bleu": round(s1.score, 2), "bleu_full": str(s1), "bleu_signature": str(bleu_cased.get_signature()),
            "bleu_papers": round(s2.score, 2), "bleu_papers_full": str(s2),
            "bleu_papers_signature": str(bleu_lc.get_signature()),
            "test_sentences": n_test,
            "latency_ms_median": round(statistics.median(latencies), 3),
            "latency_ms_mean": round(statistics.fmean(latencies), 3),
            "latency_ms_p90": round(float(np.percentile(latencies, 90)), 3),
            "latency_sentences": n_lat,
            "latencies_ms": [round(x, 3) for x in latencies],
            "src_lengths": src_lens,
            "throughput_sent_per_s": round(n_test / total, 2) if total > 0 else None,
            "batched_seconds": round(total, 3), "batches": len(samples),
            "mean_steps": round(statistics.fmean(steps), 2) if steps else None,
            "params": params,
            "setup_seconds": round(setup_s, 2),
        }


    def translate_only(self, system):
        """--translate-only: every extra set with this system, nothing else."""
        cfg, task, models, generator, _ = self.setup(system)
        return {name: self.translate_extra(system, cfg, task, models, generator, name, d)
                for name, d in self.extra.items()}

    def translate_extra(self, system, cfg, task, models, generator, set_name, set_dir):
        """Translate a binarised source-only set (binarise_extra) with this system's generator;
        the dataset is built by the system's own task class (e.g. translation_lev's BOS), from
        set_dir instead of the data-bin. Writes OUT/blind/SET/KEY.TGT in source order."""
        from fairseq import tasks, utils
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        a = self.a
        key = (set_dir, cfg.task._name)
        if key not in self.datasets:
            set_cfg = cfg.task.copy()
            set_cfg.data = set_dir
            set_task = tasks.setup_task(set_cfg)
            set_task.load_dataset("test", task_cfg=self.models[(cfg.common_eval.path, cfg.task._name)][1].task)
            self.datasets[key] = set_task.dataset("test")
        dataset = self.datasets[key]
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
                hyps[sid] = self.decode(hypothesis_text(out[j][0], cfg, task.target_dictionary, strip))
        seconds = time.perf_counter() - t0
        if sorted(hyps) != list(range(n)):
            raise RuntimeError(f"{set_name}: {n} source lines but hypotheses for {len(hyps)}")
        out_dir = Path(a.out) / "blind" / set_name
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{system.key}.{a.target_lang}"
        path.write_text("".join(hyps[i] + "\n" for i in range(n)), encoding="utf-8")
        logger.info("  %s: %d lines -> %s (%.1f s)", set_name, n, path, seconds)
        return {"lines": n, "seconds": round(seconds, 3), "output": os.path.relpath(path, REPO)}


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
    dictionaries). Returns (set name, data dir)."""
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


# -- reporting ----------------------------------------------------------------------------------
def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def cmlm_frontier_check(rows):
    """For every non-CMLM NAT row: is its BLEU >= the best CMLM BLEU at no more latency?"""
    cmlm = [r for r in rows if r["family"] == "CMLM" and r["status"] == "ok"]
    if not cmlm:
        return
    for r in rows:
        if r["status"] != "ok" or r["family"] in ("AR", "CMLM"):
            continue
        faster = [c["bleu"] for c in cmlm if c["latency_ms_median"] <= r["latency_ms_median"]]
        r["cmlm_frontier_bleu"] = max(faster) if faster else None
        r["at_or_above_cmlm_frontier"] = (not faster) or r["bleu"] >= max(faster)


def targets(rows):
    """The issues' targets (issue 9: quality, issue 10: latency ratios) checked on this run."""
    by = {r["key"]: r for r in rows if r["status"] == "ok"}
    out = []

    def check(text, value, ok):
        out.append(f"{text}: {value} -> {'MET' if ok else 'NOT MET'}")

    def gain(a, b, need, label):
        if a in by and b in by:
            d = by[a]["bleu"] - by[b]["bleu"]
            check(f"{label} >= +{need} BLEU", f"{by[a]['bleu']:.2f} vs {by[b]['bleu']:.2f} ({d:+.2f})", d >= need)

    def best_of(keys):
        have = [by[k] for k in keys if k in by]
        return max(have, key=lambda r: r["bleu"]) if have else None

    ar5 = by.get("ar.beam5")
    if ar5 is not None:
        check("teacher (AR beam 5) >= 35 BLEU", f"{ar5['bleu']:.2f}", ar5["bleu"] >= 35)
    refine = best_of([k for k in by if k.startswith("refine_nat.") and k not in
                      ("refine_nat.fixed0", "refine_nat.fixed1") and "beam" not in k])
    for base in ("refine_nat.fixed1", "refine_nat.fixed0"):
        if refine is not None and base in by:
            d = refine["bleu"] - by[base]["bleu"]
            check(f"refine_nat best of adaptive / more steps ({refine['key']}) vs {base} >= +1.5 BLEU",
                  f"{refine['bleu']:.2f} vs {by[base]['bleu']:.2f} ({d:+.2f})", d >= 1.5)
    cmlm = best_of([k for k in by if k.startswith("cmlm.") and k != "cmlm.iter1"])
    if refine is not None and cmlm is not None and "cmlm.iter1" in by:
        # not a target: what fairseq's own iterative refinement gains with the same data and budget
        d = cmlm["bleu"] - by["cmlm.iter1"]["bleu"]
        out.append(f"context, not a target: fairseq CMLM best of more iterations ({cmlm['key']}) vs "
                   f"cmlm.iter1: {cmlm['bleu']:.2f} vs {by['cmlm.iter1']['bleu']:.2f} ({d:+.2f})")
    delta = best_of([k for k in by if k.startswith("lanmt.delta") and "ascent" not in k])
    if delta is not None and "lanmt.prior" in by:
        d = delta["bleu"] - by["lanmt.prior"]["bleu"]
        check(f"LaNMT delta inference ({delta['key']}) vs prior mean >= +0.5 BLEU",
              f"{delta['bleu']:.2f} vs {by['lanmt.prior']['bleu']:.2f} ({d:+.2f})", d >= 0.5)
    for m in (10,):
        search = f"lanmt.search{m}"
        if search in by:
            steps = re.search(r"--iter-decode-max-iter (\d+)", by[search]["fairseq_generate"])
            gain(search, f"lanmt.delta{steps.group(1) if steps else 1}", 0.5,
                 f"latent search m={m} (teacher) vs delta with the same steps")
    gain("score.steps1", "lanmt.prior", 0.5, "score inference (1 step) vs LaNMT prior mean")
    gain("energy.steps1", "lanmt.prior", 0.3, "energy inference (1 step) vs LaNMT prior mean")
    nat = best_of([k for k, r in by.items() if r["family"] not in ("AR", "CMLM")])
    if nat is not None and ar5 is not None:
        gap = ar5["bleu"] - nat["bleu"]
        check(f"best nar_refine system ({nat['key']}) within 5 BLEU of AR beam 5",
              f"{nat['bleu']:.2f} vs {ar5['bleu']:.2f} (gap {gap:.2f})", gap <= 5)
    for r in by.values():
        if r["family"] == "score" and r["key"].startswith("score.steps") and ar5 is not None:
            check(f"score inference ({r['key']}) >= 6x faster than AR beam 5 at batch 1",
                  f"{r['speedup_vs_ar_beam5']:.2f}x", r["speedup_vs_ar_beam5"] >= 6)
    below = [r["key"] for r in by.values() if r.get("at_or_above_cmlm_frontier") is False]
    if any("at_or_above_cmlm_frontier" in r for r in by.values()):
        check("every nar_refine system on or above the CMLM BLEU-vs-latency frontier",
              f"{len(below)} below" + (": " + ", ".join(below) if below else ""), not below)
    prior = by.get("lanmt.prior")
    if prior is not None:
        for key, limit in (("lanmt.delta1", 1.8), ("lanmt.search10", 5.0), ("score.search10", 3.5)):
            if key in by:
                ratio = by[key]["latency_ms_median"] / prior["latency_ms_median"]
                check(f"{key} batch-1 latency <= {limit}x the LaNMT prior pass (issue 10)",
                      f"{ratio:.2f}x ({by[key]['latency_ms_median']:.1f} / {prior['latency_ms_median']:.1f} ms)",
                      ratio <= limit)
    return out


def read_notes(a):
    path = Path(a.notes) if a.notes else Path(a.out) / "notes.md"
    if a.notes and not path.is_file():
        sys.exit(f"--notes: no file {path}")
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def write_markdown(path, meta, rows, target_lines, plots, notes=None):
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
    L.append("| system | BLEU (cased, 13a) | papers' BLEU (lc, dedup) | latency b=1 (ms, median) "
             "| speed-up vs AR beam 5 | throughput (sent/s) | mean steps | params (M) | ≥ CMLM frontier |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        if r["status"] != "ok":
            L.append(f"| {r['name']} | {r['status']} | | | | | | | |")
            continue
        front = {True: "yes", False: "**no**"}.get(r.get("at_or_above_cmlm_frontier"), "")
        params = r["params"] / 1e6
        extra = " + teacher" if "teacher" in r["needs"] else ""
        L.append(f"| {r['name']} | {r['bleu']:.2f} | {r['bleu_papers']:.2f} | {r['latency_ms_median']:.1f} "
                 f"| {fmt(r.get('speedup_vs_ar_beam5'), 2)}x | {fmt(r['throughput_sent_per_s'])} "
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
    L.append("* Latent search candidates are rescored by the AR teacher (its parameters not counted).\n")
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
        L.append("## Targets (issues 9 and 10)\n")
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


FAMILY_STYLE = {"AR": ("black", "s"), "CMLM": ("tab:gray", "D"), "refine_nat": ("tab:blue", "o"),
                "LaNMT": ("tab:green", "^"), "score": ("tab:red", "*"), "energy": ("tab:purple", "P")}


def make_plots(out, rows, length_bin):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    import numpy as np

    ok = [r for r in rows if r["status"] == "ok"]
    plots = []
    if not ok:
        return plots

    # (1) latency vs source length at batch 1
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    colors = plt.get_cmap("tab10").colors
    for n, r in enumerate([r for r in ok if r["primary"]]):
        lens, lat = np.array(r["src_lengths"]), np.array(r["latencies_ms"])
        bins = (lens // length_bin) * length_bin
        xs = sorted(set(bins.tolist()))
        med = [float(np.median(lat[bins == b])) for b in xs]
        marker = FAMILY_STYLE.get(r["family"], ("tab:orange", "x"))[1]
        ls = "-" if r["family"] == "AR" else "--"
        ax.plot([b + length_bin / 2 for b in xs], med, ls, marker=marker, color=colors[n % len(colors)],
                label=r["name"], ms=5)
    ax.set_xlabel(f"source length (subword tokens; median per bin of {length_bin})")
    ax.set_ylabel("latency at batch 1 (ms per sentence, log scale)")
    ax.set_yscale("log")
    ax.set_title("Latency vs source length: autoregressive (solid) vs non-autoregressive (dashed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(Path(out) / "latency_vs_length.png", dpi=120)
    plt.close(fig)
    plots.append(("latency vs source length", "latency_vs_length.png"))

    # (2) BLEU vs refinement steps (decoder passes)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    series = {}
    for r in ok:
        if r["series"]:
            series.setdefault(r["series"], []).append(r)
    ticks = set()
    for name, rs in series.items():
        rs = sorted(rs, key=lambda r: r["passes"])
        color, marker = FAMILY_STYLE.get(rs[0]["family"], ("tab:orange", "x"))
        ax.plot([r["passes"] for r in rs], [r["bleu"] for r in rs], "-", marker=marker, color=color, label=name)
        ticks.update(r["passes"] for r in rs)
    for r in ok:
        if r["family"] == "AR":
            ax.axhline(r["bleu"], ls=":" if r["key"] == "ar.beam5" else "-.", lw=1,
                       color="black" if r["key"] == "ar.beam5" else "gray", label=r["name"])
    ax.set_ylim(0, max(r["bleu"] for r in ok) * 1.05 + 0.5)  # the AR lines too, not only the series
    if ticks:
        ax.set_xscale("log", base=2)
        kept = []
        for t in sorted(ticks):  # no two tick labels closer than 20% (10 and 11 would overlap)
            if not kept or t >= kept[-1] * 1.2:
                kept.append(t)
        ax.set_xticks(kept)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("decoder passes (CMLM iterations; refine_nat / delta: steps + 1; log scale)")
    ax.set_ylabel("BLEU (sacreBLEU, cased, 13a)")
    ax.set_title("BLEU vs refinement steps")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(Path(out) / "bleu_vs_steps.png", dpi=120)
    plt.close(fig)
    plots.append(("BLEU vs refinement steps", "bleu_vs_steps.png"))

    # (3) BLEU vs batch-1 latency, all systems, CMLM frontier
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seen = set()
    for r in ok:
        color, marker = FAMILY_STYLE.get(r["family"], ("tab:orange", "x"))
        ax.scatter(r["latency_ms_median"], r["bleu"], color=color, marker=marker, s=40,
                   label=r["family"] if r["family"] not in seen else None, zorder=3)
        seen.add(r["family"])
        ax.annotate(r["key"], (r["latency_ms_median"], r["bleu"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    cmlm = sorted([r for r in ok if r["family"] == "CMLM"], key=lambda r: r["latency_ms_median"])
    if cmlm:
        xs, ys, best = [], [], -1e9
        for r in cmlm:
            best = max(best, r["bleu"])
            xs.append(r["latency_ms_median"])
            ys.append(best)
        xs.append(max(r["latency_ms_median"] for r in ok) * 1.2)
        ys.append(best)
        ax.step(xs, ys, where="post", ls="--", color="tab:gray", lw=1, label="CMLM frontier")
    ax.set_xscale("log")
    ax.set_xlabel("latency at batch 1 (ms per sentence, median; log scale)")
    ax.set_ylabel("BLEU (sacreBLEU, cased, 13a)")
    ax.set_title("Quality vs speed, all systems")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(Path(out) / "bleu_vs_latency.png", dpi=120)
    plt.close(fig)
    plots.append(("BLEU vs batch-1 latency", "bleu_vs_latency.png"))
    return plots


def checkpoint_info(ckpts):
    """Path, existence and the pipeline's DONE summary (if any) of every checkpoint."""
    info = {}
    for name, path in ckpts.items():
        done = Path(path).parent / "DONE"
        info[name] = {"path": path, "exists": os.path.isfile(path),
                      "done": done.read_text(errors="replace").strip() if done.is_file() else None}
    return info


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


def translate_only(a, bench, systems, ckpts, command, machine, binarised, extra_files, t_start):
    """Translate the extra files with every system; OUT/blind/translations.{json,md}."""
    out = Path(a.out) / "blind"
    out.mkdir(parents=True, exist_ok=True)
    done, failed = {}, []
    for i, s in enumerate(systems, 1):
        absent = [ckpts[c] for c in [s.ckpt] + s.needs if not os.path.isfile(ckpts[c])]
        if absent:
            failed.append(f"{s.key}: missing checkpoint " + ", ".join(absent))
            logger.warning("[%d/%d] %s: %s", i, len(systems), s.key, failed[-1])
            continue
        logger.info("[%d/%d] %s: %s", i, len(systems), s.key, s.name)
        try:
            done[s.key] = {"name": s.name, "sets": bench.translate_only(s),
                           "fairseq_generate": " ".join(shlex.quote(x) for x in s.args)}
        except Exception as err:
            logger.error("[%d/%d] %s failed:\n%s", i, len(systems), s.key, traceback.format_exc())
            failed.append(f"{s.key}: {type(err).__name__}: {err}")
    sets = {name: {"source": os.path.relpath(f, REPO), "lines": n}
            for f, (name, _, n) in zip(extra_files, binarised)}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    for entry in done.values():
        entry["date"] = date
    done, runs = merge_earlier_translations(out / "translations.json", done, sets, systems)
    meta = {"command": command, "machine": machine, "threads": a.threads, "bpe": a.bpe,
            "date": date, "wall_seconds": round(time.perf_counter() - t_start, 1), "sets": sets,
            "checkpoints": {k: os.path.relpath(v, REPO) for k, v in ckpts.items()},
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


# -- main ---------------------------------------------------------------------------------------
def resolve_paths(a):
    if a.work is None:
        a.work = str(EXAMPLE_DIR / ("work-smoke" if a.smoke else "work"))
    work = Path(a.work)
    if a.out is None:
        a.out = str(work / "benchmark") if a.smoke else str(EXAMPLE_DIR / "results")
    if a.data_bin is None:
        a.data_bin = str(work / "data-bin")
    if a.ref is None:
        a.ref = str(work / "raw" / f"{a.gen_subset}.{a.target_lang}")
    if a.bpe is None:
        bt = work / "bpe_type"
        a.bpe = bt.read_text().strip() if bt.exists() else "sentencepiece"
    if a.smoke:
        if a.test_sentences is None:
            a.test_sentences = 24
        a.latency_sentences = min(a.latency_sentences, 8)
        a.warmup = min(a.warmup, 2)
        if a.translate_lines is None:
            a.translate_lines = 20
        a.max_tokens = min(a.max_tokens, 1024)
        if a.ar_max_len_a is None:
            a.ar_max_len_a, a.ar_max_len_b = 1.2, 10
    ckpts = {}
    for name in CHECKPOINTS:
        ckpts[name] = getattr(a, f"ckpt_{name}") or str(work / "checkpoints" / name / a.checkpoint_name)
    return ckpts


def main(argv=None):
    a = get_parser().parse_args(argv)
    ckpts = resolve_paths(a)
    if a.replot:
        results = Path(a.out) / "results.json"
        if not results.is_file():
            sys.exit(f"--replot: no {results} (run the benchmark first)")
        data = json.loads(results.read_text())
        plots = make_plots(a.out, data["systems"], a.length_bin)
        write_markdown(Path(a.out) / "results.md", data, data["systems"], data.get("targets", []), plots,
                       notes=read_notes(a))
        print("redrew " + ", ".join(str(Path(a.out) / png) for _, png in plots) + " and results.md")
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(a.threads))
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO, stream=sys.stdout)
    for noisy in ("fairseq.tasks.text_to_speech", "fairseq.tasks.translation", "fairseq.data.data_utils",
                  "fairseq.utils", "fairseq.tasks.fairseq_task"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # hydra's deprecation notes, raised by fairseq's config composition at every checkpoint load
    warnings.filterwarnings("ignore", message=r"(?s).*hydra\.cc/docs")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra\.")
    import nar_refine  # noqa: F401  (patches torch.load and fairseq before any checkpoint is read)
    import torch

    torch.set_num_threads(a.threads)
    if a.cuda and not torch.cuda.is_available():
        sys.exit("--cuda: no CUDA device available")
    evaluate_mod = load_evaluate_module()
    decode = evaluate_mod.Decoder(a.bpe, a.target_lang)
    if not os.path.isdir(a.data_bin):
        sys.exit(f"no data-bin {a.data_bin}: run the pipeline's prepare step (or pass --data-bin)")
    if not os.path.isfile(a.ref):
        sys.exit(f"no reference {a.ref} (pass --ref)")
    refs = [line.rstrip("\n") for line in open(a.ref, encoding="utf-8")]
    Path(a.out).mkdir(parents=True, exist_ok=True)

    command = " ".join(shlex.quote(x) for x in ["python", os.path.relpath(__file__, os.getcwd())]
                       + list(sys.argv[1:] if argv is None else argv))
    machine = machine_info(a)
    t_start = time.perf_counter()
    logger.info("benchmark: %s", command)
    logger.info("machine: %s", json.dumps(machine))
    logger.info("work %s, data-bin %s, out %s, bpe %s, threads %d, device %s", a.work, a.data_bin, a.out,
                a.bpe, a.threads, machine["device"])

    extra_files = list(a.translate)
    if a.translate_dir:
        found = sorted(Path(a.translate_dir).glob(f"*.{a.source_lang}"))
        if not found:
            sys.exit(f"--translate-dir: no *.{a.source_lang} files in {a.translate_dir}")
        extra_files += [str(f) for f in found]
    binarised = [binarise_extra(a, f) for f in extra_files]
    names = [b[0] for b in binarised]
    if len(set(names)) != len(names):
        sys.exit(f"--translate: two extra files with the same set name: {names}")
    extra = {name: d for name, d, _ in binarised}
    if a.translate_only and not extra:
        sys.exit("--translate-only: give --translate FILE or --translate-dir DIR")

    systems = build_systems(a, ckpts)
    patterns = [p.strip() for p in a.systems.split(",") if p.strip()]
    systems = [s for s in systems if any(fnmatch.fnmatch(s.key, p) for p in patterns)]
    bench = Bench(a, ckpts, decode, refs, evaluate_mod)
    bench.extra = extra
    if a.translate_only:
        return translate_only(a, bench, systems, ckpts, command, machine, binarised, extra_files, t_start)
    rows, n_missing, n_error = [], 0, 0
    for i, s in enumerate(systems, 1):
        row = {"key": s.key, "name": s.name, "family": s.family, "checkpoint": ckpts[s.ckpt],
               "needs": s.needs, "series": s.series, "passes": s.passes, "primary": s.primary,
               "fairseq_generate": ("fairseq-generate " + " ".join(shlex.quote(x) for x in bench.generate_args(s))
                                    ).replace(str(REPO) + os.sep, "")
               + "   # batch-1 latency: --batch-size 1"}
        absent = [ckpts[c] for c in [s.ckpt] + s.needs if not os.path.isfile(ckpts[c])]
        if absent:
            row["status"] = "missing checkpoint: " + ", ".join(absent)
            n_missing += 1
            logger.warning("[%d/%d] %s: %s", i, len(systems), s.key, row["status"])
            rows.append(row)
            continue
        logger.info("[%d/%d] %s: %s", i, len(systems), s.key, s.name)
        try:
            row.update(bench.run(s))
            logger.info("[%d/%d] %s: BLEU %.2f (papers' %.2f) | batch-1 latency %.1f ms (median of %d) | "
                        "%.1f sent/s batched | mean steps %s", i, len(systems), s.key, row["bleu"],
                        row["bleu_papers"], row["latency_ms_median"], row["latency_sentences"],
                        row["throughput_sent_per_s"] or 0.0, fmt(row["mean_steps"], 2))
        except Exception as err:  # keep going: one broken system must not lose the others' numbers
            logger.error("[%d/%d] %s failed:\n%s", i, len(systems), s.key, traceback.format_exc())
            row["status"] = f"error: {type(err).__name__}: {err}".replace("\n", " ")[:300]
            n_error += 1
        rows.append(row)

    ar5 = next((r for r in rows if r["key"] == "ar.beam5" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] == "ok" and ar5 is not None:
            r["speedup_vs_ar_beam5"] = round(ar5["latency_ms_median"] / r["latency_ms_median"], 3)
    cmlm_frontier_check(rows)
    target_lines = targets(rows)
    plots = make_plots(a.out, rows, a.length_bin)
    ok = [r for r in rows if r["status"] == "ok"]
    meta = {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine, "threads": a.threads, "data_bin": a.data_bin, "gen_subset": a.gen_subset,
        "ref": a.ref, "bpe": a.bpe, "test_sentences": ok[0]["test_sentences"] if ok else a.test_sentences,
        "latency_sentences": ok[0]["latency_sentences"] if ok else a.latency_sentences, "warmup": a.warmup,
        "max_tokens": a.max_tokens, "wall_seconds": time.perf_counter() - t_start,
        "settings": {k: v for k, v in vars(a).items()},
        "checkpoints": checkpoint_info(ckpts),
        "translated_sets": {name: {"source": os.path.relpath(f, REPO), "lines": n}
                            for f, (name, _, n) in zip(extra_files, binarised)},
    }
    write_markdown(Path(a.out) / "results.md", meta, rows, target_lines, plots, notes=read_notes(a))
    with open(Path(a.out) / "results.json", "w") as f:
        json.dump({**meta, "targets": target_lines, "systems": rows}, f, indent=1)

    # summary on stdout
    logger.info("results: %s, %s; plots: %s", Path(a.out) / "results.md", Path(a.out) / "results.json",
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
    if n_error or (a.require_all and n_missing):
        logger.error("%d system(s) failed, %d missing checkpoint(s)", n_error, n_missing)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
