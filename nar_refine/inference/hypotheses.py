"""Turn decoded token matrices into fairseq-generate's hypothesis dicts (H-/D-/P-/I-/E- lines)."""

import torch


def strip_to_hypothesis(tokens, lprobs, pad, eos):
    """One row of B x T tokens/log-probs -> (tokens + </s>, positional scores)."""
    keep = tokens.ne(pad)
    toks = tokens[keep]
    scores = lprobs[keep]
    toks = torch.cat([toks, toks.new_tensor([eos])])
    scores = torch.cat([scores, scores.new_zeros(1)])
    return toks, scores


def make_hypothesis(tokens, lprobs, pad, eos, steps=0, history=None):
    """fairseq's hypothesis dict; ``score`` is the mean token log-probability."""
    toks, pos = strip_to_hypothesis(tokens, lprobs, pad, eos)
    n = max(int(tokens.ne(pad).sum()), 1)
    hypo = {
        "tokens": toks,
        "positional_scores": pos,
        "score": float(pos.sum()) / n,
        "alignment": None,
        "attention": None,
        "steps": steps,
    }
    if history is not None:
        hypo["history"] = [
            {"tokens": strip_to_hypothesis(h, torch.zeros_like(h, dtype=torch.float), pad, eos)[0]}
            for h in history
        ]
    return hypo
