"""Denoising corruptions of a target sentence (Lee et al. 2018, section 3.2).

Operations: ``repeat`` (the token at p also overwrites p+1: "repeat and drop the next"),
``replace`` (a random vocabulary token at p) and ``swap`` (exchange p and p+1). Lengths never
change, so the corrupted sentence feeds a parallel decoder of the same length.

Two ways to choose what is corrupted (``--corruption-count``):

* ``exact`` (default, as the reference code ``utils.corrupt_target``): exactly
  ``max(floor(rate * T), 1)`` distinct positions per sentence of T tokens, each given one
  operation drawn uniformly, applied **one after another** in random order to the sentence as
  it stands. No denoising input is the clean reference (so the refiner is never taught to
  copy), and consecutive repeats compound into runs ("etwas etwas etwas"), as in real outputs.
* ``independent`` (nar_refine < 0.3): each position corrupted with probability ``rate``, all
  operations read one snapshot; at low rates many inputs come out clean and runs of three or
  more repeats never occur.

Only torch's RNG is used, which fairseq reseeds every update: resumed training corrupts
exactly as before.
"""

import torch

from nar_refine.errors import NARConfigError

CORRUPTION_OPS = ("swap", "replace", "repeat")
COUNT_MODES = ("exact", "independent")


def repeated_positions(tokens, pad):
    """B x T bool: the positions whose token equals the one before it (pads never): what
    ``--refine-repeats mask`` decoding and ``--refine-mask-repeats`` training hide from
    decoder 2."""
    prev = torch.cat([tokens.new_full((tokens.size(0), 1), pad), tokens[:, :-1]], 1)
    return tokens.eq(prev) & tokens.ne(pad)


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


def corrupt(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator=None, count="exact"):
    """Corrupt a copy of ``tokens`` (B x T, pads where ``padding_mask``); see the module doc.

    ``rate``: share of positions corrupted (``exact``) or per-position probability
    (``independent``); ``vocab_low``/``vocab_high``: range of ordinary symbols for ``replace``.
    """
    if count == "exact":
        return corrupt_exact(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator)
    if count != "independent":
        raise NARConfigError(f"unknown corruption count {count!r}; choose one of {', '.join(COUNT_MODES)}")
    return corrupt_independent(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator)


def corrupt_exact(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator=None):
    """Exactly max(floor(rate*T), 1) positions per row, operations applied in sequence.

    Positions are drawn without replacement from 0..T-2 (every operation then has a next
    token; a one-token row can only be replaced), in random order; step i applies row b's i-th
    operation to the row as the earlier steps left it. Vectorised over rows: the loop runs
    over the largest count in the batch (a few dozen steps), not over sentences.
    """
    out = tokens.clone()
    if rate <= 0:
        return out
    bsz, width = tokens.shape
    dev = tokens.device
    lengths = (~padding_mask).long().sum(1)
    # candidate start positions 0..T-2 (0 for one-token rows), in a random order per row
    span = (lengths - 1).clamp(min=1)
    keys = torch.rand((bsz, width), device=dev, generator=generator)
    pos_idx = torch.arange(width, device=dev)[None, :]
    keys = keys.masked_fill(pos_idx >= span[:, None], 2.0)  # invalid positions sort last
    order = keys.argsort(1)
    counts = torch.floor(rate * lengths.float()).long().clamp(min=1)
    counts = torch.minimum(counts, span).masked_fill(lengths.eq(0), 0)
    op_ids = {op: i for i, op in enumerate(ops)}
    choice = torch.randint(len(ops), (bsz, width), device=dev, generator=generator)
    rand_tok = torch.randint(vocab_low, vocab_high, (bsz, width), device=dev, generator=generator)
    rows = torch.arange(bsz, device=dev)
    for i in range(int(counts.max()) if bsz else 0):
        live = counts > i
        p = order[:, i]
        nxt = (p + 1).clamp(max=width - 1)
        has_next = (p + 1) < lengths
        op = choice[:, i]
        cur, after = out[rows, p], out[rows, nxt]
        new_p, new_next = cur, after
        if "replace" in op_ids:
            m = live & op.eq(op_ids["replace"])
            new_p = torch.where(m, rand_tok[:, i], new_p)
        if "repeat" in op_ids:
            m = live & op.eq(op_ids["repeat"]) & has_next
            new_next = torch.where(m, cur, new_next)
        if "swap" in op_ids:
            m = live & op.eq(op_ids["swap"]) & has_next
            new_p = torch.where(m, after, new_p)
            new_next = torch.where(m, cur, new_next)
        # a one-token row drawn for repeat/swap is replaced instead (it must not stay clean)
        lone = live & ~has_next & ~op.eq(op_ids.get("replace", -1))
        new_p = torch.where(lone, rand_tok[:, i], new_p)
        out[rows, nxt] = torch.where(has_next, new_next, out[rows, nxt])
        out[rows, p] = new_p
    return out


def corrupt_independent(tokens, padding_mask, rate, ops, vocab_low, vocab_high, generator=None):
    """Each non-pad position corrupted with probability ``rate`` from one snapshot."""
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
