"""A lean multi-head attention for export: the same computation as fairseq's
``MultiheadAttention`` at inference (no incremental state, no bias_k/v, no zero attention),
written so that the traced ONNX graph has a few nodes per attention instead of a hundred.

fairseq's forward computes every view from ``tensor.size()``, and the TorchScript-based
exporter turns each such size into Shape/Gather/Unsqueeze/Concat nodes that ONNX Runtime
then runs one by one: at Multi30k's sizes (d=128, batch 1) they cost more than the matrix
products. Here heads are split and merged by a Reshape with a constant shape (0 copies a
dimension), so a dynamic batch and length need no shape arithmetic at all.
"""

import contextlib
import types

import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention


class _SplitHeads(torch.autograd.Function):
    """A x B x (H*D) -> A x B x H x D; exported as one Reshape([0, 0, H, -1])."""

    @staticmethod
    def forward(ctx, x, heads: int, dim: int):
        return x.unflatten(-1, (heads, dim))

    @staticmethod
    def symbolic(g, x, heads, dim):
        shape = g.op("Constant", value_t=torch.tensor([0, 0, heads, -1], dtype=torch.int64))
        return g.op("Reshape", x, shape)


class _MergeHeads(torch.autograd.Function):
    """T x B x H x D -> T x B x (H*D); exported as one Reshape([0, 0, -1])."""

    @staticmethod
    def forward(ctx, x):
        return x.flatten(-2)

    @staticmethod
    def symbolic(g, x):
        shape = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        return g.op("Reshape", x, shape)


def _linear(x, projections, q_scaling=None):
    """``x`` through several nn.Linear at once; the first scaled by ``q_scaling`` if given."""
    ws = [p.weight for p in projections]
    bs = [p.bias if p.bias is not None else p.weight.new_zeros(p.weight.size(0)) for p in projections]
    if q_scaling is not None:
        ws[0], bs[0] = ws[0] * q_scaling, bs[0] * q_scaling
    if len(projections) == 1:
        return (F.linear(x, ws[0], bs[0]),)
    out = F.linear(x, torch.cat(ws), torch.cat(bs))
    return out.split([w.size(0) for w in ws], dim=-1)


def lean_forward(self, query, key, value, key_padding_mask=None, incremental_state=None,
                 need_weights=True, static_kv=False, attn_mask=None, before_softmax=False,
                 need_head_weights=False):
    """fairseq ``MultiheadAttention.forward`` for the exported passes (Time x Batch x Channel);
    returns (output, None): the passes never read attention weights."""
    if incremental_state is not None or before_softmax or self.bias_k is not None or self.add_zero_attn:
        raise NotImplementedError("lean attention: incremental decoding, bias_k/v and zero "
                                  "attention are not exported")
    heads, dim = self.num_heads, self.head_dim
    # the projections that read the same input are one matrix product (the scaling folded
    # into q's weights): fewer, larger products than fairseq's three
    if self.self_attention:
        q, k, v = _linear(query, (self.q_proj, self.k_proj, self.v_proj), self.scaling)
    elif value is None or value is key:  # encoder-decoder attention reads one memory
        (q,) = _linear(query, (self.q_proj,), self.scaling)
        k, v = _linear(key, (self.k_proj, self.v_proj))
    else:
        (q,) = _linear(query, (self.q_proj,), self.scaling)
        (k,) = _linear(key, (self.k_proj,))
        (v,) = _linear(value, (self.v_proj,))
    q = _SplitHeads.apply(q, heads, dim).permute(1, 2, 0, 3)
    k = _SplitHeads.apply(k, heads, dim).permute(1, 2, 3, 0)
    v = _SplitHeads.apply(v, heads, dim).permute(1, 2, 0, 3)
    scores = torch.matmul(q, k)  # B x H x T x S
    if attn_mask is not None:
        scores = (scores.masked_fill(attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).type_as(scores)
    out = torch.matmul(probs, v).permute(2, 0, 1, 3)  # T x B x H x D
    return self.out_proj(_MergeHeads.apply(out)), None


@contextlib.contextmanager
def lean_attention(module):
    """Within the block every fairseq ``MultiheadAttention`` under ``module`` runs
    ``lean_forward`` (for tracing); restored afterwards."""
    patched = [m for m in module.modules() if isinstance(m, MultiheadAttention)]
    for m in patched:
        m.forward = types.MethodType(lean_forward, m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
