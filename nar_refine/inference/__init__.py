"""Generators for ``fairseq-generate --task nar_translation --decoding ...``."""

import logging
import math

from nar_refine.errors import NARConfigError
from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator
from nar_refine.inference.guard import MAX_STEPS, DecodeGuard
from nar_refine.inference.latent_refinement import build_latent_generator, delta_refiner
from nar_refine.inference.score_inference import build_score_generator, parse_step_sizes
from nar_refine.inference.teacher import TeacherScorer
from nar_refine.models.lanmt import LaNMTModel
from nar_refine.models.refine_nat import RefineNATModel

logger = logging.getLogger(__name__)


def validate_decoding_options(task, gen_args, decoding):
    """Every decoding option checked once, before a generator (or a teacher) is built: one
    :class:`NARConfigError` that names each bad value (fairseq's parser only checks types)."""
    cfg = task.cfg
    bad = []

    def need(ok, text):
        if not ok:
            bad.append(text)

    max_iter = getattr(gen_args, "iter_decode_max_iter", 10)
    beam = getattr(gen_args, "iter_decode_with_beam", 1)
    need(max_iter >= 0, f"--iter-decode-max-iter must be >= 0 (0 = no refinement step), got {max_iter}")
    need(max_iter <= MAX_STEPS, f"--iter-decode-max-iter must be <= {MAX_STEPS} (the papers refine "
         f"for up to 10-20 steps), got {max_iter}")
    need(beam >= 1, f"--iter-decode-with-beam must be >= 1 (1 = the best length only), got {beam}")
    window = getattr(cfg, "adaptive_window", 2)
    min_steps = getattr(cfg, "adaptive_min_steps", 3)
    need(window >= 0, f"--adaptive-window must be >= 0 (0 = never stop early), got {window}")
    need(min_steps >= 0, f"--adaptive-min-steps must be >= 0 (0 = no minimum), got {min_steps}")
    m = getattr(cfg, "latent_search_size", 1)
    need(m is not None and m >= 1,
         f"--latent-search-size must be >= 1 (1 = no search), got {m}")
    noise = getattr(cfg, "latent_search_noise", 0.5)
    need(noise is not None and math.isfinite(noise) and noise >= 0,
         f"--latent-search-noise must be finite and >= 0 (0 = every candidate is the prior "
         f"mean), got {noise}")
    chunk = getattr(cfg, "latent_search_max_tokens", 0)
    need(chunk is not None and chunk >= 0,
         f"--latent-search-max-tokens must be >= 0 (0 = all candidates in one chunk), got {chunk}")
    steps = getattr(cfg, "score_steps", 1)
    need(steps >= 0, f"--score-steps must be >= 0 (0 = decode the prior mean), got {steps}")
    need(steps <= MAX_STEPS, f"--score-steps must be <= {MAX_STEPS} (the paper takes 1 to a few "
         f"steps), got {steps}")
    alpha = getattr(cfg, "score_alpha", 1.0)
    need(alpha is not None and math.isfinite(alpha) and alpha > 0,
         f"--score-alpha must be positive and finite, got {alpha}")
    memory = getattr(cfg, "decode_memory_gb", 0.0)
    need(memory is not None and math.isfinite(memory) and memory >= 0,
         f"--decode-memory-gb must be finite and >= 0 (0 = 80% of the available memory), got {memory}")
    nbest = getattr(gen_args, "nbest", 1)
    need(nbest == 1, f"--nbest {nbest}: nar_translation decoders give one hypothesis per sentence "
         f"(the best latent-search or length-beam candidate); drop --nbest (--retain-iter-history "
         f"prints the refinement steps)")
    if bad:
        raise NARConfigError("; ".join(bad))
    parse_step_sizes(getattr(cfg, "score_line_search", None))  # its own line when wrong
    if decoding == "refine" and m > 1:
        raise NARConfigError(
            f"--latent-search-size {m} with --decoding refine: refine_nat has no latent to "
            f"search; for several candidates per sentence use its length beam "
            f"(--iter-decode-with-beam L), which --teacher-path reranks")
    if getattr(cfg, "refine_repeats", "mask") == "drop" and decoding != "refine":
        raise NARConfigError(
            f"--refine-repeats {cfg.refine_repeats} applies to --decoding refine (refine_nat), "
            f"not --decoding {decoding}; to drop repeated tokens from any output use "
            f"--remove-repeats")
    if getattr(cfg, "teacher_path", None) and (beam if decoding == "refine" else m) < 2:
        # a warning, not an error: the Python API may keep a teacher across calls
        what = ("reranks refine_nat's length-beam candidates, but --iter-decode-with-beam is 1; "
                "pass --iter-decode-with-beam L (e.g. 3 or 5)" if decoding == "refine" else
                "rescores latent-search candidates, but --latent-search-size is 1; pass "
                "--latent-search-size M (e.g. 10)")
        logger.warning("--teacher-path %s: one candidate per sentence, the teacher is not used",
                       what)


def build_nar_generator(task, models, gen_args):
    """Pick and configure the generator named by ``--decoding`` for these models, wrapped in
    a ``DecodeGuard`` (memory plan, progress, non-finite checks; see ``inference.guard``)."""
    generator = _build_generator(task, models, gen_args)
    decoding = task.cfg.decoding if task.cfg.decoding != "auto" else models[0].default_decoding
    options = ({"score_alpha": task.cfg.score_alpha, "score_line_search": task.cfg.score_line_search}
               if decoding in ("score", "energy") else {})
    kind = "refine" if isinstance(generator, AdaptiveRefinementGenerator) else "latent"
    return DecodeGuard(generator, task, models[0], kind, options)


def _build_generator(task, models, gen_args):
    if len(models) != 1:
        raise NARConfigError("nar_translation decoders take exactly one model (no ensembles)")
    model = models[0]
    family = getattr(model, "nar_family", None) or type(model).__name__
    decoding = task.cfg.decoding
    if decoding == "auto":
        decoding = getattr(model, "default_decoding", None)
        if decoding is None:
            raise NARConfigError(
                f"{type(model).__name__} is not a nar_refine model; fairseq-generate "
                f"--task nar_translation decodes refine_nat, lanmt and score/energy models"
            )
    validate_decoding_options(task, gen_args, decoding)
    if decoding == "refine":
        if not isinstance(model, RefineNATModel):
            raise NARConfigError(
                f"--decoding refine needs a refine_nat model, but the checkpoint holds "
                f"{type(model).__name__} ({family}); use --decoding prior/delta/score/energy "
                f"for latent-variable models"
            )
        scorer = None
        if task.cfg.teacher_path:  # reranks the length-beam candidates
            scorer = TeacherScorer.from_path(task.cfg.teacher_path, task, like=model)
        return AdaptiveRefinementGenerator(
            task.target_dictionary,
            max_iter=getattr(gen_args, "iter_decode_max_iter", 10),
            adaptive=not getattr(gen_args, "iter_decode_force_max_iter", False),
            length_beam=getattr(gen_args, "iter_decode_with_beam", 1),
            retain_history=getattr(gen_args, "retain_iter_history", False),
            max_len=model.max_positions()[1],
            window=task.cfg.adaptive_window,
            min_steps=task.cfg.adaptive_min_steps,
            scorer=scorer,
            repeats=getattr(task.cfg, "refine_repeats", "mask"),
        )
    if decoding in ("score", "energy"):
        return build_score_generator(task, model, gen_args, decoding)
    if decoding in ("prior", "delta"):
        if not isinstance(model, LaNMTModel):
            raise NARConfigError(
                f"--decoding {decoding} needs a lanmt model, but the checkpoint holds "
                f"{type(model).__name__} ({family})"
            )
        if decoding == "prior":
            return build_latent_generator(task, model, gen_args)
        return build_latent_generator(
            task, model, gen_args, refiner=delta_refiner,
            max_iter=getattr(gen_args, "iter_decode_max_iter", 10),
            adaptive=not getattr(gen_args, "iter_decode_force_max_iter", False),
            ascent_check=getattr(task.cfg, "delta_ascent_check", False),
        )
    raise NARConfigError(f"--decoding {decoding} is not available for {type(model).__name__}")
