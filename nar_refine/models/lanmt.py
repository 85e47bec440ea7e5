"""LaNMT: latent-variable non-autoregressive translation (Shu, Lee, Nakayama & Cho 2020).

    prior:      p(z | x)      = prod_i N(z_i; mu_p(x)_i, sigma_p(x)_i)     i = source positions
    posterior:  q(z | x, y)   = prod_i N(z_i; mu_q(x,y)_i, sigma_q(x,y)_i)
    length:     p(T | z, x)   classifier of T - len(x) from masked_mean(W z + prior states)
    decoder:    p(y | z, x)   = prod_t p(y_t | transform_T(W z) + E_len(T), x)   (all positions
                                at once; every layer re-reads its input: h <- (h_0 + h)/sqrt(2))

The latents live on source positions (B x S x d, as the LaNMT code); ``length_transform``
moves them to the T target positions by position attention with a learned width,
    w_{t,i} ∝ exp(-(i - c_t)^2 / (2 sigma^2)),   c_t = (t + 1/2) S/T - 1/2
(the squared distance the paper means, not the reference code's -2**distance). Every stack
is made of fairseq's own layers, so cross-attention always uses its own weights.

The decoder reads z the way both reference codebases (zomux/lanmt, zomux/lanmt-ebm) make it:
its input, the length-transformed W z plus an embedding of the target length T, is mixed back
in after every layer (``skip_connect=True``: h <- (h_0 + h)/sqrt(2)), so no layer can wash the
latent out. The first Multi30k model, without them, hardly read z: its z-usage (validation NLL
at z = prior mean minus NLL at z = posterior mean, logged by ``lanmt_elbo``) was 0.002
nats/token while the KL budget was held. Measured with lanmt_tiny, budget held for 1000
updates, on a toy task where each target word takes one of two styles at random: z-usage 0.22
and 0.17 nats/token (two seeds) with them, 0.15 and 0.10 without (same loss). Where one bit per
sentence is at stake (the two-style task of tests/test_lanmt.py) both decoders learn to read z.
``--decoder-latent-skip False --decoder-length-embedding False`` build the old decoder.

Training (``forward``) returns named outputs for the ``lanmt_elbo`` criterion: the token
logits under a reparameterised posterior sample, the per-position KL(q || p) and the length
logits, all in one call (every parameter is used, as DistributedDataParallel requires). In
eval mode z is the posterior mean (deterministic validation) and the token logits at z =
prior mean come too, for the z-usage metric.

Inference uses the pieces: ``encode``, ``prior``, ``posterior``, ``predict_lengths``,
``decode_logits``, ``decode``, ``delta_step``, ``log_prior``.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.models.transformer import Embedding, TransformerEncoder, TransformerModel
from fairseq.utils import eval_bool

from nar_refine.errors import NARConfigError
from nar_refine.models import encoder_init
from nar_refine.models.refine_nat import SourceEncoding, _nat_defaults, encode_source, target_without_eos
from nar_refine.modules import LengthPredictor, ParallelTransformerStack, masked_mean
from nar_refine.modules.parallel_transformer import lengths_to_padding_mask
from nar_refine.modules.token_scores import projected_argmax, read_logits

# floor on sigma: keeps log(sigma) and the KL gradient (about -1/sigma) finite. 1e-4 is the
# smallest decade where sigma and 1/sigma are both normal fp16 numbers (fp16's smallest normal is
# 6.1e-5, its largest 65504), so a consumer that casts sigma to half gets no subnormal or inf.
_MIN_SIGMA = 1e-4


def length_transform(states, src_padding_mask, tgt_lengths, width):
    """Move B x S x C source-position states to B x T x C target positions.

    Target position t reads sum_i w_{t,i} states_i with w_{t,i} = softmax_i(-(i - c_t)^2 /
    (2 width^2)) over the real source positions, c_t = (t + 1/2) S_b/T_b - 1/2 (so S == T
    gives the diagonal). Works for left- or right-padded sources. Returns (B x T x C output,
    B x T x S weights); rows of pad target positions are valid weights too (masked later).
    """
    # positions, centres and squared distances in fp32 whatever the model dtype: in fp16 the
    # positions lose precision past 128 tokens and the squared distance overflows past 256
    real = ~src_padding_mask
    src_len = real.sum(1).clamp(min=1).float()  # S_b
    src_pos = (real.long().cumsum(1) - 1).float()  # position of i among real tokens
    tgt_len = tgt_lengths.clamp(min=1).float()
    t = torch.arange(int(tgt_lengths.max().clamp(min=1)), device=states.device, dtype=torch.float32)
    centre = (t[None, :] + 0.5) * (src_len / tgt_len)[:, None] - 0.5  # B x T
    dist2 = (src_pos[:, None, :] - centre[:, :, None]) ** 2  # B x T x S
    logits = -dist2 / (2.0 * torch.as_tensor(width).float() ** 2)
    logits = logits.masked_fill(src_padding_mask[:, None, :], float("-inf"))
    weights = torch.softmax(logits, dim=-1).to(states.dtype)
    return torch.bmm(weights, states), weights


def gaussian_kl(mu_q, sigma_q, mu_p, sigma_p):
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) elementwise (closed form)."""
    return (
        torch.log(sigma_p / sigma_q)
        + (sigma_q**2 + (mu_q - mu_p) ** 2) / (2.0 * sigma_p**2)
        - 0.5
    )


def gaussian_log_density(z, mu, sigma):
    """log N(z; mu, sigma^2) elementwise."""
    return -0.5 * ((z - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


@register_model("lanmt")
class LaNMTModel(BaseFairseqModel):
    is_nar_refine_model = True
    nar_family = "lanmt"
    default_decoding = "delta"

    def __init__(self, args, src_dict, tgt_dict, encoder, embed_tokens):
        super().__init__()
        self.args = args
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        # never emitted inside a translation: a pad or </s> there would cut the hypothesis short
        self.register_buffer("_banned", torch.tensor([tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()]),
                             persistent=False)
        self.latent_dim = args.latent_dim
        self.max_target_positions = args.max_target_positions
        dim = args.encoder_embed_dim
        if args.decoder_embed_dim != dim:
            raise NARConfigError("lanmt uses one hidden size: --encoder-embed-dim must equal --decoder-embed-dim")
        ffn, heads, drop = args.encoder_ffn_embed_dim, args.encoder_attention_heads, args.dropout
        max_pos = args.max_target_positions + tgt_dict.pad() + 1

        def stack(layers, cross, positions, ffn=ffn, heads=heads, skip_connect=False):
            return ParallelTransformerStack(
                dim, ffn, heads, layers, dropout=drop, cross_attention=cross,
                max_positions=max_pos if positions else None, padding_idx=tgt_dict.pad(),
                skip_connect=skip_connect,
            )

        self.encoder = encoder
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
        # p(z|x): Transformer over the source states (positions already in them)
        self.prior_encoder = stack(args.prior_layers, cross=False, positions=False)
        self.prior_out = nn.Linear(dim, 2 * self.latent_dim)
        # q(z|x,y): encoder over y, then source positions attend to it
        self.posterior_y_encoder = stack(args.posterior_layers, cross=False, positions=True)
        self.posterior_xy = stack(args.posterior_layers, cross=True, positions=False)
        self.posterior_out = nn.Linear(dim, 2 * self.latent_dim)
        # Both Gaussian heads start at zero: prior and posterior are then the same N(0, softplus(0)^2)
        # everywhere, so the KL starts at 0 (under the budget: no KL gradient) and grows as the
        # decoder learns to use z. From a random start the KL is ~16 nats per position and its
        # gradient, summed over every source position of a batch, made these two layers' gradient
        # elements ~50x the Transformer's: fp16 training (which scales the summed loss) then had to
        # drop its loss scale to single digits. Only the initialisation changes.
        for head in (self.prior_out, self.posterior_out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # p(y|z,x)
        self.latent_to_hidden = nn.Linear(self.latent_dim, dim)
        self.log_transform_width = nn.Parameter(torch.zeros(()))  # width sigma = exp(.) = 1 at start
        # E_len(T), one vector per target length (index 0 is never used: lengths are >= 1)
        self.length_embed = (Embedding(args.max_target_positions + 1, dim, 0)
                             if args.decoder_length_embedding else None)
        self.decoder = stack(args.decoder_layers, cross=True, positions=True,
                             ffn=args.decoder_ffn_embed_dim, heads=args.decoder_attention_heads,
                             skip_connect=args.decoder_latent_skip)
        self.output_projection = nn.Linear(dim, len(tgt_dict), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)
        # p(T|z,x)
        self.length_predictor = LengthPredictor(dim, args.length_hidden_dim, args.max_length_offset,
                                                args.dropout)

    @staticmethod
    def add_args(parser):
        TransformerModel.add_args(parser)
        encoder_init.add_args(parser)
        parser.add_argument("--latent-dim", type=int, metavar="N", help="dimension of z per source position")
        parser.add_argument("--prior-layers", type=int, metavar="N",
                            help="Transformer layers of the prior p(z|x) over the source states")
        parser.add_argument("--posterior-layers", type=int, metavar="N",
                            help="layers of the posterior's encoder over y and of its x->y attention stack")
        parser.add_argument("--max-length-offset", type=int, metavar="N",
                            help="length predictor classifies len(y)-len(x) in [-N, N]")
        parser.add_argument("--length-hidden-dim", type=int, metavar="N",
                            help="hidden size of the 2-layer length MLP")
        parser.add_argument("--decoder-latent-skip", type=eval_bool, metavar="BOOL",
                            help="mix the decoder's input (the transformed latent) back in after "
                            "every decoder layer, h <- (h_0 + h)/sqrt(2), as the reference "
                            "(skip_connect=True); False: the latent enters at the bottom only "
                            "(default: True)")
        parser.add_argument("--decoder-length-embedding", type=eval_bool, metavar="BOOL",
                            help="add an embedding of the target length to the decoder input, as "
                            "the reference (default: True)")

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        enc_emb = Embedding(len(src_dict), args.encoder_embed_dim, src_dict.pad())
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise NARConfigError("--share-all-embeddings needs a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary)")
            tgt_emb = enc_emb
        else:
            tgt_emb = Embedding(len(tgt_dict), args.decoder_embed_dim, tgt_dict.pad())
        encoder = TransformerEncoder(args, src_dict, enc_emb)
        return cls(args, src_dict, tgt_dict, encoder, tgt_emb)

    def max_positions(self):
        return (self.encoder.max_positions(), self.max_target_positions)

    # -- pieces: used by training, the generators and the inference networks ------------------
    def encode(self, src_tokens, src_lengths) -> SourceEncoding:
        """Source states plus the prior's states (``prior_states``), shared by all steps."""
        enc = encode_source(self.encoder, src_tokens, src_lengths, self.pad, self.eos)
        enc["prior_states"] = self.prior_encoder(enc["states"], enc["padding_mask"])
        return enc

    def _gaussian(self, proj, states, padding_mask):
        """(mu, sigma) in fp32 whatever the model dtype: in fp16 softplus underflows and the KL
        gradient (about -1/sigma) overflows to -inf for sigma <= 1e-3. Consumers cast z back."""
        mu, raw = proj(states).float().chunk(2, dim=-1)
        sigma = F.softplus(raw).clamp(min=_MIN_SIGMA)
        keep = (~padding_mask).unsqueeze(-1).float()
        return mu * keep, sigma * keep + (1 - keep)  # pads: N(0, 1), harmless and finite

    def prior(self, enc):
        """p(z|x): (mu, sigma), each B x S x d."""
        return self._gaussian(self.prior_out, enc["prior_states"], enc["padding_mask"])

    def posterior(self, enc, y):
        """q(z|x,y): (mu, sigma), B x S x d; y: B x T target tokens without </s>, pad-padded."""
        y_mask = y.eq(self.pad)
        y_states = self.posterior_y_encoder(self.embed_scale * self.embed_tokens(y), y_mask)
        h = self.posterior_xy(enc["states"], enc["padding_mask"], y_states, y_mask)
        return self._gaussian(self.posterior_out, h, enc["padding_mask"])

    def length_logits(self, enc, z):
        """p(T - len(x) | z, x) logits from the masked mean of W z + prior states (LaNMT)."""
        h = self.latent_to_hidden(z.to(self.latent_to_hidden.weight.dtype))
        pooled = masked_mean(h + enc["prior_states"], enc["padding_mask"])
        return self.length_predictor(pooled)

    def predict_lengths(self, enc, z):
        """Most likely target length per sentence, in [1, max target positions]."""
        logits = self.length_logits(enc, z)
        return self.length_predictor.predict(logits, enc["length"], 1, self.max_target_positions)[:, 0]

    @property
    def transform_width(self):
        return self.log_transform_width.exp()

    def decode_states(self, enc, z, tgt_lengths):
        """The decoder's output states of p(y|z,x), B x T x d, for the given target lengths."""
        h = self.latent_to_hidden(z.to(self.latent_to_hidden.weight.dtype))
        x, _ = length_transform(h, enc["padding_mask"], tgt_lengths, self.transform_width)
        if self.length_embed is not None:
            x = x + self.length_embed(tgt_lengths.clamp(1, self.max_target_positions))[:, None]
        tgt_mask = lengths_to_padding_mask(tgt_lengths.clamp(min=1), x.size(1))
        return self.decoder(x, tgt_mask, enc["states"], enc["padding_mask"])

    def decode_logits(self, enc, z, tgt_lengths):
        """p(y|z,x) logits, B x T x V, for the given target lengths (one output projection)."""
        return self.output_projection(self.decode_states(enc, z, tgt_lengths))

    def decode_read(self, enc, z, tgt_lengths, scores=True):
        """Argmax tokens of p(y|z,x) at the given lengths (special symbols excluded) and their
        log-probabilities (None with ``scores=False``), pads not yet filled: the projection
        read in blocks of positions (``projected_argmax``); over ONNX Runtime's exported
        ``decode_logits`` when the passes are exported (``--onnx-dir``)."""
        if "decode_logits" in getattr(self, "exported", ()):
            return read_logits(self.decode_logits(enc, z, tgt_lengths), self._banned, scores)
        return projected_argmax(self.decode_states(enc, z, tgt_lengths), self.output_projection,
                                self._banned, scores)

    def decode(self, enc, z, scores=True):
        """Argmax translation of z at its predicted length (special symbols excluded).

        Returns (tokens B x T pad-padded, token log-probs B x T (0 at pads), lengths B); with
        ``scores=False`` no softmax is computed and the log-probs are None.
        """
        lengths = self.predict_lengths(enc, z)
        lprobs, tokens = self.decode_read(enc, z, lengths, scores)
        pad_mask = lengths_to_padding_mask(lengths, tokens.size(1))
        if lprobs is not None:
            lprobs = lprobs.masked_fill(pad_mask, 0.0)
        return tokens.masked_fill(pad_mask, self.pad), lprobs, lengths

    def delta_step(self, enc, z):
        """One step of delta-posterior inference: y = argmax p(y|z,x); z' = E_q(z|x,y)[z].

        Returns (z', tokens, lprobs, lengths), the last three describing y (decoded from z).
        """
        tokens, lprobs, lengths = self.decode(enc, z)
        z_next, _ = self.posterior(enc, tokens)
        return z_next, tokens, lprobs, lengths

    # -- whole decodings in one call (one exported pass each; nar_refine.inference) -----------
    def prior_output(self, src_tokens, src_lengths):
        """Decoding from the prior mean z = mu(x), from the source in one call: (tokens,
        token log-probs, z, log p(z|x), the source padding mask)."""
        enc = self.encode(src_tokens, src_lengths)
        mu, sigma = self.prior(enc)
        return self.decoded_output(enc, mu, sigma, mu)

    def delta_output(self, src_tokens, src_lengths):
        """One delta-inference step from the prior mean, decoded (z_1 = E_q(z|x, y_0)[z],
        y_0 = argmax p(y|mu, x)), in one call; returns as ``prior_output``."""
        enc = self.encode(src_tokens, src_lengths)
        mu, sigma = self.prior(enc)
        tokens, _, _ = self.decode(enc, mu, scores=False)
        return self.decoded_output(enc, mu, sigma, self.posterior(enc, tokens)[0].to(mu.dtype))

    def decoded_output(self, enc, mu, sigma, z):
        """(argmax y of z, its token log-probs, z, log p(z|x), the source padding mask)."""
        tokens, lprobs, _ = self.decode(enc, z)
        return tokens, lprobs, z, self.log_prior(enc, z, prior=(mu, sigma)), enc["padding_mask"]

    def log_prior(self, enc, z, prior=None):
        """log p(z|x) summed over real source positions and latent dims -> B (float32).
        ``prior``: the (mu, sigma) of ``self.prior(enc)`` when the caller has them already."""
        mu, sigma = self.prior(enc) if prior is None else prior
        keep = (~enc["padding_mask"]).unsqueeze(-1).float()
        return (gaussian_log_density(z.float(), mu.float(), sigma.float()) * keep).sum((1, 2))

    # -- training -------------------------------------------------------------------------------
    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None, **kwargs):
        """One ELBO sample: z ~ q(z|x,y) (reparameterised), KL(q||p) per source position,
        token logits of p(y|z,x) at the true length and length logits of p(T|z,x).

        In eval mode z = E_q[z] (validation does not depend on a random draw), and
        ``word_ins_prior_mean`` adds the token logits at z = E_p[z]: the gap between the two
        NLLs is how much the decoder uses z (z-usage)."""
        assert tgt_tokens is not None, "lanmt.forward needs the target for training"
        y, tgt_lengths = target_without_eos(tgt_tokens, self.pad, self.eos)
        enc = self.encode(src_tokens, src_lengths)
        mu_q, sigma_q = self.posterior(enc, y)
        mu_p, sigma_p = self.prior(enc)
        z = mu_q + sigma_q * torch.randn_like(mu_q) if self.training else mu_q
        src_mask = ~enc["padding_mask"]
        kl = gaussian_kl(mu_q.float(), sigma_q.float(), mu_p.float(), sigma_p.float()).sum(-1)
        y_mask = y.ne(self.pad)
        out = {
            "word_ins": {"out": self.decode_logits(enc, z, tgt_lengths), "tgt": y, "mask": y_mask},
            "kl": {"out": kl.masked_fill(~src_mask, 0.0), "mask": src_mask},
            "length": {
                "out": self.length_logits(enc, z),
                "tgt": self.length_predictor.target(enc["length"], tgt_lengths),
            },
        }
        if not self.training:
            out["word_ins_prior_mean"] = {"out": self.decode_logits(enc, mu_p, tgt_lengths),
                                          "tgt": y, "mask": y_mask}
        return out

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if strict and self.length_embed is not None and "length_embed.weight" not in state_dict:
            raise NARConfigError(
                "this lanmt checkpoint predates the decoder that reads z at every layer (nar_refine 0.1): "
                "retrain it, or load it as it was built with --model-overrides "
                "\"{'decoder_latent_skip': False, 'decoder_length_embedding': False}\"")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


@register_model_architecture("lanmt", "lanmt")
def base_architecture(args):
    """Base size: 512-d, 6 encoder / 3 prior / 3 posterior / 6 decoder layers, latent dim 8."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 2048)
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", args.encoder_attention_heads)
    args.prior_layers = getattr(args, "prior_layers", 3)
    args.posterior_layers = getattr(args, "posterior_layers", 3)
    args.latent_dim = getattr(args, "latent_dim", 8)
    args.length_hidden_dim = getattr(args, "length_hidden_dim", args.encoder_embed_dim)
    args.decoder_latent_skip = getattr(args, "decoder_latent_skip", True)
    args.decoder_length_embedding = getattr(args, "decoder_length_embedding", True)
    _nat_defaults(args)


@register_model_architecture("lanmt", "lanmt_base")
def lanmt_base(args):
    base_architecture(args)


@register_model_architecture("lanmt", "lanmt_small")
def lanmt_small(args):
    """For Multi30k on a CPU: 256-d, 3 layers each."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_layers = getattr(args, "encoder_layers", 3)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 3)
    args.prior_layers = getattr(args, "prior_layers", 3)
    args.posterior_layers = getattr(args, "posterior_layers", 3)
    base_architecture(args)


@register_model_architecture("lanmt", "lanmt_tiny")
def lanmt_tiny(args):
    """For tests: 64-d, 2 encoder / 1 prior / 1 posterior / 2 decoder layers."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.prior_layers = getattr(args, "prior_layers", 1)
    args.posterior_layers = getattr(args, "posterior_layers", 1)
    args.max_length_offset = getattr(args, "max_length_offset", 16)
    args.dropout = getattr(args, "dropout", 0.0)
    base_architecture(args)
