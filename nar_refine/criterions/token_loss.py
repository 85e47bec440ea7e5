"""Masked, label-smoothed token NLL shared by the nar_refine criteria (nat_loss's contract)."""

import math

import torch
import torch.nn.functional as F
from fairseq import metrics


def masked_token_loss(logits, target, mask, label_smoothing=0.0):
    """Summed (loss, nll) over positions where ``mask`` is True. logits: B x T x V."""
    lprobs = F.log_softmax(logits.float(), dim=-1)[mask]
    tgt = target[mask]
    nll = -lprobs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        smooth = -lprobs.mean(-1)
        loss = (1 - label_smoothing) * nll + label_smoothing * smooth
    else:
        loss = nll
    return loss.sum(), nll.sum()


def log_terms(logging_outputs, keys, denominator_key="sample_size", base2=True):
    """Log each summed term as a fairseq metric, per ``denominator_key`` (in bits if base2)."""
    denom = sum(log.get(denominator_key, 0) for log in logging_outputs)
    scale = math.log(2) if base2 else 1.0
    for key in keys:
        total = sum(log.get(key, 0) for log in logging_outputs)
        metrics.log_scalar(key, total / max(denom, 1) / scale, denom, round=3)


def log_accuracy(logging_outputs, key, denominator_key="nsentences"):
    """Log a summed count (e.g. correctly predicted lengths) as a fraction of ``denominator_key``."""
    denom = sum(log.get(denominator_key, 0) for log in logging_outputs)
    total = sum(log.get(key, 0) for log in logging_outputs)
    metrics.log_scalar(key, total / max(denom, 1), denom, round=3)


def stat(x):
    """A logged statistic, left on its device: fairseq sums the logging outputs (tensors or
    numbers) and moves them to the host once, when it logs. Calling ``.item()`` here would
    stall the GPU between the forward and the backward pass, once per statistic."""
    return x.detach() if torch.is_tensor(x) else x
