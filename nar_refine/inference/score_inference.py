"""Score / energy inference: continuous refinement of the LaNMT latent (Lee, Shu & Cho 2020).

    z_0 = mu(x)                                   (prior mean)
    z_{t+1} = z_t + alpha * S(z_t; x)             t < n   (energy_net: S = -dE/dz)
    y = argmax p(y | z_n, x)                      one output projection (softmax) per sentence

``ScoreRefiner`` is the update rule; the loop, the final decode and latent search
(``--latent-search-size m``: m starting latents around the prior mean, refined together and
rescored by ``--teacher-path`` or log p(y|z,x)) are the LaNMT's ``LatentRefinementGenerator``.
With a line search (``--score-line-search 0.5,1,2``) every step tries each alpha, decodes each
candidate at one fixed length (the one the LaNMT predicts for the step's start z) and keeps,
per sentence, the one with the highest mean token log-prob of its argmax y (as the reference,
zomux/lanmt-ebm, ranks them): one softmax per candidate and step, on top of the final decode.
A sum of log-probs at lengths re-predicted per candidate would favour the shortest output.
"""

import math

import torch

from nar_refine.errors import NARConfigError
from nar_refine.inference.latent_refinement import build_latent_generator
from nar_refine.models.inference_network import InferenceNetworkModel


def parse_step_sizes(text):
    """'0.5,1,2' -> [0.5, 1.0, 2.0]; None or '' -> None. Step sizes must be positive and finite."""
    if text is None or not str(text).strip():
        return None
    items = [a.strip() for a in str(text).split(",")]
    try:
        alphas = [float(a) for a in items]  # an empty item ("0.5,,1") is an error too
    except ValueError:
        alphas = []
    if not alphas or not all(math.isfinite(a) and a > 0 for a in alphas):
        raise NARConfigError(
            f"--score-line-search wants comma-separated positive finite step sizes "
            f"(e.g. 0.5,1,2), got {text!r}"
        )
    return alphas


class ScoreRefiner:
    """``refiner(model, enc, z) -> (z_next, None)``: one score step z + alpha * S(z; x).

    Never decodes without a line search (so the generator's final decode is the only
    softmax); with one it returns, per sentence, the candidate z + alpha * S(z; x) whose argmax
    y has the best mean token log-prob at the length predicted for z (one length for all
    candidates, so that the ranking compares latents, not lengths).
    """

    def __init__(self, alpha=1.0, line_search=None):
        self.alpha = alpha
        self.alphas = line_search  # list of step sizes, or None

    def __call__(self, model, enc, z):
        if self.alphas is None:
            return model.score_step(enc, z, self.alpha), None
        bsz, n_alpha = z.size(0), len(self.alphas)
        alphas = z.new_tensor(self.alphas).view(1, n_alpha, 1, 1)
        cand = (z.unsqueeze(1) + alphas * model.score(enc, z).unsqueeze(1)).flatten(0, 1)
        rows = torch.arange(bsz, device=z.device).repeat_interleave(n_alpha)
        lengths = model.predict_lengths(enc, z)[rows]  # the start point's length, for every candidate
        _, lprobs = model.decode_at(enc.index(rows), cand, lengths)
        mean = lprobs.sum(-1) / lengths.clamp(min=1).to(lprobs.dtype)
        best = mean.view(bsz, n_alpha).argmax(-1)
        return cand[best + torch.arange(bsz, device=z.device) * n_alpha], None

    def direct_output(self, model, max_iter):
        """The model's one-call decoding (one score step, no line search), or None."""
        if max_iter != 1 or self.alphas is not None or getattr(model, "energy", False):
            return None
        return model.score_output, (self.alpha,)


def build_score_generator(task, model, gen_args, decoding):
    """The generator for ``--decoding score|energy``, configured from the task's options."""
    if not isinstance(model, InferenceNetworkModel):
        raise NARConfigError(
            f"--decoding {decoding} needs a score_net or energy_net checkpoint (an inference "
            f"network trained on a LaNMT), but the checkpoint holds {type(model).__name__}"
        )
    if (decoding == "energy") != model.energy:
        raise NARConfigError(
            f"--decoding {decoding} does not match the checkpoint's {model.nar_family}; "
            f"use --decoding {model.default_decoding} (or auto)"
        )
    cfg = task.cfg  # values checked by validate_decoding_options (nar_refine.inference)
    refiner = ScoreRefiner(cfg.score_alpha, parse_step_sizes(cfg.score_line_search))
    # the score steps never decode, so there is nothing to stop on adaptively
    # the energy network's score is an autograd gradient: no inference_mode there
    return build_latent_generator(task, model, gen_args, refiner=refiner,
                                  max_iter=cfg.score_steps, adaptive=False,
                                  grad_free=not model.energy)
