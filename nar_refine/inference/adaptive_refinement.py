"""Discrete iterative refinement decoding with adaptive stopping (Lee et al. 2018, sec. 4).

1. predict the length (or ``length_beam`` lengths around the best one);
2. decoder 1 gives y^0;
   (with shortening, ``--target-eos-slack S``, on a canvas 1 + ceil(S/2) positions longer);
3. decoder 2 refines y^{l-1} -> y^l, at most ``max_iter`` times; with ``adaptive`` a sentence
   stops, and leaves the batch, once it has converged (below);
4. with shortening, each output ends at its first </s>;
5. among the length candidates keep the best by mean token log-probability plus the length
   log-probability log p(T|x) (the mean alone prefers short outputs: every position of a
   too-short copy can still be confident); with a ``scorer`` (``--teacher-path``: an
   autoregressive teacher, sum of log p_AR(y|x) over the tokens and </s>) the candidates are
   reranked by it instead, all B x L of them in one batched forward pass, as fairseq's
   ``--iter-decode-with-external-reranker`` and LaNMT's rescoring do.

Convergence. Decoder 2 reads the previous hidden state as well as the previous tokens, so
y^l == y^{l-1} is *not* a fixed point: the hidden state can still move and change the tokens
a step later. fairseq's rule (stop at the first unchanged step, right for its token-only NAT)
therefore stops too early. As the reference (``equality_converged``, ``--adaptive_window``),
a sentence stops when its output repeats within a window: after step l it counts as *stale*
when y^l equals one of the ``window`` outputs before it, y^{l-1} ... y^{l-window}, and it stops
once ``window`` consecutive steps were stale (a fixed point held ``window`` steps, or a cycle
of length <= ``window`` gone round), and at least ``min_steps`` steps were run. ``window=1``
is fairseq's rule.

Repeated tokens (``repeats``, ``--refine-repeats``). Most words the decoders repeat right after
themselves sit in outputs longer than their reference, and decoder 2, reading the repeated
token at both positions, keeps them. Before each refinement step a position whose token equals
the one before it can be

* ``keep``: read as it is (the paper's decoding);
* ``mask`` (default, chosen on the valid set: results/ablation/refine_repeats.md): read without
  its token: decoder 2's input there is the previous hidden state alone,
  so the step predicts that word again from the context, as CMLM's mask-predict re-predicts
  the positions it masks (the model is unchanged; ``token_mask`` of ``refine_step``);
* ``drop``: deleted, the gap closed (tokens and states move left, the length shrinks), and
  decoder 2 refines the shorter sentence: the reference code's ``--remove_repeats`` applied
  inside the loop instead of once after it. A repeat often stands for a missing word, so the
  output can come out too short.

A repeat the last step creates stays in the output (``--remove-repeats`` drops it after
decoding). Measured per step by ``scripts/refine_diagnostic.py --refine-repeats``.

Default: ``window=2, min_steps=3``; ``window=1`` (fairseq's rule) stopped 3-6 points below the
best fixed step count on a toy task, the default within 0.7 points of it or above
(docs/measurements.md).
"""

import torch

from nar_refine.inference.hypotheses import best_hypotheses, candidate_tokens
from nar_refine.modules.corruption import repeated_positions


def refine_hypotheses(gen, best, tokens, lprobs, steps, rank, scores, history, beam):
    """refine_nat's hypotheses (``best_hypotheses``): the history of decoder outputs, the
    teacher's rerank score, and with ``keep_candidates`` every length candidate with the
    model's own rank score and the teacher's."""
    hist = torch.stack(history, 1).index_select(0, best).cpu() if history is not None else None
    sc = scores.cpu() if scores is not None else None
    all_tok, all_rank = (tokens.cpu(), rank.cpu()) if gen.keep_candidates else (None, None)
    return best_hypotheses(
        best, tokens, lprobs, steps, gen.pad, gen.eos,
        history=(lambda b, r, n: list(hist[b, : n + 1])) if hist is not None else None,
        extra=(lambda b, r: {"rerank_score": float(sc[r])}) if sc is not None else None,
        candidates=(lambda b: [
            {"tokens": candidate_tokens(all_tok[c], gen.pad), "rank": float(all_rank[c]),
             "score": float(sc[c]) if sc is not None else None}
            for c in range(b * beam, (b + 1) * beam)]) if gen.keep_candidates else None,
    )


REPEAT_MODES = ("keep", "mask", "drop")


def pack_left(keep, *pairs):
    """Move each row's kept positions (``keep``, B x T bool) to its front, in their order (a
    stable sort): every (tensor, fill) of ``pairs`` (B x T x ...) gathered so, the positions
    after the kept ones set to ``fill``. Returns (the packed mask, *tensors). Fixed shapes."""
    order = (~keep).long().argsort(dim=1, stable=True)
    kept = keep.gather(1, order)
    out = []
    for t, fill in pairs:
        extra = (1,) * (t.dim() - 2)
        out.append(t.gather(1, order.view(*order.shape, *extra).expand_as(t))
                   .masked_fill(~kept.view(*kept.shape, *extra), fill))
    return (kept, *out)


def drop_repeated_tokens(tokens, hidden, pad):
    """Delete every token equal to the one before it and close the gaps: the kept tokens (and
    their decoder states) move left in order, pads fill the end. Returns (tokens, hidden,
    lengths); a row keeps at least its first token. Fixed shapes, no host round trip."""
    keep = tokens.ne(pad) & ~repeated_positions(tokens, pad)
    kept, tokens, hidden = pack_left(keep, (tokens, pad), (hidden, 0.0))
    return tokens, hidden, kept.long().sum(1)


def trim_at_eos(tokens, lprobs, eos, pad):
    """Shortening: every position from a row's first </s> on becomes padding."""
    ended = tokens.eq(eos).long().cumsum(-1) > 0
    tokens = tokens.masked_fill(ended, pad)
    return tokens, (lprobs.masked_fill(ended, 0.0) if lprobs is not None else None)


class AdaptiveRefinementGenerator:
    def __init__(self, tgt_dict, max_iter=10, adaptive=True, length_beam=1, retain_history=False,
                 max_len=256, window=2, min_steps=3, scorer=None, keep_candidates=False,
                 repeats="mask"):
        """Options are validated by ``validate_decoding_options`` (nar_refine.inference).
        ``scorer(src_tokens, src_lengths, tokens, lprobs) -> scores`` reranks the length
        candidates (higher is better); ``keep_candidates`` stores all of them in
        ``hypo["candidates"]`` with the model's own rank score and the scorer's (inspection);
        ``repeats`` (mask, the default, / keep / drop) is what decoder 2 reads at a repeated
        token (module doc)."""
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.max_iter = max_iter
        self.adaptive = adaptive and window > 0
        self.window = max(1, window)
        self.min_steps = min_steps
        self.length_beam = max(1, length_beam)
        self.retain_history = retain_history
        self.max_len = max_len
        self.scorer = scorer
        self.keep_candidates = keep_candidates
        if repeats not in REPEAT_MODES:
            raise ValueError(f"repeats must be one of {REPEAT_MODES}, got {repeats!r}")
        self.repeats = repeats

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        with torch.inference_mode():
            out = self._decode(models[0], sample)
        # outside inference_mode: the hypotheses are ordinary tensors (fairseq-generate and
        # callers may update them in place)
        return refine_hypotheses(self, *out)

    def _decode(self, model, sample):
        model.eval()
        net = sample["net_input"]
        bsz, beam = net["src_tokens"].size(0), self.length_beam
        direct = self.direct_output(model)
        if direct is not None:
            tokens, lprobs, lengths, length_lp = direct(net["src_tokens"], net["src_lengths"], self.max_len)
            history = [tokens.clone()] if self.retain_history else None
            return self._finish(model, net, tokens, lprobs, lengths, length_lp,
                                torch.zeros_like(lengths), history, bsz, beam)
        enc = model.encode(net["src_tokens"], net["src_lengths"])
        length_logits = model.length_logits(enc)
        lengths = model.length_predictor.predict(length_logits, enc["length"], beam, self.max_len)
        length_lp = model.length_predictor.log_prob(length_logits, enc["length"], lengths).view(-1)
        lengths = lengths.view(-1)
        if hasattr(model, "canvas_lengths"):  # shortening: room for the </s>
            lengths = model.canvas_lengths(lengths).clamp(max=self.max_len)
        if beam > 1:
            enc = enc.index(torch.arange(bsz, device=lengths.device).repeat_interleave(beam))

        tokens, lprobs, hidden = model.initial_read(enc, lengths)
        # one N x T copy per step (finished rows simply stop changing); rows are cut at the end
        history = [tokens.clone()] if self.retain_history else None
        steps = torch.zeros_like(lengths)
        # the last `window` outputs of every row, newest first; -1 never equals a token
        recent = tokens.new_full((tokens.size(0), self.window, tokens.size(1)), -1)
        recent[:, 0] = tokens
        stale = torch.zeros_like(lengths)
        active = torch.arange(tokens.size(0), device=tokens.device)
        for _ in range(self.max_iter):
            if active.numel() == 0:
                break
            sub_enc = enc.index(active)
            prev_a, prev_hidden_a = tokens[active], hidden[active]
            if self.repeats == "drop":
                prev_a, prev_hidden_a, lengths[active] = drop_repeated_tokens(prev_a, prev_hidden_a, self.pad)
            # a mask every step (all False unless masking): one signature for the exported pass
            token_mask = (repeated_positions(prev_a, self.pad) if self.repeats == "mask"
                          else torch.zeros_like(prev_a, dtype=torch.bool))
            new_tokens, new_lprobs, hidden_a = model.refine_read(sub_enc, prev_a, prev_hidden_a,
                                                                 token_mask, lengths[active])
            repeat = (recent[active] == new_tokens[:, None]).all(-1).any(-1)
            stale[active] = torch.where(repeat, stale[active] + 1, torch.zeros_like(stale[active]))
            recent[active] = torch.cat([new_tokens[:, None], recent[active, :-1]], 1)
            tokens[active], lprobs[active], hidden[active] = new_tokens, new_lprobs, hidden_a
            steps[active] += 1
            if history is not None:
                history.append(tokens.clone())
            if self.adaptive:
                done = (stale[active] >= self.window) & (steps[active] >= self.min_steps)
                active = active[~done]
        return self._finish(model, net, tokens, lprobs, lengths, length_lp, steps, history, bsz, beam)

    def direct_output(self, model):
        """The model's one-call decoding when there is nothing to refine or rerank (decoder 1
        only, one length): source to output in one exported pass; the same computation as the
        step path. None otherwise."""
        return model.first_output if self.max_iter == 0 and self.length_beam == 1 else None

    def _finish(self, model, net, tokens, lprobs, lengths, length_lp, steps, history, bsz, beam):
        """Shortening's trim, then the best length candidate of each sentence."""
        if getattr(model, "eos_slack", 0) > 0:  # shortening: the output ends at its first </s>
            tokens, lprobs = trim_at_eos(tokens, lprobs, self.eos, self.pad)
            if history is not None:
                history = [trim_at_eos(h, None, self.eos, self.pad)[0] for h in history]
            lengths = tokens.ne(self.pad).long().sum(-1).clamp(min=1)
        # keep the best length candidate: by the model's own rank, or by the scorer's
        rank = lprobs.sum(-1) / lengths.float() + length_lp
        scores = None
        if self.scorer is not None and beam > 1:
            scores = self.score_candidates(net, tokens, lprobs, beam)
        best = (rank if scores is None else scores).view(bsz, beam).argmax(-1)
        best = best + torch.arange(bsz, device=lengths.device) * beam
        return best, tokens, lprobs, steps, rank, scores, history, beam

    def score_candidates(self, net, tokens, lprobs, beam):
        """The scorer's score of every candidate (B*L rows, sentence-major), on its tokens
        as the hypothesis will print them (pads dropped, so a pad the decoder put inside a
        row does not cut it short: a stable sort moves the real tokens to the front). The
        teacher encodes each source once (``rows``)."""
        _, packed, packed_lp = pack_left(tokens.ne(self.pad), (tokens, self.pad), (lprobs, 0.0))
        rows = torch.arange(net["src_tokens"].size(0), device=tokens.device).repeat_interleave(beam)
        return self.scorer(net["src_tokens"], net["src_lengths"], packed, packed_lp, rows=rows).float()

