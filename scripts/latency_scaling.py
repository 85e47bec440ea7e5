#!/usr/bin/env python
"""Speed-up over autoregressive beam search as the batch grows, with 1 and 2 threads (the talk's
"latency with respect to length and computational capacity").

    python scripts/latency_scaling.py [benchmark options] [--tokens 0,64,...,4096]
        [--thread-counts 1,2] --out examples/multi30k/results/latency_scaling

The systems are the benchmark's (``scripts/bench``: the same ids, fairseq-generate arguments,
checkpoints and loading; ``--systems``, by default AR beam 5 and beam 1, LaNMT prior and delta
<= 1 step, score inference, refine_nat adaptive). The first ``--sentences`` test sentences are
decoded in batches of at most T source+target tokens for every T of ``--tokens`` (fairseq's
``batch_by_size``, as ``fairseq-generate --max-tokens T`` makes them; 0 = one sentence a batch),
for every thread count of ``--thread-counts`` (``torch.set_num_threads``), through
``task.inference_step`` as fairseq-generate does. At each (threads, T) every system runs in
turn in one process (interleaved, so that a change in the machine's load reaches them alike),
after one untimed batch. Measured: ms per sentence (all batches' time / sentences); the speed-up
of a system is the baseline's (``--baseline``, AR beam 5) ms per sentence over its own, at the
same T and threads. With ``--cuda`` it runs on the GPU (the timings synchronise the device).
``--whole-batch-projection`` adds a twin KEY.whole of every nar_refine system, timed in the same
rotation, whose vocabulary projection is computed for the whole batch at once instead of in
blocks of positions (``nar_refine.modules.token_scores.ROW_BLOCK``): the effect of the blocks.

Writes OUT.json (every measurement), OUT.md (the table and the command) and OUT.png (speed-up
against batch tokens, one line per system, solid for 1 thread, dashed for 2).
"""

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import relative  # noqa: E402
from bench.options import get_parser as bench_parser, int_list, resolve_paths  # noqa: E402
from bench.runner import Bench  # noqa: E402
from bench.systems import build_systems, missing_checkpoints, select_systems  # noqa: E402

DEFAULT_SYSTEMS = ("ar.beam5,ar.beam1,lanmt.prior,lanmt.delta1,score.steps1,"
                   "refine_nat.adaptive10")
DEFAULT_TOKENS = "0,64,128,256,512,1024,2048,4096"


def get_parser():
    p = bench_parser(description=__doc__.split("\n\n")[0])
    p.set_defaults(systems=DEFAULT_SYSTEMS)
    p.add_argument("--sentences", type=int, default=200, help="first N test sentences (default 200)")
    p.add_argument("--tokens", type=int_list, default=int_list(DEFAULT_TOKENS),
                   help="batch sizes: at most T tokens a batch (fairseq --max-tokens); 0 = one sentence "
                        f"a batch (default {DEFAULT_TOKENS})")
    p.add_argument("--thread-counts", type=int_list, default=[1, 2],
                   help="torch.set_num_threads values (default 1,2)")
    p.add_argument("--baseline", default="ar.beam5", help="system the speed-ups are relative to")
    p.add_argument("--repeats", type=int, default=1,
                   help="time every (threads, T, system) this many times; the median is kept")
    p.add_argument("--whole-batch-projection", action="store_true",
                   help="also time every nar_refine system with its vocabulary projection read for the "
                        "whole batch at once (as before nar_refine read it in blocks of positions): "
                        "rows KEY.whole, interleaved with the others")
    p.add_argument("--no-plot", action="store_true", help="skip OUT.png (no matplotlib needed)")
    return p


def whole_batch_twins(systems, built):
    """KEY.whole for every nar_refine system: the same system with ROW_BLOCK set so that a
    batch's logits are computed at once."""
    import types

    return [types.SimpleNamespace(key=f"{s.key}.whole", base=s.key, whole=True, engine=s.engine,
                                  name=f"{s.name}, vocabulary projected for the whole batch at once")
            for s in systems if getattr(built[s.key].models[0], "is_nar_refine_model", False)]


def batches_of(dataset, n, max_tokens):
    """The batches (lists of ids) fairseq-generate makes of the first n sentences."""
    indices = dataset.ordered_indices()
    indices = indices[indices < n]
    if max_tokens <= 0:
        return [[int(i)] for i in indices]
    return [list(b) for b in dataset.batch_by_size(indices, max_tokens=max_tokens, max_sentences=None)]


def measure(a):
    import torch
    from fairseq import utils

    ckpts = resolve_paths(a)
    systems = select_systems(build_systems(a, ckpts), a.systems)
    systems = [s for s in systems if s.engine == "fairseq" and not missing_checkpoints(s, ckpts)]
    if a.baseline not in [s.key for s in systems]:
        sys.exit(f"latency_scaling: the baseline {a.baseline} is not among the systems that can run "
                 f"(missing checkpoint, or not in --systems)")
    bench = Bench(a, ckpts)
    built = {s.key: bench.setup(s) for s in systems}
    n = min(a.sentences, min(len(b.dataset) for b in built.values()))
    if a.whole_batch_projection:
        twins = whole_batch_twins(systems, built)
        for t in twins:
            built[t.key] = built[t.base]
        systems = systems + twins

    def sample_of(b, ids):
        smp = b.dataset.collater([b.dataset[i] for i in ids])
        return utils.move_to_cuda(smp) if a.cuda else smp

    def sync():
        if a.cuda:
            torch.cuda.synchronize()

    from nar_refine.modules import token_scores

    block = token_scores.ROW_BLOCK
    rows = []
    for threads in a.thread_counts:
        torch.set_num_threads(threads)
        for tokens in a.tokens:
            samples = {}
            for s in systems:
                b = built[s.key]
                samples[s.key] = [sample_of(b, ids) for ids in batches_of(b.dataset, n, tokens)]
                b.task.inference_step(b.generator, b.models, samples[s.key][0])  # warm-up
            times = {s.key: [] for s in systems}
            for _ in range(max(1, a.repeats)):
                for s in systems:  # interleaved: every system in turn
                    b = built[s.key]
                    utils.set_torch_seed(a.seed)
                    token_scores.ROW_BLOCK = 1 << 62 if getattr(s, "whole", False) else block
                    total = 0.0
                    for smp in samples[s.key]:
                        sync()
                        t0 = time.perf_counter()
                        b.task.inference_step(b.generator, b.models, smp)
                        sync()
                        total += time.perf_counter() - t0
                    token_scores.ROW_BLOCK = block
                    times[s.key].append(total)
            base = statistics.median(times[a.baseline]) / n
            for s in systems:
                per = statistics.median(times[s.key]) / n
                rows.append({"system": s.key, "name": s.name, "threads": threads, "max_tokens": tokens,
                             "batches": len(samples[s.key]), "sentences": n,
                             "ms_per_sentence": round(per * 1000.0, 3),
                             "speedup": round(base / per, 3) if per > 0 else None})
                print(f"threads {threads} tokens {tokens or 'sentence'}: {s.key} "
                      f"{per * 1000.0:.2f} ms/sentence, x{base / per:.2f} vs {a.baseline}", flush=True)
    return systems, rows, n


def label(tokens):
    return "1 sentence" if tokens <= 0 else str(tokens)


def write_markdown(path, a, systems, rows, n, command):
    lines = ["# Speed-up over AR beam search as the batch grows", "",
             f"Command: `{command}`  ",
             f"{n} test sentences of {relative(a.data_bin)} `{a.gen_subset}` in batches of at most T tokens "
             f"(fairseq's batch_by_size; T = 1 sentence: one sentence a batch), every system in turn in one "
             f"process after one untimed batch; ms per sentence = all batches' time / {n}; speed-up = "
             f"{a.baseline}'s ms per sentence / the system's, same T and threads. "
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
             f"{'CUDA' if a.cuda else 'CPU'}; torch {__import__('torch').__version__}.", ""]
    for threads in a.thread_counts:
        lines += [f"## {threads} thread{'s' * (threads > 1)}: speed-up over {a.baseline} "
                  f"(ms per sentence)", ""]
        head = ["system"] + [label(t) for t in a.tokens]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * len(a.tokens))
        for s in systems:
            cells = [f"`{s.key}` {s.name}"]
            for t in a.tokens:
                r = next(r for r in rows if r["system"] == s.key and r["threads"] == threads
                         and r["max_tokens"] == t)
                cells.append(f"{r['speedup']:.2f}x ({r['ms_per_sentence']:.2f})")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    Path(path).write_text("\n".join(lines))


def plot(path, a, systems, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [max(t, 1) for t in a.tokens]  # "one sentence a batch" drawn at 1
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    bases = [s.key for s in systems if not getattr(s, "whole", False)]
    for s in systems:
        whole = getattr(s, "whole", False)  # a .whole twin: its system's colour, faint, x marks
        colour = colours[bases.index(s.base if whole else s.key) % len(colours)]
        for j, threads in enumerate(a.thread_counts):
            ys = [next(r["speedup"] for r in rows if r["system"] == s.key and r["threads"] == threads
                       and r["max_tokens"] == t) for t in a.tokens]
            ax.plot(xs, ys, styles[j % len(styles)], marker="x" if whole else "o", ms=3, color=colour,
                    alpha=0.45 if whole else 1.0, lw=1.0 if whole else 1.5,
                    label=f"{s.key}, {threads} thread{'s' * (threads > 1)}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([label(t) for t in a.tokens], rotation=30)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("batch size (tokens, fairseq --max-tokens)")
    ax.set_ylabel(f"speed-up over {a.baseline} (ms per sentence)")
    ax.set_title("Speed-up as the batch grows")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    if a.out is None:
        sys.exit("latency_scaling: --out PREFIX is required (writes PREFIX.json, .md, .png)")
    import logging
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.out)
    if a.replot:  # OUT.md and OUT.png again from OUT.json, nothing timed
        import types

        data = json.loads(Path(f"{out}.json").read_text())
        rows, n, command = data["rows"], data["sentences"], data["command"]
        a.tokens = sorted({r["max_tokens"] for r in rows})
        a.thread_counts = sorted({r["threads"] for r in rows})
        a.baseline, a.data_bin = data["baseline"], data.get("data_bin", a.data_bin)
        keys = list(dict.fromkeys(r["system"] for r in rows))
        names = {r["system"]: r["name"] for r in rows}
        systems = [types.SimpleNamespace(key=k, name=names[k], whole=k.endswith(".whole") and k[:-6] in keys,
                                         base=k[:-6]) for k in keys]
        write_markdown(f"{out}.md", a, systems, rows, n, command)
        if not a.no_plot:
            plot(f"{out}.png", a, systems, rows)
        print(f"wrote {out}.md" + ("" if a.no_plot else f", {out}.png"))
        return
    systems, rows, n = measure(a)
    words = ["python", "scripts/latency_scaling.py"]
    for w in argv:  # paths inside the repository relative to it, as the benchmark records them
        inside = os.path.exists(w) and not relative(w).startswith("..")
        words.append(relative(w) if inside else w)
    command = " ".join(shlex.quote(w) for w in words)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({"command": command, "sentences": n, "baseline": a.baseline,
                                                "data_bin": relative(a.data_bin), "cuda": a.cuda,
                                                "rows": rows}, indent=1))
    write_markdown(f"{out}.md", a, systems, rows, n, command)
    if not a.no_plot:
        plot(f"{out}.png", a, systems, rows)
    print(f"wrote {out}.json, {out}.md" + ("" if a.no_plot else f", {out}.png"))


if __name__ == "__main__":
    main()
