"""Generators for ``fairseq-generate --task nar_translation --decoding ...``."""

from nar_refine.tasks.nar_translation import NARConfigError

def build_nar_generator(task, models, gen_args):
    """Pick and configure the generator named by ``--decoding`` for these models."""
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
    if decoding == "refine":
        from nar_refine.models.refine_nat import RefineNATModel

        if not isinstance(model, RefineNATModel):
            raise NARConfigError(
                f"--decoding refine needs a refine_nat model, but the checkpoint holds "
                f"{type(model).__name__} ({family}); use --decoding prior/delta/score/energy "
                f"for latent-variable models"
            )
        from nar_refine.inference.adaptive_refinement import AdaptiveRefinementGenerator

        return AdaptiveRefinementGenerator(
            task.target_dictionary,
            max_iter=getattr(gen_args, "iter_decode_max_iter", 10),
            adaptive=not getattr(gen_args, "iter_decode_force_max_iter", False),
            length_beam=getattr(gen_args, "iter_decode_with_beam", 1),
            retain_history=getattr(gen_args, "retain_iter_history", False),
            max_len=model.max_positions()[1],
            window=task.cfg.adaptive_window,
            min_steps=task.cfg.adaptive_min_steps,
        )
    if decoding in ("score", "energy"):
        from nar_refine.inference.score_inference import build_score_generator

        return build_score_generator(task, model, gen_args, decoding)
    if decoding in ("prior", "delta"):
        from nar_refine.models.lanmt import LaNMTModel

        if not isinstance(model, LaNMTModel):
            raise NARConfigError(
                f"--decoding {decoding} needs a lanmt model, but the checkpoint holds "
                f"{type(model).__name__} ({family})"
            )
        from nar_refine.inference.latent_refinement import build_latent_generator, delta_refiner

        if decoding == "prior":
            return build_latent_generator(task, model, gen_args)
        return build_latent_generator(
            task, model, gen_args, refiner=delta_refiner,
            max_iter=getattr(gen_args, "iter_decode_max_iter", 10),
            adaptive=not getattr(gen_args, "iter_decode_force_max_iter", False),
            ascent_check=getattr(task.cfg, "delta_ascent_check", False),
        )
    raise NARConfigError(f"--decoding {decoding} is not available for {type(model).__name__}")
