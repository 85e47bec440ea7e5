"""Argmax tokens and their log-probabilities without a full-vocabulary log-softmax copy."""

import torch


def argmax_log_probs(logits, banned=None):
    """Argmax tokens (``banned`` ids excluded) and their log-probabilities under the full
    softmax, the values of ``log_softmax(logits).index_fill(banned, -inf).max(-1)``, computed as
    max logit - logsumexp(logits) in fp32: no B x T x V log-softmax (nor a second, masked copy)
    is materialised. ``logits`` is modified in place when it is already fp32."""
    logits = logits.float()  # a copy only for half-precision logits
    lse = torch.logsumexp(logits, -1)
    if banned is not None and banned.numel() > 0:
        logits = logits.index_fill_(-1, banned, float("-inf"))
    best, tokens = logits.max(-1)
    return best - lse, tokens
