"""Latent search (Shu et al. 2020, sec. 3.3): several starting latents per sentence, one batch.

Each sentence gets m candidates laid out sentence-major (rows b*m .. b*m+m-1): candidate 0 is
the prior mean, the others mu + noise * sigma * eps. All B*m candidates are refined and decoded
together, scored (by an autoregressive teacher, or the NAT's own mean token log p(y|z,x)) and the best
candidate of each sentence is kept. Shared by every latent generator (prior, delta, score,
energy).
"""

import logging

import torch

from nar_refine.inference.teacher import TeacherScorer

logger = logging.getLogger(__name__)


def expand_rows(bsz, m, device):
    """Row index that repeats every sentence m times, sentence-major: [0]*m + [1]*m + ..."""
    return torch.arange(bsz, device=device).repeat_interleave(m)


def latent_candidates(mu, sigma, m, noise, generator=None):
    """B x S x d prior -> (B*m) x S x d candidates; candidate 0 of each sentence is mu."""
    mu_m = mu.repeat_interleave(m, dim=0)
    sigma_m = sigma.repeat_interleave(m, dim=0)
    eps = torch.randn(mu_m.shape, device=mu.device, dtype=mu.dtype, generator=generator)
    eps.view(mu.size(0), m, *mu.shape[1:])[:, 0] = 0.0
    return mu_m + noise * sigma_m * eps


def select_best(scores, m):
    """B*m candidate scores -> B row indices (into the B*m rows) of each sentence's best."""
    bsz = scores.numel() // m
    best = scores.view(bsz, m).argmax(-1)
    return best + torch.arange(bsz, device=scores.device) * m


class ModelScorer:
    """Scores a candidate by the NAT's own log p(y|z,x) per token: the mean of its token
    log-probs over its real (non-pad) tokens. The sum would favour short outputs (every token
    adds a negative term); lanmt-ebm ranks by the mean too."""

    name = "model log p(y|z,x) per token"

    def __init__(self, pad):
        self.pad = pad

    def __call__(self, src_tokens, src_lengths, tokens, lprobs, rows=None):
        lengths = tokens.ne(self.pad).sum(-1).clamp(min=1)
        return lprobs.float().sum(-1) / lengths


def build_candidate_scorer(task, model=None):
    """The teacher named by ``--teacher-path``, else the model's own likelihood (logged)."""
    path = getattr(task.cfg, "teacher_path", None)
    if path:
        return TeacherScorer.from_path(path, task, like=model)
    logger.info("latent search: no --teacher-path given, candidates are scored by the NAT's own "
                "log p(y|z,x) (mean token log-probability)")
    return ModelScorer(task.target_dictionary.pad())
