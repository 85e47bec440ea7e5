"""A non-causal Transformer stack made of fairseq's own layers.

Every parallel decoder in nar_refine (refinement decoders, LaNMT prior/posterior/decoder,
the score network) is "positions in, positions out, optionally attending to a context".
fairseq's ``TransformerDecoderLayerBase`` does exactly that when no causal mask is given.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import LayerNorm, MultiheadAttention, PositionalEmbedding
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from fairseq.utils import new_arange


def layer_config(embed_dim, ffn_dim, heads, dropout, attention_dropout=0.0, normalize_before=True):
    """A fairseq TransformerConfig whose encoder and decoder sections share one size."""
    cfg = TransformerConfig()
    for side in (cfg.encoder, cfg.decoder):
        side.embed_dim = embed_dim
        side.ffn_embed_dim = ffn_dim
        side.attention_heads = heads
        side.normalize_before = normalize_before
    cfg.dropout = dropout
    cfg.attention_dropout = attention_dropout
    cfg.activation_dropout = dropout
    return cfg


class ParallelTransformerStack(nn.Module):
    """``layers`` fairseq Transformer layers over all positions at once (no causal mask).

    With ``cross_attention`` every layer also attends to a context (e.g. source states);
    without it the stack is a plain Transformer encoder. Adds sinusoidal positions when
    ``max_positions`` is given, and a final LayerNorm (pre-norm layers). ``skip_connect``
    mixes the stack's input back in after every layer, x <- (x_0 + x) / sqrt(2), as the LaNMT
    reference decoder does (``skip_connect=True``) so that every layer reads the latent.
    ``positional_attention`` adds a :class:`PositionalAttention` sub-layer to every layer
    (Lee et al.'s reference decoders; needs ``max_positions``).

    ``normalize_before=False`` builds post-norm layers (x <- LayerNorm(x + sublayer(x)), the
    original Transformer and Lee et al.'s reference) and no final LayerNorm. In a pre-norm stack
    the input reaches the output through the residual path untouched but for the final
    LayerNorm, so a refinement decoder whose input holds the previous tokens' embeddings can
    copy them to its output almost for free; post-norm renormalises the residual stream after
    every sub-layer.
    """

    def __init__(self, embed_dim, ffn_dim, heads, layers, dropout=0.1, cross_attention=True,
                 max_positions: Optional[int] = 1024, padding_idx: int = 1, skip_connect=False,
                 positional_attention=False, normalize_before=True):
        super().__init__()
        cfg = layer_config(embed_dim, ffn_dim, heads, dropout, normalize_before=normalize_before)
        self.cross_attention = cross_attention
        self.skip_connect = skip_connect
        if cross_attention:
            self.layers = nn.ModuleList(
                [TransformerDecoderLayerBase(cfg, no_encoder_attn=False) for _ in range(layers)]
            )
        else:
            self.layers = nn.ModuleList([TransformerEncoderLayerBase(cfg) for _ in range(layers)])
        self.padding_idx = padding_idx
        self.embed_positions = (
            PositionalEmbedding(max_positions, embed_dim, padding_idx, learned=False)
            if max_positions
            else None
        )
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = LayerNorm(embed_dim) if normalize_before else None
        self.positional_attention = None
        if positional_attention:
            if self.embed_positions is None:
                raise ValueError("positional_attention needs max_positions (positional encodings)")
            self.positional_attention = nn.ModuleList(
                [PositionalAttention(embed_dim, heads, dropout, normalize_before)
                 for _ in range(layers)]
            )

    def forward(self, x, padding_mask, context=None, context_padding_mask=None):
        """x: B x T x C, padding_mask: B x T (True at pads); context: B x S x C. Returns B x T x C."""
        if self.embed_positions is not None:
            # PositionalEmbedding numbers positions from a token tensor; pads get no position.
            pos_tokens = padding_mask.long() * self.padding_idx + (~padding_mask).long() * (
                self.padding_idx + 1
            )
            positions = self.embed_positions(pos_tokens)
            x = x + positions
        x = self.dropout(x)
        x = x.transpose(0, 1)
        ctx = context.transpose(0, 1) if context is not None else None
        first_x = x
        for i, layer in enumerate(self.layers):
            if self.positional_attention is not None:
                x = self.positional_attention[i](x, positions.transpose(0, 1), padding_mask)
            if self.cross_attention:
                x, _, _ = layer(
                    x,
                    encoder_out=ctx,
                    encoder_padding_mask=context_padding_mask,
                    self_attn_padding_mask=padding_mask,
                )
            else:
                x = layer(x, encoder_padding_mask=padding_mask)
            if self.skip_connect:
                x = (first_x + x) * math.sqrt(0.5)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = x.transpose(0, 1)
        return x.masked_fill(padding_mask.unsqueeze(-1), 0.0)


class PositionalAttention(nn.Module):
    """Attention whose queries and keys are the positional encodings and whose values are the
    hidden states: x <- x + Attn(q = k = pos, v = LayerNorm(x)) (Gu et al. 2018; in every
    decoder layer of Lee et al.'s reference code). Its weights depend on positions only: it
    mixes positions the same way in every sentence of a given length, whatever the words.
    Placed before each layer's self-attention; pre-norm (LayerNorm on the values) or post-norm
    (LayerNorm after the residual sum), as the layers around it.
    """

    def __init__(self, embed_dim, heads, dropout=0.1, normalize_before=True):
        super().__init__()
        self.attn = MultiheadAttention(embed_dim, heads, dropout=0.0, self_attention=False)
        self.layer_norm = LayerNorm(embed_dim)
        self.normalize_before = normalize_before
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, positions, padding_mask):
        """x, positions: T x B x C; padding_mask: B x T (True at pads). Returns T x B x C."""
        value = self.layer_norm(x) if self.normalize_before else x
        h, _ = self.attn(query=positions, key=positions, value=value,
                         key_padding_mask=padding_mask, need_weights=False)
        x = x + self.dropout(h)
        return x if self.normalize_before else self.layer_norm(x)


def uniform_copy(src_states, src_lengths, tgt_lengths):
    """Copy source positions uniformly onto ``tgt_lengths`` target positions.

    Target position t reads source position round(t * (S-1)/(T-1)) (Gu et al. 2018; the
    input of Lee et al.'s decoder 1). src_states: B x S x C. Returns B x T_max x C.
    """
    max_tgt = int(tgt_lengths.max())
    steps = (src_lengths.float() - 1) / (tgt_lengths.float() - 1).clamp(min=1)
    index = new_arange(tgt_lengths, max_tgt).float()[None, :] * steps[:, None]
    index = torch.round(index).long().clamp(min=0)
    index = torch.minimum(index, (src_lengths - 1).clamp(min=0)[:, None])
    return src_states.gather(1, index.unsqueeze(-1).expand(-1, -1, src_states.size(-1)))


def lengths_to_padding_mask(lengths, max_len=None):
    """B lengths -> B x T bool mask, True at padding."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return new_arange(lengths, max_len)[None, :] >= lengths[:, None]
