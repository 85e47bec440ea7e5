#!/usr/bin/env python
"""Batch-1 latency of one decoding, PyTorch eager vs the exported passes, interleaved.

    python scripts/compiled_latency.py DATA --path CKPT --onnx-dir DIR [fairseq-generate options]

The model is loaded once, as fairseq-generate loads it (``--task nar_translation`` and any
decoding option, e.g. ``--decoding refine --iter-decode-max-iter 0``), its passes exported to
DIR when DIR does not hold them yet, and the first ``--sentences`` test sentences are decoded
one at a time by both generators in one process, alternating which goes first: on a loaded
machine both see the same load. Prints the median ms per sentence of each, their ratio and
how many hypotheses differ (tokens). ``--clock cpu`` counts this thread's CPU time instead of wall
time, for a machine whose cores other jobs keep busy.
"""

import argparse
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200, help="test sentences timed (default 200)")
    p.add_argument("--warmup", type=int, default=10, help="untimed sentences first (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default 1)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the CPU time of this thread (with --threads 1 PyTorch and ONNX "
                        "Runtime compute in it): on a machine whose cores other jobs keep busy, "
                        "the time this decoding ran rather than the time it waited")
    a, rest = p.parse_known_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    import nar_refine  # noqa: F401
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from nar_refine.export.onnx_passes import export_if_stale

    parser = options.get_generation_parser()
    base = ["--user-dir", nar_refine.__path__[0], "--task", "nar_translation", "--cpu"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=base + rest))
    if not cfg.task.onnx_dir:
        sys.exit("give --onnx-dir DIR (exported there first if it does not hold this checkpoint)")
    task = tasks.setup_task(cfg.task)
    models, saved = checkpoint_utils.load_model_ensemble(utils.split_paths(cfg.common_eval.path), task=task)
    for m in models:
        m.eval()
    export_if_stale(models[0], cfg.task.onnx_dir)
    compiled = task.build_generator(models, cfg.generation)
    folder, task.cfg.onnx_dir = task.cfg.onnx_dir, None
    eager = task.build_generator(models, cfg.generation)
    task.cfg.onnx_dir = folder
    task.load_dataset(cfg.dataset.gen_subset, task_cfg=saved.task)
    data = task.dataset(cfg.dataset.gen_subset)
    n = min(a.sentences + a.warmup, len(data))
    clock = time.perf_counter if a.clock == "wall" else time.thread_time
    times = {"eager": [], "onnx": []}
    differ, lengths = 0, []
    for i in range(n):
        sample = data.collater([data[i]])
        order = [("eager", eager), ("onnx", compiled)]
        out = {}
        for name, gen in (order if i % 2 == 0 else order[::-1]):
            t0 = clock()
            out[name] = task.inference_step(gen, models, sample)
            if i >= a.warmup:
                times[name].append((clock() - t0) * 1000.0)
        differ += int(not torch.equal(out["eager"][0][0]["tokens"], out["onnx"][0][0]["tokens"]))
        lengths.append((int(sample["net_input"]["src_lengths"][0]), out["onnx"][0][0]["tokens"].numel()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{len(times['eager'])} sentences at batch 1, {a.threads} thread(s), {a.clock} clock, interleaved: "
          f"PyTorch eager {med['eager']:.2f} ms, ONNX Runtime {med['onnx']:.2f} ms (median), "
          f"{med['eager'] / med['onnx']:.2f}x; hypotheses that differ: {differ} of {n}; mean "
          f"tokens (with </s>) per source {statistics.fmean(s for s, _ in lengths):.1f}, per "
          f"hypothesis {statistics.fmean(t for _, t in lengths):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
