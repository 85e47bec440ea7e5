"""Decoding by refining a continuous latent z, then one final decode (LaNMT and its successors).

    z_0 = mu_p(x)                       (or m latent-search candidates per sentence)
    z_{k+1}, y_k = refiner(model, enc, z_k)       k < max_iter
    y = argmax p(y | z_K, x)                     the final z, decoded once (not again when a
                                                 refiner step already decoded it)

``refiner(model, enc, z) -> (z_next, tokens_or_None)`` (optionally a third element: the token
log-probs of those tokens) is the inference rule: ``delta_refiner`` (delta-posterior
inference, Shu et al. 2020), and the score/energy networks (Lee, Shu & Cho 2020) add theirs.
When a refiner returns the tokens of the z it was given, the generator can stop a sentence
adaptively as soon as they stop changing (it then leaves the batch) and keep them as the
refinement history; refiners that never decode (tokens None) cost no softmax until the final
decode, unless the history is asked for.

``delta`` runs the reference's plain chain: y_k = argmax p(y|z_k,x), z_{k+1} = E_q(z|x,y_k)[z],
stopping a sentence once y_k == y_{k-1} (or after ``--iter-decode-max-iter`` steps).

Ascent check (opt-in, ``--delta-ascent-check``): when the refiner also returns log-probs, the
generator knows J(z_k) = log p(y_k|z_k,x) + log p(z_k|x) for free and undoes a step that
lowered J (the sentence then stops), so J never falls below the prior mean's. It is not the
default because the plain chain is no ascent method on J and J is a poor judge of a step: its
z-step goes to the posterior mean, not to argmax_z J(y, z), its first step leaves the prior
mean, the maximum of log p(z|x), and log p(y|z,x) sums token log-probs over lengths that change
between steps, so J penalises a step that lengthens the output (on Multi30k the check undid
68% of first steps). Measured with tiny models (lanmt_tiny, 250 updates): on the deterministic
toy task (y a function of x, z unused) the plain chain ends below the prior mean's J for 60/60
test sentences, with y unchanged in 59; on the two-style toy task of tests/test_lanmt.py it
raises the mean J (-66.1 -> -65.3) but some step lowers J for 26/60 sentences (mostly the step
that confirms an unchanged y), and it ends below the prior mean's J for 8/60.

Each hypothesis reports, besides fairseq's fields, ``lp_y`` = log p(y|z,x) (sum of the token
log-probs of the argmax y at the predicted length), ``log_prior`` = log p(z|x), ``objective``
= their sum (the quantity delta inference climbs) and ``latent`` (its final z, S x d over the
real source positions, </s> included).
"""

import torch
from torch.nn.utils.rnn import pad_sequence

from nar_refine.inference.hypotheses import make_hypothesis
from nar_refine.inference.latent_search import (build_candidate_scorer, expand_rows,
                                                latent_candidates, select_best)


def delta_refiner(model, enc, z):
    """Delta-posterior step: y = argmax p(y|z,x), z' = E_q(z|x,y)[z]; returns (z', y, lprobs of y)."""
    z_next, tokens, lprobs, _ = model.delta_step(enc, z)
    return z_next, tokens, lprobs


def same_rows(a, b, pad):
    """Per-row equality of two pad-padded token matrices of possibly different widths."""
    width = max(a.size(1), b.size(1))
    a = torch.nn.functional.pad(a, (0, width - a.size(1)), value=pad)
    b = torch.nn.functional.pad(b, (0, width - b.size(1)), value=pad)
    return a.eq(b).all(1)


class LatentRefinementGenerator:
    def __init__(self, tgt_dict, refiner=None, max_iter=0, adaptive=True, search_size=1,
                 search_noise=0.5, scorer=None, retain_history=False, keep_candidates=False,
                 ascent_check=False):
        """``refiner`` None or ``max_iter`` 0 decodes z_0 directly (the ``prior`` decoding).

        ``search_size`` m > 1 starts from m candidates per sentence and keeps the one that
        ``scorer(src_tokens, src_lengths, tokens, lprobs) -> scores`` ranks first;
        ``keep_candidates`` stores all of them in ``hypo["candidates"]`` (for inspection).
        ``ascent_check``: for refiners that also return the token log-probs of the z they were
        given, a step is undone (and the sentence stops) when it lowered the objective
        log p(y|z,x) + log p(z|x), so the result is never worse than the starting latent's.
        """
        if search_size > 1 and scorer is None:
            raise ValueError("latent search needs a candidate scorer")
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.refiner = refiner
        self.max_iter = max_iter if refiner is not None else 0
        self.adaptive = adaptive
        self.search_size = max(1, search_size)
        self.search_noise = search_noise
        self.scorer = scorer
        self.retain_history = retain_history
        self.keep_candidates = keep_candidates
        self.ascent_check = ascent_check

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        model = models[0]
        model.eval()
        net = sample["net_input"]
        src_tokens, src_lengths = net["src_tokens"], net["src_lengths"]
        bsz, m = src_tokens.size(0), self.search_size
        enc = model.encode(src_tokens, src_lengths)
        mu, sigma = model.prior(enc)
        if m > 1:
            rows = expand_rows(bsz, m, src_tokens.device)
            enc, src_tokens, src_lengths = enc.index(rows), src_tokens[rows], src_lengths[rows]
            z = latent_candidates(mu, sigma, m, self.search_noise)
        else:
            z = mu

        z, steps, history, dec, unchecked = self.refine(model, enc, z)
        # decode only the rows whose final z has not been decoded yet (one softmax, one batch)
        need = [r for r, d in enumerate(dec) if d is None]
        if need:
            idx = torch.tensor(need, device=z.device)
            t, lp, _ = model.decode(enc.index(idx), z[idx])
            for i, r in enumerate(need):
                dec[r] = (t[i], lp[i])
        log_prior = model.log_prior(enc, z)
        if unchecked is not None:
            # the last step of rows that ran out of steps is judged now, by their final decode
            rows, obj_before, z_before, dec_before = unchecked
            lp_rows = torch.stack([dec[r][1].sum() for r in rows.tolist()])
            worse = (lp_rows + log_prior[rows]) < obj_before
            back = rows[worse]
            if back.numel() > 0:
                z[back], steps[back] = z_before[worse], steps[back] - 1
                for i, r in zip(worse.nonzero().flatten().tolist(), back.tolist()):
                    dec[r] = dec_before[i]
                log_prior[back] = model.log_prior(enc.index(back), z[back])
        tokens = pad_sequence([d[0] for d in dec], batch_first=True, padding_value=self.pad)
        lprobs = pad_sequence([d[1] for d in dec], batch_first=True, padding_value=0.0)
        lp_y = lprobs.sum(-1)
        if history is not None:
            for r in range(tokens.size(0)):
                if not history[r] or not same_rows(history[r][-1][None], tokens[r][None], self.pad):
                    history[r].append(tokens[r])

        if m > 1:
            scores = self.scorer(src_tokens, src_lengths, tokens, lprobs).float()
            best = select_best(scores, m)
        else:
            scores, best = None, torch.arange(bsz, device=tokens.device)

        hypos = []
        for b, r in enumerate(best.tolist()):
            hypo = make_hypothesis(tokens[r], lprobs[r], self.pad, self.eos, int(steps[r]),
                                   history[r] if history is not None else None)
            hypo.update(lp_y=float(lp_y[r]), log_prior=float(log_prior[r]),
                        objective=float(lp_y[r] + log_prior[r]),
                        latent=z[r][~enc["padding_mask"][r]])
            if scores is not None:
                hypo["search_score"] = float(scores[r])
            if self.keep_candidates:
                hypo["candidates"] = [
                    {"tokens": tokens[c][tokens[c].ne(self.pad)],
                     "score": float(scores[c]) if scores is not None else None,
                     "lp_y": float(lp_y[c]), "log_prior": float(log_prior[c])}
                    for c in range(b * m, (b + 1) * m)
                ]
            hypos.append([hypo])
        return hypos

    def refine(self, model, enc, z):
        """Apply the refiner up to ``max_iter`` times.

        Returns (z, steps per row, history or None, decodes, unchecked or None). ``decodes[r]``
        is (tokens, token log-probs) of row r's final z when a refiner step already decoded it
        (the sentence stopped there), else None. ``unchecked`` = (rows, their J before the last
        step, z before it, its decodes) for the ascent check of rows whose last step no decode
        has judged yet.
        """
        n = z.size(0)
        z = z.clone()
        steps = torch.zeros(n, dtype=torch.long, device=z.device)
        history = [[] for _ in range(n)] if self.retain_history else None
        dec = [None] * n  # decode of each row's current z, when known
        dec_before = [None] * n  # decode of each row's previous z
        obj_before = torch.full((n,), float("-inf"), device=z.device)  # J of each row's previous z
        z_before = z.clone()
        active = torch.arange(n, device=z.device)
        prev = None  # tokens of the active rows at the previous step
        checked = False
        for _ in range(self.max_iter):
            if active.numel() == 0:
                break
            rows = active.tolist()
            sub = enc.index(active)
            out = self.refiner(model, sub, z[active])
            z_next, toks = out[0], out[1]
            lps = out[2] if len(out) > 2 else None
            if lps is not None:
                for i, r in enumerate(rows):
                    dec[r] = (toks[i], lps[i])
            go = torch.ones(active.numel(), dtype=torch.bool, device=z.device)
            if self.ascent_check and lps is not None:
                checked = True
                obj = lps.float().sum(-1) + model.log_prior(sub, z[active])
                worse = obj < obj_before[active]
                back = active[worse]  # the previous step lowered J: undo it, stop the sentence
                z[back], steps[back] = z_before[back], steps[back] - 1
                for r in back.tolist():
                    dec[r] = dec_before[r]
                obj_before[active] = torch.where(worse, obj_before[active], obj)
                go &= ~worse
            if toks is None and history is not None:
                toks = model.decode(sub, z[active])[0]  # costs a softmax; only when asked
            if history is not None:
                for i, r in enumerate(rows):
                    if go[i]:
                        history[r].append(toks[i])
            if self.adaptive and toks is not None and prev is not None:
                # y_k == y_{k-1}: this z already yields a fixed point; keep it, drop the row
                go &= ~same_rows(toks, prev, self.pad)
            moving = active[go]
            for r in moving.tolist():
                dec_before[r], dec[r] = dec[r], None
            z_before[moving] = z[moving]
            z[moving] = z_next[go].to(z.dtype)
            steps[moving] += 1
            active, prev = moving, (toks[go] if toks is not None else None)
        unchecked = None
        if checked and active.numel() > 0:
            unchecked = (active, obj_before[active], z_before[active],
                         [dec_before[r] for r in active.tolist()])
        return z, steps, history, dec, unchecked


def build_latent_generator(task, model, gen_args, refiner=None, max_iter=0, adaptive=True,
                           ascent_check=False):
    """A ``LatentRefinementGenerator`` configured from the task's and fairseq's options
    (``--latent-search-size/-noise``, ``--teacher-path``, ``--retain-iter-history``)."""
    m = max(1, int(getattr(task.cfg, "latent_search_size", 1) or 1))
    return LatentRefinementGenerator(
        task.target_dictionary,
        refiner=refiner,
        max_iter=max_iter,
        adaptive=adaptive,
        search_size=m,
        search_noise=getattr(task.cfg, "latent_search_noise", 0.5),
        scorer=build_candidate_scorer(task, model) if m > 1 else None,
        retain_history=getattr(gen_args, "retain_iter_history", False),
        ascent_check=ascent_check,
    )
