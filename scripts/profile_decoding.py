#!/usr/bin/env python
"""Where batch-1 decoding time goes: a per-component profile of benchmark systems.

    python scripts/profile_decoding.py [benchmark options] [--sentences N] [--clock cpu] --out PREFIX

The systems are the benchmark's (``scripts/bench``: the same ids, fairseq-generate arguments,
checkpoints and loading), by default the rows whose batch-1 latency the Multi30k results hold
against the LaNMT prior pass: ``lanmt.prior``, ``lanmt.delta1``, ``lanmt.search10``,
``score.steps1``, ``score.search10`` and ``ar.beam5``. Every sentence of the first ``N`` test
sentences is translated alone (batch 1) by every system in turn, in one process, after a
warm-up (so that a change in the machine's load reaches every system alike), through
``task.inference_step`` as fairseq-generate does.

Time is split by wrapping the model's pieces (self time: a piece called inside another is
charged to the inner one):

    encoder        the source encoder (LaNMT's, the AR model's, refine_nat's)
    prior          LaNMT's prior p(z|x): its Transformer over the source states and its head
    decoder        p(y|z,x) with its argmax, and the length predictor p(T|z,x) (LaNMT); the AR
                   decoder; refine_nat's decoders 1 and 2 and its length predictor
    posterior      LaNMT's posterior q(z|x,y)
    score network  S(z;x) (score/energy networks)
    teacher        the autoregressive teacher that rescores candidates (latent search)
    everything else  the generator's own work (argmax, masks, bookkeeping, hypotheses), fairseq

Each component is a mean over the sentences (ms per sentence; the components add up to the
mean latency); the latency column is the median, as in the benchmark, and the ratio is to the
median of ``lanmt.prior``. ``--clock cpu`` measures the process's CPU time instead of the wall
clock: on a machine whose cores other jobs keep busy, the time this process waits for a core is
then left out (with one thread, CPU time is the time the work takes on a free core). Writes
PREFIX.md (the table, with the command that made it) and PREFIX.json, and prints the table.
"""

import functools
import json
import os
import shlex
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import relative  # noqa: E402
from bench.options import get_parser as bench_parser, resolve_paths  # noqa: E402
from bench.runner import Bench  # noqa: E402
from bench.systems import build_systems, missing_checkpoints, select_systems  # noqa: E402

DEFAULT_SYSTEMS = "lanmt.prior,lanmt.delta1,lanmt.search10,score.steps1,score.search10,ar.beam5"
COMPONENTS = ["encoder", "prior", "decoder", "posterior", "score network", "teacher"]
OTHER = "everything else"
BASELINE = "lanmt.prior"


class ComponentClock:
    """Self time per label. ``wrap(obj, name, label)`` replaces ``obj.name`` (a method, or a
    module's ``forward``, which fairseq sometimes calls directly) on that instance only."""

    def __init__(self, timer=time.perf_counter):
        self.timer = timer
        self.totals = defaultdict(float)
        self.stack = []
        self.last = None

    def _charge(self, now):
        if self.stack:
            self.totals[self.stack[-1]] += now - self.last
        self.last = now

    def wrap(self, obj, name, label):
        inner = getattr(obj, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            self._charge(self.timer())
            self.stack.append(label)
            try:
                return inner(*args, **kwargs)
            finally:
                self._charge(self.timer())
                self.stack.pop()

        setattr(obj, name, timed)  # an instance attribute (a DecodeGuard passes it to its generator)

    def run(self, fn):
        """fn() timed as a whole; returns (result, total seconds, {label: seconds})."""
        self.totals = defaultdict(float)
        self.stack = [OTHER]
        self.last = t0 = self.timer()
        try:
            out = fn()
        finally:
            self._charge(self.timer())
            self.stack = []
        return out, self.last - t0, dict(self.totals)


def instrument(clock, models, generator):
    """Wrap the pieces of one system's model (and its teacher) with component labels."""
    model = models[0]
    lanmt = getattr(model, "lanmt", None)
    if lanmt is None and hasattr(model, "prior_encoder"):
        lanmt = model
    if lanmt is not None:
        clock.wrap(lanmt.encoder, "forward", "encoder")
        clock.wrap(lanmt.prior_encoder, "forward", "prior")
        clock.wrap(lanmt, "prior", "prior")
        for name in ("decode", "decode_logits", "length_logits"):
            clock.wrap(lanmt, name, "decoder")
        clock.wrap(lanmt, "posterior", "posterior")
        if model is not lanmt:
            clock.wrap(model, "score", "score network")
            clock.wrap(model, "decode_at", "decoder")
    elif hasattr(model, "refine_step"):  # refine_nat
        clock.wrap(model.encoder, "forward", "encoder")
        for name in ("length_logits", "initial_step", "refine_step", "read_output"):
            clock.wrap(model, name, "decoder")
    elif hasattr(model, "encoder") and hasattr(model, "decoder"):  # AR (or CMLM)
        clock.wrap(model.encoder, "forward", "encoder")
        clock.wrap(model.decoder, "forward", "decoder")
    scorer = getattr(generator, "scorer", None)
    if scorer is not None and hasattr(scorer, "model"):  # the autoregressive teacher
        clock.wrap(generator, "scorer", "teacher")


def get_parser():
    p = bench_parser(description=__doc__)
    p.set_defaults(systems=DEFAULT_SYSTEMS, latency_sentences=100, warmup=5)
    p.add_argument("--sentences", type=int, default=None,
                   help="first N test sentences, each at batch 1 (default: --latency-sentences, 100)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter (as the benchmark); cpu: the process's CPU time "
                        "(time.process_time), for a machine whose cores other jobs keep busy")
    for action in p._actions:  # the benchmark's --out is a folder; here it is a prefix
        if action.dest == "out":
            action.help = "output prefix: PREFIX.md, PREFIX.json and PREFIX.png (default: print only)"
    p.add_argument("--no-plot", action="store_true", help="skip PREFIX.png (no matplotlib needed)")
    p.add_argument("--title", default="Batch-1 latency by component",
                   help="heading of the markdown table")
    p.add_argument("--note", action="append", default=[],
                   help="a line printed under the heading (repeatable), e.g. what the models are")
    return p


def profile(a, argv):
    import torch
    from fairseq import utils

    torch.set_num_threads(a.threads)
    ckpts = resolve_paths(a)
    systems = select_systems(build_systems(a, ckpts), a.systems)
    systems = [s for s in systems if s.engine == "fairseq" and not missing_checkpoints(s, ckpts)]
    if not systems:
        sys.exit("profile_decoding: none of the systems has its checkpoints")
    bench = Bench(a, ckpts)
    clock = ComponentClock(time.process_time if a.clock == "cpu" else time.perf_counter)
    built = {}
    for s in systems:
        b = bench.setup(s)
        instrument(clock, b.models, b.generator)
        built[s.key] = b
    n = a.sentences or a.latency_sentences
    dataset = next(iter(built.values())).dataset
    n = min(n, len(dataset))

    def sample_of(b, i):
        smp = b.dataset.collater([b.dataset[i]])
        return utils.move_to_cuda(smp) if a.cuda else smp

    samples = {k: [sample_of(b, i) for i in range(n)] for k, b in built.items()}
    for i in range(min(a.warmup, n)):
        for s in systems:
            b = built[s.key]
            b.task.inference_step(b.generator, b.models, samples[s.key][i])
    lat = {s.key: [] for s in systems}
    comp = {s.key: defaultdict(float) for s in systems}
    utils.set_torch_seed(a.seed)
    for i in range(n):  # interleaved: sentence-major, every system in turn
        for s in systems:
            b = built[s.key]
            if a.cuda:
                torch.cuda.synchronize()
            _, total, parts = clock.run(lambda: b.task.inference_step(b.generator, b.models, samples[s.key][i]))
            lat[s.key].append(total * 1000.0)
            for k, v in parts.items():
                comp[s.key][k] += v * 1000.0 / n
    return systems, lat, comp, n


def table(a, systems, lat, comp, n, command):
    base = statistics.median(lat[BASELINE]) if BASELINE in lat else None
    ar5 = statistics.median(lat["ar.beam5"]) if "ar.beam5" in lat else None
    head = ["system", "median ms", f"x {BASELINE}", "x faster than ar.beam5", "mean ms"] + COMPONENTS + [OTHER]
    lines = [f"## {a.title}", ""]
    lines += [f"{x}  " for x in a.note]
    lines += [f"Command: `{command}`  ",
              f"{n} test sentences of {relative(a.data_bin)} `{a.gen_subset}`, each at batch 1, every system "
              f"in turn (interleaved, one process), {a.threads} thread(s), after {a.warmup} warm-up "
              f"sentence(s); clock: {'CPU time of the process' if a.clock == 'cpu' else 'wall'}. "
              f"Components: mean ms per sentence (they add up to the mean); latency: median. "
              f"torch {__import__('torch').__version__}.", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" + "---:|" * (len(head) - 1))
    for s in systems:
        med = statistics.median(lat[s.key])
        cells = [f"`{s.key}` {s.name}", f"{med:.2f}",
                 f"{med / base:.2f}" if base else "-",
                 f"{ar5 / med:.2f}" if ar5 else "-",
                 f"{statistics.fmean(lat[s.key]):.2f}"]
        cells += [f"{comp[s.key].get(c, 0.0):.2f}" if comp[s.key].get(c) else "" for c in COMPONENTS + [OTHER]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path, a, systems, comp):
    """Each system's mean batch-1 time as one horizontal bar, split into its components."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = COMPONENTS + [OTHER]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(systems) + 1.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ys = list(range(len(systems)))[::-1]  # the table's first row on top
    left = [0.0] * len(systems)
    for j, part in enumerate(parts):
        widths = [comp[s.key].get(part, 0.0) for s in systems]
        if not any(widths):
            continue
        ax.barh(ys, widths, left=left, color="lightgrey" if part == OTHER else colours[j % len(colours)],
                label=part, edgecolor="white", linewidth=0.5)
        left = [x + w for x, w in zip(left, widths)]
    ax.set_yticks(ys)
    ax.set_yticklabels([s.key for s in systems], fontsize=8)
    ax.set_xlabel(f"mean ms per sentence at batch 1 ({a.threads} thread(s), "
                  f"{'CPU time' if a.clock == 'cpu' else 'wall clock'})")
    ax.set_title(a.title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    prefix = a.out  # (resolve_paths fills in the benchmark's default folder)
    systems, lat, comp, n = profile(a, argv)
    words = ["python", "scripts/profile_decoding.py"]
    for w in argv:  # paths inside the repository relative to it, as the benchmark records them
        inside = os.path.exists(w) and not relative(w).startswith("..")
        words.append(relative(w) if inside else w)
    command = " ".join(shlex.quote(w) for w in words)
    md = table(a, systems, lat, comp, n, command)
    print(md)
    if prefix:
        out = Path(prefix)
        out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.md").write_text(md)
        Path(f"{out}.json").write_text(json.dumps({
            "command": command, "sentences": n, "clock": a.clock, "threads": a.threads,
            "systems": [{"key": s.key, "name": s.name, "latencies_ms": [round(x, 4) for x in lat[s.key]],
                         "components_ms": {k: round(v, 4) for k, v in comp[s.key].items()}}
                        for s in systems]}, indent=1))
        if not a.no_plot:
            plot(f"{out}.png", a, systems, comp)


if __name__ == "__main__":
    main()
