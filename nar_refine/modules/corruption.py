"""Denoising corruptions of a target sentence (Lee et al. 2018, section 3.2).

Each non-pad position is corrupted with probability ``rate`` by one of the enabled
operations, chosen uniformly: ``swap`` (exchange with the next token), ``replace`` (a random
vocabulary token) or ``repeat`` (copy the previous token). Lengths never change, so the
corrupted sentence can be fed to a parallel decoder of the same length. Only torch's RNG is
used, which fairseq reseeds every update: resumed training corrupts exactly as before.
"""

import torch

from nar_refine.errors import NARConfigError

CORRUPTION_OPS = ("swap", "replace", "repeat")


def parse_corruptions(spec):
    """'swap,replace' -> ('swap', 'replace'); unknown names raise a NARConfigError that lists the valid ones."""
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in CORRUPTION_OPS]
    if unknown or not names:
        raise NARConfigError(
            f"unknown corruption(s) {unknown or spec!r}; choose a comma-separated subset of "
            f"{', '.join(CORRUPTION_OPS)}"
        )
    return names


def corrupt(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator=None):
    """Corrupt ``tokens`` (B x T, pads where ``padding_mask``) in place of a copy.

    ``rate``: probability that a position is corrupted; ``vocab_low``/``vocab_high``: range of
    ordinary symbols for ``replace``. Returns the corrupted B x T tensor.
    """
    if rate <= 0:
        return tokens.clone()
    out = tokens.clone()
    valid = ~padding_mask
    hit = (torch.rand(tokens.shape, device=tokens.device, generator=generator) < rate) & valid
    choice = torch.randint(len(ops), tokens.shape, device=tokens.device, generator=generator)
    op_masks = {op: hit & choice.eq(i) for i, op in enumerate(ops)}

    if "replace" in op_masks:
        m = op_masks["replace"]
        rand_tok = torch.randint(vocab_low, vocab_high, tokens.shape, device=tokens.device,
                                 generator=generator)
        out = torch.where(m, rand_tok, out)
    if "repeat" in op_masks:
        m = op_masks["repeat"].clone()
        m[:, 0] = False  # the first token has nothing before it
        prev = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        out = torch.where(m, prev, out)
    if "swap" in op_masks:
        m = op_masks["swap"].clone()
        # a swap needs a real next token; no two swaps may share a position
        next_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)
        m &= next_valid
        # in a run of consecutive swap positions keep every other one (greedy, left to
        # right), so that no position takes part in two swaps
        idx = torch.arange(m.size(1), device=m.device).expand_as(m)
        last_free = torch.where(m, torch.full_like(idx, -1), idx).cummax(dim=1).values
        m &= (idx - last_free - 1) % 2 == 0
        partner = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
        nxt = torch.cat([out[:, 1:], out[:, -1:]], dim=1)
        prv = torch.cat([out[:, :1], out[:, :-1]], dim=1)
        out = torch.where(m, nxt, torch.where(partner, prv, out))
    return out
