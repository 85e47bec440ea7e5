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


def best_hypotheses(best, tokens, lprobs, steps, pad, eos, history=None, extra=None, candidates=None):
    """fairseq's ``[[hypo]]`` for the ``best`` row of every sentence, built on the host after one
    transfer per tensor (no per-sentence device work); both generators' outputs go through here.

    ``history(b, r, steps)``: the rows of sentence ``b``'s refinement history (``r`` its row in
    ``tokens``) or None; ``extra(b, r)``: the family's own fields (a dict); ``candidates(b)``:
    the list stored as ``hypo["candidates"]`` (``keep_candidates``), or None for none.
    """
    best_list = best.tolist()
    tok, lp, st = (t.index_select(0, best).cpu() for t in (tokens, lprobs, steps))
    hypos = []
    for b, r in enumerate(best_list):
        n = int(st[b])
        hypo = make_hypothesis(tok[b], lp[b], pad, eos, n, history(b, r, n) if history is not None else None)
        if extra is not None:
            hypo.update(extra(b, r))
        if candidates is not None:
            hypo["candidates"] = candidates(b)
        hypos.append([hypo])
    return hypos


def candidate_tokens(tokens, pad):
    """One host row of a candidate matrix without its padding."""
    return tokens[tokens.ne(pad)]


def remove_repeats(hypo):
    """Drop every token equal to the one before it (``--remove-repeats``), in place: the
    post-processing of the papers' evaluations (dl4mt-nonauto's ``--remove_repeats``; lanmt and
    lanmt-ebm always do it), applied to subword tokens before detokenisation. The positional
    scores of the kept tokens stay, and ``score`` becomes their mean; the refinement history
    (E- lines) is left as decoded."""
    toks = hypo["tokens"]
    if toks.numel() < 2:
        return hypo
    keep = torch.ones_like(toks, dtype=torch.bool)
    keep[1:] = toks[1:].ne(toks[:-1])
    if bool(keep.all()):
        return hypo
    hypo["tokens"] = toks[keep]
    pos = hypo.get("positional_scores")
    if pos is not None and pos.numel() == toks.numel():
        pos = pos[keep]
        hypo["positional_scores"] = pos
        n = max(int(hypo["tokens"].numel()) - 1, 1)  # tokens without the final </s>
        hypo["score"] = float(pos.sum()) / n
    return hypo
