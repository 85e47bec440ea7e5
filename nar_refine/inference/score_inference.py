"""Score / energy inference: continuous refinement of the LaNMT latent (Lee, Shu & Cho 2020).

    z_0 = mu(x)                                   (prior mean)
    z_{t+1} = z_t + alpha * S(z_t; x)             t < n   (energy_net: S = -dE/dz)
    y = argmax p(y | z_n, x)                      one output projection (softmax) per sentence

With a line search (``--score-line-search 0.5,1,2``) every step tries each alpha, decodes each
candidate and keeps, per sentence, the one with the highest log p(y|z,x) (one softmax per
candidate and step; the last step's winner is not decoded again). Latent search on top
(``--latent-search-size m``) starts from m latents around the prior mean and rescores the
refined candidates: the LaNMT's ``LatentRefinementGenerator`` with ``ScoreRefiner`` as refiner.
"""

import torch

from nar_refine.inference.hypotheses import make_hypothesis


def parse_step_sizes(text):
    """'0.5,1,2' -> [0.5, 1.0, 2.0]; None or '' -> None."""
    if not text:
        return None
    try:
        alphas = [float(a) for a in str(text).split(",") if a.strip()]
    except ValueError:
        alphas = []
    if not alphas:
        from nar_refine.tasks.nar_translation import NARConfigError

        raise NARConfigError(f"--score-line-search wants comma-separated step sizes, got {text!r}")
    return alphas


def select_rows(enc, rows):
    """The source encoding of sentences ``rows`` (repeats allowed)."""
    if hasattr(enc, "index"):
        return enc.index(rows)
    return type(enc)({k: v.index_select(0, rows) if torch.is_tensor(v) else v for k, v in enc.items()})


class ScoreRefiner:
    """``refiner(model, enc, z) -> (z_n, decoded or None)``: n score steps from z.

    ``decoded`` is the LaNMT's ``decode`` output (tokens, lprobs, lengths) of z_n when the
    steps had to decode anyway (line search), else None: the caller decodes z_n once.
    ``history``, when a list, receives the tokens of every step (one extra decode per step).
    """

    def __init__(self, steps=1, alpha=1.0, line_search=None):
        self.steps = steps
        self.alpha = alpha
        self.alphas = line_search  # list of step sizes, or None

    def __call__(self, model, enc, z, history=None):
        decoded = None
        if self.alphas is None:
            for _ in range(self.steps):
                z = model.score_step(enc, z, self.alpha)
                if history is not None:
                    history.append(model.decode(enc, z)[0])
            return z, decoded
        bsz, n_alpha = z.size(0), len(self.alphas)
        alphas = z.new_tensor(self.alphas).view(1, n_alpha, 1, 1)
        rows = torch.arange(bsz, device=z.device).repeat_interleave(n_alpha)
        enc_rep = select_rows(enc, rows)
        offset = torch.arange(bsz, device=z.device) * n_alpha
        for _ in range(self.steps):
            cand = (z.unsqueeze(1) + alphas * model.score(enc, z).unsqueeze(1)).flatten(0, 1)
            tokens, lprobs, lengths = model.decode(enc_rep, cand)
            best = offset + lprobs.sum(-1).view(bsz, n_alpha).argmax(-1)  # log p(y|z,x) per candidate
            z, decoded = cand[best], (tokens[best], lprobs[best], lengths[best])
            if history is not None:
                history.append(decoded[0])
        return z, decoded


class ScoreInferenceGenerator:
    """``fairseq-generate --task nar_translation --decoding score|energy``."""

    def __init__(self, tgt_dict, refiner: ScoreRefiner, retain_history=False, latent_search=None):
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.refiner = refiner
        self.retain_history = retain_history
        self.latent_search = latent_search  # a LatentRefinementGenerator driving ``refiner``, or None

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        model = models[0]
        model.eval()
        if self.latent_search is not None:
            return self.latent_search.generate(models, sample)
        net = sample["net_input"]
        enc = model.encode(net["src_tokens"], net["src_lengths"])
        z0, _ = model.prior(enc)
        history = [model.decode(enc, z0)[0]] if self.retain_history else None
        z, decoded = self.refiner(model, enc, z0, history)
        tokens, lprobs, _ = decoded if decoded is not None else model.decode(enc, z)
        steps = self.refiner.steps
        return [
            [make_hypothesis(tokens[i], lprobs[i], self.pad, self.eos, steps,
                             [h[i] for h in history] if history is not None else None)]
            for i in range(tokens.size(0))
        ]


def build_score_generator(task, model, gen_args, decoding):
    """The generator for ``--decoding score|energy``, configured from the task's options."""
    from nar_refine.models.inference_network import InferenceNetworkModel
    from nar_refine.tasks.nar_translation import NARConfigError

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
    cfg = task.cfg
    if cfg.score_steps < 0:
        raise NARConfigError("--score-steps must be >= 0")
    refiner = ScoreRefiner(cfg.score_steps, cfg.score_alpha, parse_step_sizes(cfg.score_line_search))
    return ScoreInferenceGenerator(
        task.target_dictionary, refiner,
        retain_history=getattr(gen_args, "retain_iter_history", False),
    )
