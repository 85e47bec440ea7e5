"""Discrete iterative refinement decoding with adaptive stopping (Lee et al. 2018, sec. 4).

1. predict the length (or ``length_beam`` lengths around the best one);
2. decoder 1 gives y^0;
3. decoder 2 refines y^{l-1} -> y^l, at most ``max_iter`` times; with ``adaptive`` a sentence
   stops (and leaves the batch) as soon as y^l == y^{l-1};
4. among the length candidates keep the best by mean token log-probability plus the length
   log-probability log p(T|x) (the mean alone prefers short outputs: every position of a
   too-short copy can still be confident).
"""

import torch

from nar_refine.inference.hypotheses import make_hypothesis


class AdaptiveRefinementGenerator:
    def __init__(self, tgt_dict, max_iter=10, adaptive=True, length_beam=1, retain_history=False,
                 max_len=256):
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.max_iter = max_iter
        self.adaptive = adaptive
        self.length_beam = max(1, length_beam)
        self.retain_history = retain_history
        self.max_len = max_len

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        model = models[0]
        model.eval()
        net = sample["net_input"]
        enc = model.encode(net["src_tokens"], net["src_lengths"])
        bsz, beam = net["src_tokens"].size(0), self.length_beam
        length_logits = model.length_logits(enc)
        lengths = model.length_predictor.predict(length_logits, enc["length"], beam, self.max_len)
        length_lp = model.length_predictor.log_prob(length_logits, enc["length"], lengths).view(-1)
        lengths = lengths.view(-1)
        if beam > 1:
            enc = enc.index(torch.arange(bsz, device=lengths.device).repeat_interleave(beam))

        logits, hidden = model.initial_step(enc, lengths)
        tokens, lprobs = self._read(logits, lengths)
        history = [[tokens[i]] for i in range(tokens.size(0))] if self.retain_history else None
        steps = torch.zeros_like(lengths)
        active = torch.arange(tokens.size(0), device=tokens.device)
        for _ in range(self.max_iter):
            if active.numel() == 0:
                break
            sub_enc = enc.index(active)
            logits_a, hidden_a = model.refine_step(sub_enc, tokens[active], hidden[active])
            new_tokens, new_lprobs = self._read(logits_a, lengths[active])
            changed = new_tokens.ne(tokens[active]).any(-1)
            tokens[active], lprobs[active], hidden[active] = new_tokens, new_lprobs, hidden_a
            steps[active] += 1
            if history is not None:
                for row in active.tolist():
                    history[row].append(tokens[row].clone())
            if self.adaptive:
                active = active[changed]

        # keep the best length candidate
        rank = (lprobs.sum(-1) / lengths.float() + length_lp).view(bsz, beam)
        best = rank.argmax(-1) + torch.arange(bsz, device=lengths.device) * beam
        return [
            [make_hypothesis(tokens[r], lprobs[r], self.pad, self.eos, int(steps[r]),
                             history[r] if history is not None else None)]
            for r in best.tolist()
        ]

    def _read(self, logits, lengths):
        """Argmax tokens and their log-probabilities, with pads beyond each length."""
        lp = torch.log_softmax(logits.float(), -1)
        scores, tokens = lp.max(-1)
        mask = torch.arange(tokens.size(1), device=tokens.device)[None, :] >= lengths[:, None]
        return tokens.masked_fill(mask, self.pad), scores.masked_fill(mask, 0.0)
