"""Decoding that is bounded and visible, around every nar_translation generator.

``DecodeGuard`` wraps the generator that ``build_nar_generator`` configured (it forwards every
attribute to it) and adds, per batch:

1. memory: the candidates of a batch (B x m latent-search candidates, times the step sizes of
   a line search; B x L length-beam candidates) are estimated before anything is allocated
   (``DecodePlan``): the output projections dominate, rows x target length x vocabulary. A
   batch that would not fit in the budget (``--decode-memory-gb``, default 80% of the memory
   available) is decoded in chunks of whole sentences (``--latent-search-max-tokens`` chunks
   further), and a sentence that alone would not fit is refused in one line that names the
   option to lower;
2. progress: a batch that runs longer than ``NAR_REFINE_PROGRESS_SECONDS`` (default 10)
   logs, every as many seconds, the steps and chunks done;
3. non-finite states: the outputs of every refinement step and of the candidate scorer are
   checked (one reduction each, no host sync until the batch ends) and so are the finished
   hypotheses; a non-finite value stops the decoding with one line naming its cause, found by
   decoding the batch again without latent-search noise, then without refinement steps.
"""

import copy
import logging
import math
import os
import time

import torch

from nar_refine.errors import NARConfigError

logger = logging.getLogger(__name__)

MAX_STEPS = 1000  # most refinement steps (--iter-decode-max-iter) and score steps (--score-steps)
MEMORY_FRACTION = 0.8  # of the available memory, when --decode-memory-gb is 0
# bytes per (candidate row x target position x vocabulary entry) at the peak of a decode:
# measured peaks (fp32, CPU, d=128, 8k vocabulary) were ~8 for the latent generators (logits,
# logsumexp) and 13-22 for refine_nat (two decoders' logits, argmax); with a margin
BYTES_PER_LOGIT = {"latent": 12, "refine": 24}
BYTES_PER_STATE = 64  # bytes per (row x position x model dimension): hidden states, attention
SMALL_BATCH = 2 ** 28  # a batch estimated below this (256 MB) is decoded without asking the system


def available_memory(device):
    """Bytes that decoding may still allocate on ``device``: free CUDA memory (plus what
    PyTorch's allocator holds unused), or the system's MemAvailable; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def model_device(model):
    """The device of a model's parameters (CPU for a model without any, e.g. exported passes)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def gigabytes(n):
    return f"{n / 1e9:.3g} GB"


class DecodePlan:
    """How many sentences of a batch one decode may take, from a memory estimate."""

    def __init__(self, kind, rows_per_sentence, vocab, dim, max_len, length_spread, what):
        self.kind, self.rows, self.vocab, self.dim = kind, rows_per_sentence, vocab, dim
        self.max_len, self.spread, self.what = max_len, length_spread, what

    def target_length(self, src_len):
        """Target positions to plan for: the source length with a margin (lengths are predicted
        around it), plus half the length beam (its lengths spread around the prediction)."""
        t = math.ceil(1.2 * src_len) + 2 + self.spread
        return min(t, self.max_len) if self.max_len else t

    def sentence_bytes(self, src_len):
        t = self.target_length(src_len)
        return self.rows * t * (BYTES_PER_LOGIT[self.kind] * self.vocab + BYTES_PER_STATE * self.dim)

    def sentences_per_chunk(self, src_len, budget):
        """Sentences that fit in ``budget`` bytes (>= 1); refuses when one does not."""
        one = self.sentence_bytes(src_len)
        if budget is None:
            return None
        if one > budget:
            raise NARConfigError(
                f"{self.what}: one sentence of {src_len} source tokens needs about "
                f"{gigabytes(one)} to decode its {self.rows} candidates ({self.rows} x "
                f"{self.target_length(src_len)} target positions x {self.vocab} dictionary "
                f"entries), more than the {gigabytes(budget)} that decoding may use "
                f"(--decode-memory-gb; 0 = 80% of the available memory); {self.fix}")
        return max(1, int(budget // one))

    @property
    def fix(self):
        return ("lower --latent-search-size" if self.kind == "latent"
                else "lower --iter-decode-with-beam")


class Progress:
    """Logs the steps and chunks of a long batch every ``interval`` seconds."""

    def __init__(self, bsz, rows, max_steps, chunks):
        self.t0 = self.last = time.time()
        self.bsz, self.rows, self.max_steps, self.chunks = bsz, rows, max_steps, chunks
        self.steps, self.chunk = 0, 0
        try:
            self.interval = float(os.environ.get("NAR_REFINE_PROGRESS_SECONDS", 10))
        except ValueError:
            self.interval = 10.0

    def step(self):
        self.steps += 1
        self.tick()

    def next_chunk(self):
        self.chunk += 1
        self.tick()

    def tick(self):
        now = time.time()
        if now - self.last < self.interval:
            return
        self.last = now
        cands = f" x {self.rows} candidates" if self.rows > 1 else ""
        chunks = f", {self.chunk} of {self.chunks} chunks done" if self.chunks > 1 else ""
        per = " per chunk" if self.chunks > 1 else ""
        steps = (f", {self.steps} refinement steps so far (at most {self.max_steps}{per})"
                 if self.max_steps else "")
        logger.info("decoding a batch of %d sentences%s%s%s: %.0f s", self.bsz, cands, chunks,
                    steps, now - self.t0)


class _Checked:
    """A refiner or candidate scorer whose tensor outputs are checked for non-finite values
    (accumulated on the guard, read once per batch) and whose calls count as steps. It has the
    wrapped object's attributes, and only those (the latent generator asks the refiner whether
    it has ``decode_step``)."""

    def __init__(self, inner, guard, counts_steps):
        self._inner, self._guard, self._counts = inner, guard, counts_steps

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name not in ("decode_step", "update_step"):
            return value
        guard, is_step = self._guard, name == "decode_step"  # two-phase refiners (delta)

        def checked(*args, **kwargs):
            out = value(*args, **kwargs)
            guard.check(out)
            if is_step:
                guard.step()
            return out

        return checked

    def __call__(self, *args, **kwargs):
        out = self._inner(*args, **kwargs)
        self._guard.check(out)
        if self._counts:
            self._guard.step()
        return out


class DecodeGuard:
    """The generator of ``--decoding``, with a memory plan, progress and non-finite checks."""

    _own = ("generator", "task", "plan", "kind", "options", "_ok", "_progress", "_logged")

    def __init__(self, generator, task, model, kind, options):
        set_ = object.__setattr__
        set_(self, "generator", generator)
        set_(self, "task", task)
        set_(self, "kind", kind)  # "latent" or "refine"
        set_(self, "options", options)  # {option: value} that can cause non-finite states
        set_(self, "_ok", None)
        set_(self, "_progress", None)
        set_(self, "_logged", False)
        rows, spread = 1, 0
        if kind == "latent":
            rows = generator.search_size
            alphas = getattr(generator.refiner, "alphas", None)
            rows *= len(alphas) if alphas else 1
            if generator.refiner is not None:
                generator.refiner = _Checked(generator.refiner, self, counts_steps=True)
            what = f"--latent-search-size {generator.search_size}"
            if alphas:
                what += f" with --score-line-search ({len(alphas)} step sizes)"
        else:
            rows = generator.length_beam
            spread = rows - 1 - (rows - 1) // 2  # lengths up to the prediction + this
            what = f"--iter-decode-with-beam {rows}"
        if getattr(generator, "scorer", None) is not None:
            generator.scorer = _Checked(generator.scorer, self, counts_steps=False)
        decoder = getattr(model, "lanmt", model)  # score/energy networks decode with their LaNMT
        args = getattr(decoder, "args", None)
        dim = getattr(args, "decoder_embed_dim", None) or getattr(args, "encoder_embed_dim", 512)
        positions = model.max_positions()
        max_len = positions[1] if isinstance(positions, tuple) else None
        set_(self, "plan", DecodePlan(kind, rows, len(task.target_dictionary), dim, max_len,
                                      spread, what))

    # the wrapped generator's attributes (scorer, keep_candidates, ...) read and set through
    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "generator"), name)

    def __setattr__(self, name, value):
        if name in DecodeGuard._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.generator, name, value)

    # -- checks fed by the wrapped refiner and scorer --------------------------------------
    def check(self, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t) and t.is_floating_point():
                ok = torch.isfinite(t).all()
                object.__setattr__(self, "_ok", ok if self._ok is None else self._ok & ok)

    def step(self):
        if self._progress is not None:
            self._progress.step()

    # -- decoding ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, models, sample, **kwargs):
        try:
            hypos = self._decode(self.generator, models, sample, kwargs)
        except (RuntimeError, IndexError, ValueError) as err:
            if self._ok is None or bool(self._ok):
                raise
            # a non-finite state that broke the decoding before it finished (an index from nan)
            raise NARConfigError(self._diagnose(models, sample, kwargs)) from err
        if not self._finite(hypos):
            raise NARConfigError(self._diagnose(models, sample, kwargs))
        return hypos

    def _decode(self, generator, models, sample, kwargs):
        net = sample["net_input"]
        src_tokens, src_lengths = net["src_tokens"], net["src_lengths"]
        bsz, src_len = src_tokens.size(0), src_tokens.size(1)
        chunk = self._chunk_size(models[0], bsz, src_len)
        chunks = math.ceil(bsz / chunk)
        object.__setattr__(self, "_ok", None)
        object.__setattr__(self, "_progress", Progress(bsz, self.plan.rows,
                                                       getattr(generator, "max_iter", 0), chunks))
        steps_hook = self._count_refine_steps(models[0])
        try:
            if chunks == 1:
                return generator.generate(models, sample, **kwargs)
            hypos = []
            for start in range(0, bsz, chunk):
                part = slice(start, start + chunk)
                sub = {"net_input": {"src_tokens": src_tokens[part], "src_lengths": src_lengths[part]}}
                if "id" in sample:
                    sub["id"] = sample["id"][part]
                hypos.extend(generator.generate(models, sub, **kwargs))
                self._progress.next_chunk()
            return hypos
        finally:
            steps_hook()
            object.__setattr__(self, "_progress", None)

    def _chunk_size(self, model, bsz, src_len):
        """Sentences per decode: what the memory budget allows, and at most what
        --latent-search-max-tokens allows."""
        chunk = bsz
        user = getattr(self.generator, "max_search_tokens", 0) or 0
        m = getattr(self.generator, "search_size", 1)
        if self.kind == "latent" and m > 1 and user > 0:
            chunk = max(1, user // (m * src_len))
        budget = getattr(self.task.cfg, "decode_memory_gb", 0) or 0
        budget = budget * 1e9 if budget > 0 else None
        if budget is None:
            if bsz * self.plan.sentence_bytes(src_len) < SMALL_BATCH:
                return max(1, min(chunk, bsz))  # fits anywhere: no need to ask the system
            free = available_memory(model_device(model))
            budget = free * MEMORY_FRACTION if free is not None else None
        fits = self.plan.sentences_per_chunk(src_len, budget)
        if fits is not None and fits < min(chunk, bsz):
            if not self._logged:
                logger.info("%s: a batch of %d sentences of %d source tokens needs about %s, "
                            "more than the %s that decoding may use: decoding it in chunks of "
                            "%d sentences", self.plan.what, bsz, src_len,
                            gigabytes(bsz * self.plan.sentence_bytes(src_len)), gigabytes(budget),
                            fits)
                object.__setattr__(self, "_logged", True)
            chunk = fits
        return max(1, min(chunk, bsz))

    def _count_refine_steps(self, model):
        """refine_nat's steps are the model's refine_step calls: counted on the instance for
        the time of the batch (the latent refiners count themselves). Returns the undo."""
        if self.kind != "refine" or not hasattr(model, "refine_step"):
            return lambda: None
        original = model.refine_step
        guard = self

        def refine_step(*args, **kwargs):
            out = original(*args, **kwargs)
            guard.step()
            return out

        try:
            model.refine_step = refine_step
        except AttributeError:  # a model object that takes no attributes: no step count
            return lambda: None
        return lambda: model.__dict__.pop("refine_step", None)

    # -- non-finite states ---------------------------------------------------------------
    def _finite(self, hypos):
        """The accumulated step/scorer checks and the finished hypotheses (host tensors)."""
        if self._ok is not None and not bool(self._ok):
            return False
        parts = []
        for nbest in hypos:
            for h in nbest[:1]:
                parts.append(h["positional_scores"].reshape(-1).float())
                if torch.is_tensor(h.get("latent")):
                    parts.append(h["latent"].reshape(-1).float())
        return not parts or bool(torch.isfinite(torch.cat(parts)).all())

    def _diagnose(self, models, sample, kwargs):
        """Decode the batch again with one cause removed at a time; name the first that helps."""
        gen = self.generator
        head = (f"decoding gave non-finite values (nan/inf) in its latents or scores, in a batch "
                f"of {sample['net_input']['src_tokens'].size(0)} sentences")
        trials = []
        if self.kind == "latent" and gen.search_size > 1 and gen.search_noise > 0:
            trials.append(({"search_noise": 0.0},
                           f"--latent-search-noise {gen.search_noise}: latent-search candidates "
                           f"mu + noise*sigma*eps that far from the prior mean decode to nan; "
                           f"lower it (e.g. 0.5)"))
        if self.kind == "latent" and gen.max_iter > 0 and "score_alpha" in self.options:
            alphas = getattr(gen.refiner, "alphas", None)
            cause = (f"--score-line-search {self.options.get('score_line_search')}" if alphas
                     else f"--score-alpha {self.options['score_alpha']}")
            trials.append(({"search_noise": 0.0, "max_iter": 0},
                           f"{cause} (with --score-steps {gen.max_iter}): the steps "
                           f"z + alpha*S(z;x) leave the latents the decoder can read; lower it "
                           f"(e.g. 1)"))
        elif self.kind == "latent" and gen.max_iter > 0:
            trials.append(({"search_noise": 0.0, "max_iter": 0},
                           f"the model's delta-inference steps (--iter-decode-max-iter "
                           f"{gen.max_iter}); decode with --decoding prior, or check the checkpoint"))
        for change, cause in trials:
            trial = copy.copy(gen)
            for key, value in change.items():
                setattr(trial, key, value)
            try:
                hypos = self._decode(trial, models, sample, kwargs)
            except Exception:  # noqa: BLE001  (still broken this way: try the next cause)
                continue
            if self._finite(hypos):
                return f"{head}; the cause is {cause}"
        model = models[0]
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        if not all(bool(torch.isfinite(p).all()) for p in params):
            return (f"{head}: the checkpoint holds non-finite weights (a training that diverged); "
                    f"use an earlier checkpoint")
        if params and params[0].dtype in (torch.float16, torch.bfloat16):
            return f"{head}: half precision overflows in this model; decode without --fp16"
        return (f"{head}, from the model itself (its weights are finite and no decoding option "
                f"explains it); please report it with the checkpoint and the command")
