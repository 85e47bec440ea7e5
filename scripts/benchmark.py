#!/usr/bin/env python
"""Speed/quality benchmark: every system on the same test set, on this machine, in ONE process.

    python scripts/benchmark.py [--work examples/multi30k/work] [--out DIR]
    python scripts/benchmark.py --smoke          # work-smoke, a handful of sentences (CI)

Output in --out, by default WORK/benchmark (WORK/benchmark-gpu with --cuda); the committed
table is rewritten only when asked for, with --out examples/multi30k/results.

Systems (each row "missing checkpoint" when its checkpoint does not exist):

  * AR Transformer teacher, beam 1 and beam 5 (fairseq SequenceGenerator, task translation)
  * fairseq's CMLM (task translation_lev, IterativeRefinementGenerator), 1/4/10 iterations
  * refine_nat: adaptive refinement (max 10 steps; also with repeated tokens kept, the paper's
    decoding, where the default masks them) and fixed 0/1/2/4/10 steps; adaptive with a
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
bleu_vs_latency.png, hyps/SYSTEM.txt (detokenised hypotheses in test order). Paths in them are
relative to the repository, and their commands run from its root.

Extra source files (e.g. the blind test sets, sources only): ``--translate FILE`` (repeatable) or
``--translate-dir DIR`` (every ``*.SRC`` file in it). Each raw file is segmented with the
pipeline's subword model (WORK/spm/spm.model, or Moses + WORK/fastbpe/codes) and binarised with
fairseq-preprocess and the data-bin's source dictionary into WORK/data-bin-extra/SET/ (SET: the
file name without .SRC); every system then translates it (batched, as the throughput run) and
writes OUT/blind/SET/SYSTEM.TGT, detokenised as hyps/, one line per source line, in order.
Nothing is scored there: these files have no references here.
--replot redraws the three plots and rewrites results.md from --out/results.json without running
anything; --notes MD (default OUT/notes.md) puts hand-written notes after results.md's header.

The code is in scripts/bench/, one part per concern (bench/__init__.py lists them).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the bench package

from bench.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
