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
between steps, so J penalises a step that lengthens the output (toy measurements in
docs/measurements.md).

Each hypothesis reports, besides fairseq's fields, ``lp_y`` = log p(y|z,x) (sum of the token
log-probs of the argmax y at the predicted length), ``log_prior`` = log p(z|x), ``objective``
= their sum (the quantity delta inference climbs) and ``latent`` (its final z, S x d over the
real source positions, </s> included).
"""

import torch
import torch.nn.functional as F

from nar_refine.inference.distinct_rows import on_distinct_rows
from nar_refine.inference.hypotheses import best_hypotheses, candidate_tokens
from nar_refine.inference.latent_search import (build_candidate_scorer, expand_rows,
                                                latent_candidates, select_best)


class DeltaRefiner:
    """Delta-posterior inference in two halves, so that the generator runs the posterior only
    for the sentences that continue (a sentence whose y did not change, or whose step the
    ascent check undid, stops and its posterior would be wasted):

        decode_step:  y = argmax p(y|z,x)       -> (tokens, their log-probs)
        update_step:  z' = E_q(z|x,y)[z]        (the mean of the delta posterior)

    Called as ``refiner(model, enc, z)`` it is the model's whole ``delta_step``: (z', y,
    log-probs of y)."""

    def decode_step(self, model, enc, z, scores=True):
        tokens, lprobs, _ = model.decode(enc, z, scores=scores)
        return tokens, lprobs

    def update_step(self, model, enc, tokens):
        return model.posterior(enc, tokens)[0]

    def __call__(self, model, enc, z):
        z_next, tokens, lprobs, _ = model.delta_step(enc, z)
        return z_next, tokens, lprobs

    def direct_output(self, model, max_iter):
        """The model's one-call decoding for ``max_iter`` steps of this rule, or None."""
        return (model.delta_output, ()) if max_iter == 1 else None


delta_refiner = DeltaRefiner()


def same_rows(a, b, pad):
    """Per-row equality of two pad-padded token matrices of possibly different widths."""
    width = max(a.size(1), b.size(1))
    a = F.pad(a, (0, width - a.size(1)), value=pad)
    b = F.pad(b, (0, width - b.size(1)), value=pad)
    return a.eq(b).all(1)


class DecodeBuffer:
    """The decode (argmax tokens, their log-probs) of every row's current z, as pad-padded
    N x T tensors updated in place by row index; ``known[r]``: row r's current z is decoded.
    Widens (with pads) when a decode is longer than the buffer."""

    def __init__(self, n, device, pad):
        self.pad = pad
        self.tokens = torch.full((n, 1), pad, dtype=torch.long, device=device)
        self.lprobs = torch.zeros((n, 1), device=device)
        self.known = torch.zeros(n, dtype=torch.bool, device=device)

    def widen(self, width):
        extra = width - self.tokens.size(1)
        if extra > 0:
            self.tokens = F.pad(self.tokens, (0, extra), value=self.pad)
            self.lprobs = F.pad(self.lprobs, (0, extra), value=0.0)

    def put(self, rows, tokens, lprobs):
        self.widen(tokens.size(1))
        width = self.tokens.size(1)
        self.tokens[rows] = F.pad(tokens, (0, width - tokens.size(1)), value=self.pad)
        self.lprobs[rows] = F.pad(lprobs.float(), (0, width - lprobs.size(1)), value=0.0)
        self.known[rows] = True

    def copy_rows(self, rows, other, other_rows=None):
        """Rows ``rows`` <- rows ``other_rows`` (default the same) of another buffer."""
        other_rows = rows if other_rows is None else other_rows
        self.widen(other.tokens.size(1))
        other.widen(self.tokens.size(1))
        self.tokens[rows] = other.tokens[other_rows]
        self.lprobs[rows] = other.lprobs[other_rows]
        self.known[rows] = other.known[other_rows]

    def select(self, rows):
        out = DecodeBuffer.__new__(DecodeBuffer)
        out.pad, out.tokens, out.lprobs, out.known = self.pad, self.tokens[rows], self.lprobs[rows], self.known[rows]
        return out


class History:
    """``--retain-iter-history``: the tokens of every step, per row (host side; only when asked)."""

    def __init__(self, n, pad):
        self.pad = pad
        self.rows = [[] for _ in range(n)]

    def append(self, rows, tokens):
        tokens = tokens.cpu()
        for i, r in enumerate(rows.tolist()):
            self.rows[r].append(tokens[i])

    def finish(self, tokens):
        """The final tokens close every row's history unless its last step already holds them."""
        tokens = tokens.cpu()
        for r, steps in enumerate(self.rows):
            if not steps or not same_rows(steps[-1][None], tokens[r][None], self.pad):
                steps.append(tokens[r])


class RefineState:
    """What ``LatentRefinementGenerator.refine`` returns: z, steps per row, the decodes of the
    final z where a step already made them (``dec``), the history (or None) and ``unchecked``:
    (rows, their J before the last step, z before it, its decodes) for the ascent check of
    rows whose last step no decode has judged yet, or None."""

    def __init__(self, z, steps, dec, history, unchecked):
        self.z, self.steps, self.dec, self.history, self.unchecked = z, steps, dec, history, unchecked


def latent_hypotheses(gen, best, tokens, lprobs, steps, lp_y, log_prior, z, padding_mask, scores,
                      history):
    """LaNMT-family hypotheses (``best_hypotheses``): log p(y|z,x), log p(z|x), their sum (the
    objective delta inference climbs), the latent z of the output, the search score, and with
    ``keep_candidates`` every latent candidate."""
    lpy, lpr, zz, pm = (t.index_select(0, best).cpu() for t in (lp_y, log_prior, z, padding_mask))
    sc = scores.cpu() if scores is not None else None
    if gen.keep_candidates:
        all_tok, all_lpy, all_lpr = tokens.cpu(), lp_y.cpu(), log_prior.cpu()
    m = gen.search_size

    def extra(b, r):
        fields = dict(lp_y=float(lpy[b]), log_prior=float(lpr[b]), objective=float(lpy[b] + lpr[b]),
                      latent=zz[b][~pm[b]])
        if sc is not None:
            fields["search_score"] = float(sc[r])
        return fields

    return best_hypotheses(
        best, tokens, lprobs, steps, gen.pad, gen.eos,
        history=(lambda b, r, n: history.rows[r]) if history is not None else None,
        extra=extra,
        candidates=(lambda b: [
            {"tokens": candidate_tokens(all_tok[c], gen.pad),
             "score": float(sc[c]) if sc is not None else None,
             "lp_y": float(all_lpy[c]), "log_prior": float(all_lpr[c])}
            for c in range(b * m, (b + 1) * m)]) if gen.keep_candidates else None,
    )


class LatentRefinementGenerator:
    def __init__(self, tgt_dict, refiner=None, max_iter=0, adaptive=True, search_size=1,
                 search_noise=0.5, scorer=None, retain_history=False, keep_candidates=False,
                 ascent_check=False, grad_free=True, max_search_tokens=0):
        """``refiner`` None or ``max_iter`` 0 decodes z_0 directly (the ``prior`` decoding).

        ``search_size`` m > 1 starts from m candidates per sentence and keeps the one that
        ``scorer(src_tokens, src_lengths, tokens, lprobs, rows=None) -> scores`` ranks first
        (``rows``: the sentence of every candidate row, when ``src_tokens`` has one row per
        sentence); ``keep_candidates`` stores all of them in ``hypo["candidates"]``.
        ``max_search_tokens`` > 0: the B*m candidates are decoded in chunks of whole sentences
        of at most that many candidate source tokens (memory; one chunk when 0).
        ``ascent_check``: for refiners that also return the token log-probs of the z they were
        given, a step is undone (and the sentence stops) when it lowered the objective
        log p(y|z,x) + log p(z|x), so the result is never worse than the starting latent's.
        ``grad_free``: decode under ``torch.inference_mode`` (False for the energy network,
        whose score is an autograd gradient).
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
        self.grad_free = grad_free
        self.max_search_tokens = max_search_tokens

    def _context(self):
        return torch.inference_mode() if self.grad_free else torch.no_grad()

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        model = models[0]
        model.eval()
        net = sample["net_input"]
        src_tokens, src_lengths = net["src_tokens"], net["src_lengths"]
        bsz, m = src_tokens.size(0), self.search_size
        chunk = bsz
        if m > 1 and self.max_search_tokens > 0:
            chunk = max(1, self.max_search_tokens // (m * src_tokens.size(1)))
        if chunk >= bsz:
            return self._generate(model, src_tokens, src_lengths)
        hypos = []
        for start in range(0, bsz, chunk):
            part = slice(start, start + chunk)
            hypos.extend(self._generate(model, src_tokens[part], src_lengths[part]))
        return hypos

    def direct_output(self, model):
        """(method, extra arguments) of the model's one-call decoding of this configuration
        (source to output: one exported pass), or None: one latent per sentence, no history
        or ascent check, and a chain the model has one for (prior mean; one delta or score
        step). The same computation as the step loop."""
        if self.search_size > 1 or self.retain_history or self.ascent_check or self.keep_candidates:
            return None
        if self.max_iter == 0:
            return model.prior_output, ()
        direct = getattr(self.refiner, "direct_output", None)
        return direct(model, self.max_iter) if direct is not None else None

    def _generate(self, model, src_tokens, src_lengths):
        bsz, m = src_tokens.size(0), self.search_size
        direct = self.direct_output(model)
        if direct is not None:
            with self._context():
                method, extra = direct
                tokens, lprobs, z, log_prior, padding_mask = method(src_tokens, src_lengths, *extra)
                steps = torch.full((bsz,), self.max_iter, dtype=torch.long, device=tokens.device)
            return latent_hypotheses(self, torch.arange(bsz, device=tokens.device), tokens, lprobs,
                                     steps, lprobs.sum(-1), log_prior, z, padding_mask, None, None)
        with self._context():
            enc = model.encode(src_tokens, src_lengths)
            mu, sigma = model.prior(enc)
            rows = None
            if m > 1:
                rows = expand_rows(bsz, m, src_tokens.device)
                z = latent_candidates(mu, sigma, m, self.search_noise)
                enc, mu, sigma = enc.index(rows), mu[rows], sigma[rows]
            else:
                z = mu

            state = self.refine(model, enc, z, (mu, sigma), groups=rows)
            z, steps, dec = state.z, state.steps, state.dec
            # decode only the rows whose final z has not been decoded yet (one softmax, one
            # batch), and each distinct (sentence, z) of them once
            need = (~dec.known).nonzero().squeeze(1)
            if need.numel() > 0:
                z_need = z[need]
                t, lp = self._distinct(lambda e, zz: model.decode(e, zz)[:2], rows, need, (z_need,),
                                       enc.index(need), z_need)
                dec.put(need, t, lp)
            log_prior = model.log_prior(enc, z, prior=(mu, sigma))
            if state.unchecked is not None:
                # the last step of rows that ran out of steps is judged now, by their final decode
                urows, obj_before, z_before, dec_before = state.unchecked
                worse = (dec.lprobs[urows].sum(-1) + log_prior[urows]) < obj_before
                back = urows[worse]
                z[back], steps[back] = z_before[worse], steps[back] - 1
                dec.copy_rows(back, dec_before, worse.nonzero().squeeze(1))
                log_prior[back] = model.log_prior(enc.index(back), z[back], prior=(mu[back], sigma[back]))
            tokens, lprobs = dec.tokens, dec.lprobs
            lp_y = lprobs.sum(-1)
            if m > 1:
                scores = self.scorer(src_tokens, src_lengths, tokens, lprobs, rows=rows).float()
                best = select_best(scores, m)
            else:
                scores, best = None, torch.arange(bsz, device=tokens.device)
            if state.history is not None:
                state.history.finish(tokens)
        # outside inference_mode: the hypotheses are ordinary tensors (fairseq-generate and
        # callers may update them in place)
        return latent_hypotheses(self, best, tokens, lprobs, steps, lp_y, log_prior, z,
                                 enc["padding_mask"], scores, state.history)

    @staticmethod
    def _distinct(fn, groups, index, keys, *rows):
        """``fn(*rows)`` for the candidate rows ``index`` (of the B*m), computed once per distinct
        (sentence, keys) among them when ``groups`` (each candidate's sentence) is given."""
        if groups is None:
            return fn(*rows)
        return on_distinct_rows(fn, (groups[index], *keys), *rows)

    def refine(self, model, enc, z, prior, groups=None):
        """Apply the refiner up to ``max_iter`` times to all rows, stopped rows leaving the
        batch; every update is a tensor operation on row indices. Returns a ``RefineState``.
        ``groups``: the sentence of every row (latent search), so that the delta posterior of
        candidates of one sentence that decoded alike is computed once."""
        n = z.size(0)
        z = z.clone()
        mu, sigma = prior
        steps = torch.zeros(n, dtype=torch.long, device=z.device)
        history = History(n, self.pad) if self.retain_history else None
        dec = DecodeBuffer(n, z.device, self.pad)          # decode of each row's current z
        dec_before = DecodeBuffer(n, z.device, self.pad)   # decode of each row's previous z
        obj_before = torch.full((n,), float("-inf"), device=z.device)  # J of each row's previous z
        z_before = z.clone()
        active = torch.arange(n, device=z.device)
        prev = None  # tokens of the active rows at the previous step
        checked = False
        two_phase = hasattr(self.refiner, "decode_step")
        for _ in range(self.max_iter):
            if active.numel() == 0:
                break
            sub = enc.index(active)
            z_a = z[active]
            if two_phase:
                z_next = None
                # the token log-probs serve the rows that stop at this step (their decode is
                # final) and the ascent check; a row can stop here only with one of them
                can_stop = self.ascent_check or (self.adaptive and prev is not None)
                toks, lps = self.refiner.decode_step(model, sub, z_a, scores=can_stop)
            else:
                out = self.refiner(model, sub, z_a)
                z_next, toks = out[0], out[1]
                lps = out[2] if len(out) > 2 else None
            if lps is not None:
                dec.put(active, toks, lps)
            go = torch.ones(active.numel(), dtype=torch.bool, device=z.device)
            if self.ascent_check and lps is not None:
                checked = True
                obj = lps.float().sum(-1) + model.log_prior(sub, z_a, prior=(mu[active], sigma[active]))
                worse = obj < obj_before[active]
                back = active[worse]  # the previous step lowered J: undo it, stop the sentence
                z[back], steps[back] = z_before[back], steps[back] - 1
                dec.copy_rows(back, dec_before)
                obj_before[active] = torch.where(worse, obj_before[active], obj)
                go &= ~worse
            if toks is None and history is not None:
                toks = model.decode(sub, z_a, scores=False)[0]  # a decode; only when asked
            if history is not None:
                history.append(active[go], toks[go])
            if self.adaptive and toks is not None and prev is not None:
                # y_k == y_{k-1}: this z already yields a fixed point; keep it, drop the row
                go &= ~same_rows(toks, prev, self.pad)
            keep = go.nonzero().squeeze(1)
            moving = active[keep]
            if z_next is None:  # the posterior of the continuing rows only, once per distinct y
                if keep.numel() > 0:
                    toks_k = toks[keep]
                    z_next = self._distinct(lambda e, y: self.refiner.update_step(model, e, y),
                                            groups, moving, (toks_k,), sub.index(keep), toks_k)
                else:
                    z_next = z.new_zeros((0,) + z.shape[1:])
            else:
                z_next = z_next[keep]
            dec_before.copy_rows(moving, dec)
            dec.known[moving] = False
            z_before[moving] = z[moving]
            z[moving] = z_next.to(z.dtype)
            steps[moving] += 1
            active, prev = moving, (toks[keep] if toks is not None else None)
        unchecked = None
        if checked and active.numel() > 0:
            unchecked = (active, obj_before[active], z_before[active], dec_before.select(active))
        return RefineState(z, steps, dec, history, unchecked)


def build_latent_generator(task, model, gen_args, refiner=None, max_iter=0, adaptive=True,
                           ascent_check=False, grad_free=True):
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
        grad_free=grad_free,
        max_search_tokens=int(getattr(task.cfg, "latent_search_max_tokens", 0) or 0),
    )
