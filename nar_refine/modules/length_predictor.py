"""Target-length prediction as classification over the offset len(y) - len(x).

Lee et al. (2018) predict the length from mean-pooled source states with a 2-layer MLP;
LaNMT (Shu et al. 2020) predicts it from the mean of z plus prior states. Both use this.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_mean(states, padding_mask):
    """Mean over time of B x T x C states, ignoring positions where padding_mask is True."""
    keep = (~padding_mask).unsqueeze(-1).type_as(states)
    return (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class LengthPredictor(nn.Module):
    """p(len(y) - len(x) | pooled states): a 2-layer MLP over ``2 * max_offset + 1`` classes."""

    def __init__(self, input_dim, hidden_dim, max_offset=50, dropout=0.1):
        super().__init__()
        self.max_offset = max_offset
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 2 * max_offset + 1),
        )

    def forward(self, pooled):
        """pooled: B x C -> B x (2*max_offset+1) logits."""
        return self.mlp(pooled)

    def target(self, src_lengths, tgt_lengths):
        """Class index of each true offset (clamped into range)."""
        offset = (tgt_lengths - src_lengths).clamp(-self.max_offset, self.max_offset)
        return offset + self.max_offset

    def loss(self, logits, src_lengths, tgt_lengths):
        """Summed cross entropy of the true length offsets."""
        return F.cross_entropy(logits, self.target(src_lengths, tgt_lengths), reduction="sum")

    def log_prob(self, logits, src_lengths, lengths):
        """log p(T | x) of B x K candidate lengths (offsets outside the classes get -inf)."""
        offset = lengths - src_lengths[:, None] + self.max_offset
        valid = (offset >= 0) & (offset < logits.size(-1))
        lp = torch.log_softmax(logits.float(), -1).gather(1, offset.clamp(0, logits.size(-1) - 1))
        return lp.masked_fill(~valid, float("-inf"))

    def predict(self, logits, src_lengths, beam=1, max_length=None):
        """Lengths to decode: the most likely offset, or ``beam`` lengths centred on it.

        Returns B x beam lengths (>= 1, <= max_length).
        """
        best = logits.argmax(-1) - self.max_offset + src_lengths
        shifts = torch.arange(beam, device=logits.device) - (beam - 1) // 2
        lengths = best[:, None] + shifts[None, :]
        lengths = lengths.clamp(min=1)
        if max_length is not None:
            lengths = lengths.clamp(max=max_length)
        return lengths
