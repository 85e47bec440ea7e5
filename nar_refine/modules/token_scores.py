"""Argmax tokens and their log-probabilities under the full softmax."""

import warnings

import torch

# Positions projected onto the vocabulary at a time by ``projected_argmax`` and
# ``projected_token_log_probs`` on a CPU: a block's logits (256 x 8k fp32, 8 MB) stay in cache
# from the projection to the softmax and the argmax, where a 4,096-token batch's (130 MB) go
# to memory and back for each.
ROW_BLOCK = 256


def argmax_log_probs(logits, banned=None):
    """Argmax tokens (``banned`` ids excluded) and their log-probabilities under the full
    softmax, the values of ``log_softmax(logits).index_fill(banned, -inf).max(-1)``.

    The log-probabilities come from one fused fp32 ``log_softmax`` (read at the argmax), the
    argmax from the logits themselves. ``torch.logsumexp`` would materialise ``logits - max``
    and exponentiate it in a second pass: 2x slower than ``log_softmax`` on one sentence's
    logits on a CPU, ~10x on ten sentences' (torch 2.13, one thread), for the same peak memory
    (one fp32 copy of the logits). ``logits`` is modified in place (the banned ids).

    In an ONNX export the argmax is ``exported_argmax``'s."""
    lp = torch.log_softmax(logits, -1, dtype=torch.float32)  # before the banned ids are filled
    tokens = argmax_tokens(logits, banned)
    return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), tokens


def argmax_tokens(logits, banned=None):
    """The tokens of ``argmax_log_probs`` without their log-probabilities (no softmax), for a
    decode whose scores nobody reads (an intermediate delta step). ``logits`` is modified in
    place (the banned ids)."""
    if torch.onnx.is_in_onnx_export():
        return exported_argmax(logits, banned)
    if banned is not None and banned.numel() > 0:
        logits = logits.index_fill_(-1, banned, float("-inf"))
    return vocab_argmax(logits)


def read_logits(logits, banned=None, scores=True):
    """(log-probabilities, tokens) of ``argmax_log_probs``; with ``scores=False`` (None,
    ``argmax_tokens``): no softmax."""
    return argmax_log_probs(logits, banned) if scores else (None, argmax_tokens(logits, banned))


def row_blocks(x):
    """Slices of ``ROW_BLOCK`` rows covering the rows of ``x`` (N x d) for a blocked read on a
    CPU; None where the rows are read in one piece (at most one block, a GPU, an ONNX export,
    torch.compile)."""
    n = x.size(0)
    if (n <= ROW_BLOCK or x.device.type != "cpu" or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()):
        return None
    return [slice(i, i + ROW_BLOCK) for i in range(0, n, ROW_BLOCK)]


def projected_argmax(hidden, projection, banned=None, scores=True):
    """``read_logits(projection(hidden), banned, scores)``, the vocabulary logits computed
    ``ROW_BLOCK`` positions at a time on a CPU (``row_blocks``), never all at once. Each
    position's argmax and log-probability are those of the one-block computation (a row of a
    matrix product reads its own row only; bit for bit with torch's CPU kernels, tested); in a
    batch of thousands of positions the blocks are faster (their logits stay in cache) and hold
    one block's logits instead of the batch's."""
    x = hidden.reshape(-1, hidden.size(-1))
    blocks = row_blocks(x)
    if blocks is None:
        return read_logits(projection(hidden), banned, scores)
    tokens = torch.empty(x.size(0), dtype=torch.long, device=x.device)
    lprobs = torch.empty(x.size(0), dtype=torch.float32, device=x.device) if scores else None
    for rows in blocks:
        lp, tokens[rows] = read_logits(projection(x[rows]), banned, scores)
        if scores:
            lprobs[rows] = lp
    shape = hidden.shape[:-1]
    return (lprobs.view(shape) if scores else None), tokens.view(shape)


def projected_token_log_probs(hidden, projection, target):
    """``log_softmax(projection(hidden), dtype=float32)`` read at ``target`` (the ids of every
    position), in the blocks of ``projected_argmax``: a teacher's score of given translations
    without the batch's logits in memory."""
    x, t = hidden.reshape(-1, hidden.size(-1)), target.reshape(-1, 1)
    blocks = row_blocks(x)
    if blocks is None:
        return torch.log_softmax(projection(hidden), -1, dtype=torch.float32).gather(
            -1, target.unsqueeze(-1)).squeeze(-1)
    return torch.cat([torch.log_softmax(projection(x[rows]), -1, dtype=torch.float32).gather(-1, t[rows])
                      for rows in blocks]).view(target.shape)


def vocab_argmax(logits):
    """``logits.argmax(-1)`` over a vocabulary axis, as chunk maxima (``chunked_argmax``) when
    the vocabulary has a suitable chunk size: torch's CPU argmax, like ONNX Runtime's, scans a
    row one element at a time, its ``amax`` is vectorised, so the chunked form is faster on a
    CPU (on other devices torch's own argmax is kept)."""
    size = chunk_size(logits.size(-1))
    if size is None or logits.device.type != "cpu":
        return logits.argmax(-1)
    return chunked_argmax(logits, size)


def chunk_size(vocab):
    """The divisor of ``vocab`` nearest its square root, within [16, 1024]; None if none."""
    best = None
    for c in range(16, min(vocab // 4, 1024) + 1):
        if vocab % c == 0 and (best is None or abs(c * c - vocab) < abs(best * best - vocab)):
            best = c
    return best


def exported_argmax(logits, banned=None):
    """argmax over the last axis of B x T x V logits (``banned`` ids excluded), written for
    ONNX Runtime, whose ArgMax scans a vocabulary row one element at a time (about 6x slower
    than its vectorised ReduceMax on 14 x 8k logits): the maximum of each chunk of C ids
    (ReduceMax), the first chunk holding the overall maximum, then the first id of that chunk
    holding it. The lowest id among equal values wins, as in argmax. Banned ids get an
    additive -inf (a constant of the graph) instead of a scatter into the logits."""
    vocab = logits.shape[-1]
    with warnings.catch_warnings():  # the vocabulary and the banned ids are constants of the model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        size = chunk_size(vocab)
        has_banned = banned is not None and banned.numel() > 0
    if has_banned:
        logits = logits + torch.zeros(vocab, dtype=logits.dtype).index_fill(0, banned.cpu(), float("-inf"))
    if size is None:
        return logits.topk(1, -1)[1].squeeze(-1)  # the same rule for ties (ONNX TopK)
    return chunked_argmax(logits, size)


def chunked_argmax(logits, size):
    """argmax over the last axis of ``logits`` (its length a multiple of ``size``): the maximum
    of each chunk of ``size`` ids, the first chunk holding the overall maximum, then the first
    id of that chunk holding it; the lowest id among equal values wins, as in argmax."""
    vocab = logits.shape[-1]
    chunks = logits.reshape(-1, size)  # (B*T*V/C) x C: a constant shape, nothing traced
    n = vocab // size
    first = chunks.amax(-1).reshape(-1, n).argmax(-1)  # B*T: the first chunk with the maximum
    rows = torch.arange(first.size(0), device=first.device) * n + first
    within = chunks.index_select(0, rows).argmax(-1)
    return (first * size + within).reshape(logits.shape[:-1])
