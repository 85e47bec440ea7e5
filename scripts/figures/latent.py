"""LaNMT latent chains and the ELBO of an output, from the models' own pieces.

The chains are the generators' update rules (``nar_refine/inference``) run for a fixed number
of steps, keeping every step:

    z_0 = mu_p(x)                           the prior mean
    delta:  y_k = argmax p(y|z_k,x),  z_{k+1} = E_q(z|x,y_k)[z]      (model.delta_step)
    score:  y_k = argmax p(y|z_k,x),  z_{k+1} = z_k + alpha S(z_k;x) (model.score_step)

so y_k is what ``fairseq-generate --decoding delta --iter-decode-max-iter k
--iter-decode-force-max-iter`` (or ``--decoding score --score-steps k``) prints.

ELBO of an output y at its delta posterior (the talk's "proxy lower bound"): with
mu = E_q(z|x,y)[z],

    ELBO(y) = log p(y|mu,x) + log p(T|mu,x) - KL(q(z|x,y) || p(z|x))
    J(y)    = log p(y|mu,x) + log p(T|mu,x) + log p(mu|x)

log p(y|mu,x) sums the token log-probabilities (full softmax) at y's length T, log p(T|mu,x)
is the length predictor's, and the KL and log p(mu|x) sum over the real source positions
(</s> included) and latent dimensions. Both depend on y and x only, so outputs of different
methods are compared on the same scale.
"""

import torch

from nar_refine.models.lanmt import gaussian_kl
from nar_refine.modules.parallel_transformer import lengths_to_padding_mask

METHODS = ("delta", "score", "energy")


def lanmt_of(model):
    """The LaNMT inside a score/energy network, or the model itself."""
    return getattr(model, "lanmt", model)


def chain(model, enc, method, max_steps, alpha=1.0):
    """Yield (k, z_k, tokens_k, lprobs_k, lengths_k) for k = 0 .. max_steps.

    ``method`` delta runs the LaNMT's delta steps, score/energy the network's score steps
    (``model`` is then the score_net/energy_net); tokens are pad-padded B x T."""
    mu, _ = model.prior(enc)
    z = mu
    for k in range(max_steps + 1):
        tokens, lprobs, lengths = model.decode(enc, z)
        yield k, z, tokens, lprobs, lengths
        if k == max_steps:
            break
        if method == "delta":
            z = model.posterior(enc, tokens)[0]
        else:
            z = model.score_step(enc, z, alpha)


def elbo_parts(lanmt, enc, tokens, lengths):
    """Per sentence (B, float): log p(y|mu,x), log p(T|mu,x), KL(q||p), log p(mu|x) at
    mu = E_q(z|x,y)[z], and ELBO / J built from them (module docstring)."""
    pad = lanmt.pad
    mu_q, sigma_q = lanmt.posterior(enc, tokens)
    mu_p, sigma_p = lanmt.prior(enc)
    keep = (~enc["padding_mask"]).unsqueeze(-1).float()
    kl = (gaussian_kl(mu_q, sigma_q, mu_p, sigma_p) * keep).sum((1, 2))
    log_prior = lanmt.log_prior(enc, mu_q, prior=(mu_p, sigma_p))
    logits = lanmt.decode_logits(enc, mu_q, lengths).float()
    lprobs = torch.log_softmax(logits, -1)
    width = min(lprobs.size(1), tokens.size(1))
    real = ~lengths_to_padding_mask(lengths, width)
    tok_lp = lprobs[:, :width].gather(-1, tokens[:, :width, None]).squeeze(-1)
    lp_y = (tok_lp * real.float()).sum(-1)
    len_logits = lanmt.length_logits(enc, mu_q)
    lp_len = lanmt.length_predictor.log_prob(len_logits, enc["length"], lengths[:, None])[:, 0]
    assert tokens[:, :width][real].ne(pad).all(), "a pad inside an output"
    return {"lp_y": lp_y, "lp_length": lp_len, "kl": kl, "log_prior": log_prior,
            "elbo": lp_y + lp_len - kl, "proxy": lp_y + lp_len + log_prior}


def project(points, mean, components):
    """N x d points -> N x 2 (PCA coordinates)."""
    return (points - mean) @ components.T


def pca(points):
    """(mean d, components 2 x d, explained variance ratios 2) of N x d points (fp64 SVD)."""
    x = points.double()
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    ratio = var / var.sum().clamp(min=1e-12)
    comps = vt[:2]
    if comps.size(0) < 2:  # a single latent dimension: pad the second axis
        comps = torch.cat([comps, torch.zeros_like(comps)])
        ratio = torch.cat([ratio, ratio.new_zeros(1)])
    # a fixed sign per axis (largest coordinate positive), so reruns draw the same picture
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    sign[sign == 0] = 1
    return mean.float(), (comps * sign[:, None]).float(), ratio[:2].float()
