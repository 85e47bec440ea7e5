"""Discrete-space iterative refinement NAT (Lee, Mansimov & Cho 2018).

    length:    p(T | x)                 offset classifier on mean-pooled source states
    decoder 1: p(y^0 | x)               reads a uniform copy of the source embeddings
    decoder 2: p(y^l | y^{l-1}, h^{l-1}, x)  shared by every refinement pass; reads the
               embedding of the previous output plus the previous pass's hidden states

Training runs K passes in one ``forward`` (so DistributedDataParallel sees every parameter
used in one call); ``RefinePlan`` (built by the ``refine_nat_loss`` criterion) says how many
passes, how each pass's input is chosen (own previous output = latent-variable chain, or a
corrupted reference = denoising autoencoder), and whether outputs are argmax or sampled.

Every decoder layer has positional attention (queries and keys: positional encodings; values:
hidden states), as every configuration of the reference code; ``--no-positional-attention``
removes it: it costs one more attention per decoder layer and helps most where words move
(translation reorders; toy measurements in docs/measurements.md).
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import (
    FairseqDecoder,
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import Embedding, TransformerEncoder, TransformerModel

from nar_refine.errors import NARConfigError
from nar_refine.models import encoder_init
from nar_refine.modules import LengthPredictor, ParallelTransformerStack, masked_mean, uniform_copy
from nar_refine.modules.corruption import repeated_positions
from nar_refine.modules.parallel_transformer import lengths_to_padding_mask
from nar_refine.modules.token_scores import projected_argmax, vocab_argmax


@dataclass
class RefinePlan:
    """How the training chain of refinement passes is run (see ``RefineNATModel.forward``)."""

    passes: int = 4
    lvm_alpha: float = 0.5  # probability that a pass reads its own previous output
    corrupt: Optional[Callable] = None  # (tokens, padding_mask, pass_index) -> corrupted tokens
    stochastic: bool = False  # sample y^l ~ p(.|...) instead of the argmax
    mask_repeats: bool = False  # a pass reads repeated input tokens without the token


class SourceEncoding(dict):
    """Encoder output in batch-first form plus the source lengths the NAT needs."""

    def index(self, order):
        return SourceEncoding({k: v.index_select(0, order) for k, v in self.items()})


def encode_source(encoder, src_tokens, src_lengths, pad, eos, layer_sum=False):
    """Run a fairseq TransformerEncoder; return batch-first states, masks and true lengths.

    Works for left- or right-padded sources: ``start`` is each row's first real position.
    ``length`` counts source tokens without the final </s> (targets are counted the same way).
    With ``layer_sum``, ``layer_sum`` holds the sum of the embedding layer's and every encoder
    layer's output (what the refine_nat reference feeds its length predictor).
    """
    out = encoder(src_tokens, src_lengths=src_lengths, return_all_hiddens=layer_sum)
    padding_mask = src_tokens.eq(pad)
    real = (~padding_mask).long()
    extra = {}
    if layer_sum:
        extra["layer_sum"] = torch.stack(out["encoder_states"]).sum(0).transpose(0, 1)
    return SourceEncoding(**extra,
        states=out["encoder_out"][0].transpose(0, 1),
        padding_mask=padding_mask,
        embedding=out["encoder_embedding"][0],
        start=real.argmax(1),
        length=(real.sum(1) - src_tokens.eq(eos).long().sum(1)).clamp(min=1),
    )


def require_nar_task(task, model_name):
    """nar_refine models are trained and decoded by the nar_translation task only (checked by
    the task's marker attribute, so models need not import tasks: imports flow one way)."""
    if not getattr(task, "is_nar_translation_task", False):
        raise NARConfigError(
            f"{model_name} needs --task nar_translation (got {type(task).__name__}); that task "
            f"owns the non-autoregressive generators"
        )


def target_without_eos(target, pad, eos):
    """fairseq targets are ``y </s> <pad>...``; NAT decoders predict ``y`` only."""
    y = target.masked_fill(target.eq(eos), pad)
    lengths = y.ne(pad).long().sum(1)
    return y[:, : max(int(lengths.max()), 1)], lengths


@register_model("refine_nat")
class RefineNATModel(FairseqEncoderDecoderModel):
    is_nar_refine_model = True
    default_decoding = "refine"

    def __init__(self, args, encoder, decoder, length_predictor):
        super().__init__(encoder, decoder)
        self.args = args
        self.length_predictor = length_predictor
        self.pad = decoder.dictionary.pad()
        self.eos = decoder.dictionary.eos()

    @staticmethod
    def add_args(parser):
        TransformerModel.add_args(parser)
        encoder_init.add_args(parser)
        parser.add_argument("--refine-layers", type=int, metavar="N",
                            help="layers of the shared refinement decoder (decoder 2)")
        parser.add_argument("--max-length-offset", type=int, metavar="N",
                            help="length predictor classifies len(y)-len(x) in [-N, N]")
        parser.add_argument("--length-hidden-dim", type=int, metavar="N",
                            help="hidden size of the 2-layer length MLP")
        parser.add_argument("--length-input", choices=["last", "layers"],
                            help="length predictor input: mean of the last encoder states, or of "
                            "the sum of the embedding and every encoder layer's output")
        parser.add_argument("--length-detach-input", action="store_true",
                            help="the length loss does not train the encoder (the predictor reads "
                            "detached states, as the reference code); measured worse, see "
                            "RefineNATModel.length_logits")
        parser.add_argument("--no-positional-attention", action="store_true",
                            help="no positional attention (queries and keys: positional "
                            "encodings; values: hidden states) in the decoder layers")
        parser.add_argument("--decoder-norm", choices=["pre", "post"],
                            help="LayerNorm placement in decoder 1 and the refinement decoder: "
                            "post (x <- LN(x + sublayer(x)), as the reference code; default) or "
                            "pre (LN before each sublayer plus a final LN; nar_refine < 0.3). In a "
                            "pre-norm refinement decoder the previous tokens' embeddings reach "
                            "the output almost untouched, which makes copying them easy")
        parser.add_argument("--target-eos-slack", type=int, metavar="S",
                            help="shortening: in training the decoders write y followed by </s> "
                            "on a canvas 1 + s positions longer than y (s uniform in 0..S, per "
                            "sentence); decoding writes on the predicted length plus the mean of "
                            "that, 1 + ceil(S/2), and the output ends at its first </s>, so that "
                            "a too-long canvas can be filled with </s> instead of repeated words, "
                            "by decoder 1 or by a refinement step (the reference code trims at "
                            "the first predicted end of sentence); 0 = no </s> in the target, "
                            "a fixed output length (nar_refine < 0.4)")
        parser.add_argument("--refine-embedding", choices=["own", "shared"],
                            help="the refinement decoder's token matrix: own (one matrix, not "
                            "shared with the encoder or decoder 1, embeds its input tokens and "
                            "projects its output, as the reference code; default) or shared (the "
                            "model's one embedding matrix; nar_refine < 0.3)")
        parser.add_argument("--refine-input", choices=["tokens+hidden", "tokens"],
                            help="what the refinement decoder reads: the embedding of the "
                            "previous output plus the previous pass's hidden states (tokens+hidden, "
                            "the paper; default), or the embedding alone (tokens): a refinement "
                            "step is then a denoiser p(y | y_prev, x) of the tokens alone and an "
                            "unchanged output a true fixed point (ablation variant tokens_only)")

    @staticmethod
    def upgrade_checkpoint_args(args):
        """Arguments read from a checkpoint of nar_refine < 0.3, which predate
        --decoder-norm/--refine-embedding: set them to what that model was built with
        (pre-norm, one shared matrix) before the architecture's new defaults apply."""
        if not hasattr(args, "decoder_norm"):
            args.decoder_norm, args.refine_embedding = "pre", "shared"

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        require_nar_task(task, "refine_nat")
        if args.target_eos_slack < 0:
            raise NARConfigError(
                f"--target-eos-slack must be >= 0 (0 = no shortening), got {args.target_eos_slack}")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        enc_emb = Embedding(len(src_dict), args.encoder_embed_dim, src_dict.pad())
        if args.share_all_embeddings:
            if src_dict != tgt_dict:
                raise NARConfigError("--share-all-embeddings needs a joined dictionary (fairseq-preprocess --joined-dictionary)")
            dec_emb = enc_emb
        else:
            dec_emb = Embedding(len(tgt_dict), args.decoder_embed_dim, tgt_dict.pad())
        encoder = TransformerEncoder(args, src_dict, enc_emb)
        decoder = RefineNATDecoder(args, tgt_dict, dec_emb)
        length = LengthPredictor(args.encoder_embed_dim, args.length_hidden_dim,
                                 args.max_length_offset, args.dropout)
        return cls(args, encoder, decoder, length)

    # -- pieces, used by training and by the generator ------------------------------------
    @property
    def eos_slack(self):
        return getattr(self.args, "target_eos_slack", 0) or 0

    def canvas_lengths(self, lengths):
        """Decoder width for predicted (content) lengths. With shortening the training canvas
        is 1 + s longer than y (s ~ U{0..S}); decoding adds the same on average,
        1 + ceil(S / 2), so that the decoder's sense of where the end lies is the one it was
        trained with (one more position only: outputs ended about a word early)."""
        return lengths + self.decoding_extra() if self.eos_slack > 0 else lengths

    def decoding_extra(self):
        """</s> positions after y on a decoding (and a gold, evaluation) canvas: 1 + ceil(S/2)."""
        return 1 + (self.eos_slack + 1) // 2

    def decoder_target(self, target, extra=None):
        """fairseq's target -> (decoder target Y, content lengths T, canvas lengths).

        Without shortening Y is y (no </s>). With ``--target-eos-slack S``, Y is y followed by
        ``extra`` </s> per sentence (a tensor; default ``training_extra``: random in training,
        in evaluation the canvas that decoding would use at the gold length)."""
        y, lengths = target_without_eos(target, self.pad, self.eos)
        if self.eos_slack <= 0:
            return y, lengths, lengths
        canvas = lengths + (self.training_extra(lengths) if extra is None else extra)
        pos = torch.arange(int(canvas.max()), device=y.device)[None, :]
        Y = y.new_full((y.size(0), pos.size(1)), self.pad)
        Y[:, : y.size(1)] = y
        Y = Y.masked_fill((pos >= lengths[:, None]) & (pos < canvas[:, None]), self.eos)
        return Y, lengths, canvas

    def training_extra(self, lengths):
        """1 + s </s> per sentence, s ~ U{0..S} in training; in evaluation the decoding canvas's
        1 + ceil(S/2), so that validation runs the chain decoding runs."""
        if not self.training:
            return torch.full_like(lengths, self.decoding_extra())
        return 1 + torch.randint(0, self.eos_slack + 1, lengths.shape, device=lengths.device)

    def encode(self, src_tokens, src_lengths):
        return encode_source(self.encoder, src_tokens, src_lengths, self.pad, self.eos,
                             layer_sum=self.args.length_input == "layers")

    def length_logits(self, enc):
        """p(T | x) from the mean of the source states (``--length-input``).

        The reference detaches the predictor's input (``--length-detach-input``) and feeds it the
        sum of the embedding and encoder layers (``--length-input layers``). By default the length
        loss also shapes the encoder, at the reference's weight (1 per sentence): on a toy task that
        is what made the length right (docs/measurements.md).
        """
        states = enc["layer_sum"] if "layer_sum" in enc else enc["states"]
        states = states.detach() if self.args.length_detach_input else states
        return self.length_predictor(masked_mean(states, enc["padding_mask"]))

    def initial_step(self, enc, tgt_lengths, project=True):
        return self.decoder.initial_step(enc, tgt_lengths, project)

    def first_output(self, src_tokens, src_lengths, max_len):
        """Decoder 1's argmax output at the most likely length, from the source in one call
        (decoding without refinement steps; one ONNX pass when exported).

        ``max_len``: the longest canvas (an int, or a 0-d tensor). Returns (tokens B x T, their
        log-probabilities B x T, pads beyond each canvas; canvas lengths B; log p(length | x) B).
        """
        enc = self.encode(src_tokens, src_lengths)
        length_logits = self.length_logits(enc)
        lengths = self.length_predictor.predict(length_logits, enc["length"], 1, max_len)
        length_lp = self.length_predictor.log_prob(length_logits, enc["length"], lengths).view(-1)
        lengths = self.canvas_lengths(lengths.view(-1)).clamp(max=max_len)
        tokens, lprobs, _ = self.initial_read(enc, lengths)
        return tokens, lprobs, lengths, length_lp

    def initial_read(self, enc, tgt_lengths):
        """Decoder 1's argmax tokens, their log-probabilities (pads and 0 beyond each length)
        and its hidden states: ``initial_step`` read as decoding reads it, in one call."""
        _, hidden = self.initial_step(enc, tgt_lengths, project=False)
        return (*self.read_output(hidden, self.decoder.output_projection, tgt_lengths), hidden)

    def refine_read(self, enc, prev_tokens, prev_hidden, token_mask, tgt_lengths):
        """One refinement step read as ``initial_read`` reads decoder 1."""
        _, hidden = self.refine_step(enc, prev_tokens, prev_hidden, token_mask, project=False)
        return (*self.read_output(hidden, self.decoder.refine_output, tgt_lengths), hidden)

    def read_output(self, hidden, projection, lengths):
        """Argmax tokens and their log-probabilities of ``projection(hidden)`` (in blocks of
        positions: ``projected_argmax``), pads (and 0) beyond each length."""
        scores, tokens = projected_argmax(hidden, projection)
        beyond = lengths_to_padding_mask(lengths, tokens.size(1))
        return tokens.masked_fill(beyond, self.pad), scores.masked_fill(beyond, 0.0)

    def refine_step(self, enc, prev_tokens, prev_hidden, token_mask=None, project=True):
        return self.decoder.refine_step(enc, prev_tokens, prev_hidden, token_mask, project)

    # -- training ---------------------------------------------------------------------------
    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None,
                plan: Optional[RefinePlan] = None, **kwargs):
        """All K passes of the training chain; returns one output dict per named loss term.

        Every pass is trained to predict the reference y (J = sum_l -log p(y | input_l, x));
        pass l > 0 reads, per sentence, its own previous output with probability alpha
        (J_LVM) or a corrupted reference otherwise (J_DAE).
        """
        assert tgt_tokens is not None, "refine_nat.forward needs the target for training"
        plan = plan or RefinePlan()
        y, tgt_lengths, canvas = self.decoder_target(tgt_tokens)
        enc = self.encode(src_tokens, src_lengths)
        outputs = {
            "length": {
                "out": self.length_logits(enc),
                "tgt": self.length_predictor.target(enc["length"], tgt_lengths),
            }
        }
        tgt_mask = y.ne(self.pad)
        logits, hidden = self.initial_step(enc, canvas)
        outputs["pass_0"] = {"out": logits, "tgt": y, "mask": tgt_mask}
        for k in range(1, plan.passes):
            own = self.sample_or_argmax(logits, plan.stochastic).masked_fill(~tgt_mask, self.pad)
            if plan.corrupt is not None and plan.lvm_alpha < 1.0:
                noisy = plan.corrupt(y, ~tgt_mask, k)
                use_own = torch.rand(y.size(0), 1, device=y.device) < plan.lvm_alpha
                prev = torch.where(use_own, own, noisy)
            else:
                prev = own
            token_mask = repeated_positions(prev, self.pad) if plan.mask_repeats else None
            logits, hidden = self.refine_step(enc, prev, hidden, token_mask)
            outputs[f"pass_{k}"] = {"out": logits, "tgt": y, "mask": tgt_mask}
        return outputs

    @staticmethod
    def sample_or_argmax(logits, stochastic):
        """Deterministic (argmax) or stochastic (sampled) approximation of the latent chain."""
        if not stochastic:
            return vocab_argmax(logits.detach())
        probs = torch.softmax(logits.detach().float(), -1)
        return torch.multinomial(probs.view(-1, probs.size(-1)), 1).view(probs.shape[:-1])

    def max_positions(self):
        return (self.encoder.max_positions(), self.decoder.max_positions())

    def upgrade_state_dict_named(self, state_dict, name):
        """Checkpoints trained before positional attention existed load without it."""
        super().upgrade_state_dict_named(state_dict, name)
        if not any(".positional_attention." in key for key in state_dict):
            self.decoder.initial.positional_attention = None
            self.decoder.refine.positional_attention = None
            self.args.no_positional_attention = True


class RefineNATDecoder(FairseqDecoder):
    """Decoder 1 and the shared refinement decoder 2, over one embedding/output projection."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(dictionary)
        dim = args.decoder_embed_dim
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if args.no_scale_embedding else math.sqrt(dim)
        self.max_target_positions = args.max_target_positions
        if args.encoder_embed_dim != dim:
            raise NARConfigError("refine_nat copies source embeddings: --encoder-embed-dim must equal --decoder-embed-dim")

        def stack(layers):
            return ParallelTransformerStack(
                dim, args.decoder_ffn_embed_dim, args.decoder_attention_heads, layers,
                dropout=args.dropout, cross_attention=True,
                max_positions=args.max_target_positions + dictionary.pad() + 1,
                padding_idx=dictionary.pad(),
                positional_attention=not args.no_positional_attention,
                normalize_before=args.decoder_norm == "pre",
            )

        self.initial = stack(args.decoder_layers)
        self.refine = stack(args.refine_layers)
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if args.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)
        self.refine_reads_hidden = args.refine_input == "tokens+hidden"
        # the refinement decoder's own matrix: embeds its input tokens and projects its output
        # (the reference's decoder[1].out, read as F.embedding(y, out.weight * sqrt(d)))
        self.refine_projection = None
        if args.refine_embedding == "own":
            self.refine_projection = nn.Linear(dim, len(dictionary), bias=False)
            nn.init.normal_(self.refine_projection.weight, mean=0, std=dim**-0.5)
            nn.init.constant_(self.refine_projection.weight[dictionary.pad()], 0)

    @property
    def refine_output(self):
        """The projection of decoder 2's states onto the vocabulary."""
        return self.output_projection if self.refine_projection is None else self.refine_projection

    def initial_step(self, enc, tgt_lengths, project=True):
        """Decoder 1 on a uniform copy of the source embeddings -> (logits, hidden); logits
        None unless ``project``."""
        mask = lengths_to_padding_mask(tgt_lengths.clamp(min=1))
        src_emb = self._shift_to_start(enc["embedding"], enc["start"])
        x = uniform_copy(src_emb, enc["length"], tgt_lengths.clamp(min=1))
        h = self.initial(x, mask, enc["states"], enc["padding_mask"])
        return (self.output_projection(h) if project else None), h

    def refine_step(self, enc, prev_tokens, prev_hidden, token_mask=None, project=True):
        """Decoder 2 on embed(previous output) [+ previous hidden states] -> (logits, hidden);
        logits None unless ``project``. ``token_mask`` (B x T bool): positions read without
        their token (the previous hidden state alone; ``--refine-repeats mask``)."""
        mask = prev_tokens.eq(self.dictionary.pad())
        if self.refine_projection is None:
            emb = self.embed_tokens(prev_tokens)
        else:
            emb = F.embedding(prev_tokens, self.refine_projection.weight, self.dictionary.pad())
        x = self.embed_scale * emb
        if token_mask is not None:
            x = x.masked_fill(token_mask[..., None], 0.0)
        if self.refine_reads_hidden:
            x = x + prev_hidden
        h = self.refine(x, mask, enc["states"], enc["padding_mask"])
        return (self.refine_output(h) if project else None), h

    @staticmethod
    def _shift_to_start(states, start):
        """Align every row to start at its first real token (handles left-padded sources)."""
        if not bool(start.any()):
            return states
        idx = (torch.arange(states.size(1), device=states.device)[None, :] + start[:, None])
        idx = idx.clamp(max=states.size(1) - 1)
        return states.gather(1, idx.unsqueeze(-1).expand(-1, -1, states.size(-1)))

    def forward(self, *args, **kwargs):  # pragma: no cover - the model drives the steps
        raise NotImplementedError("use RefineNATModel.initial_step / refine_step")

    def max_positions(self):
        return self.max_target_positions


def _nat_defaults(args):
    args.share_decoder_input_output_embed = getattr(args, "share_decoder_input_output_embed", True)
    args.share_all_embeddings = getattr(args, "share_all_embeddings", False)
    args.no_scale_embedding = getattr(args, "no_scale_embedding", False)
    args.encoder_normalize_before = getattr(args, "encoder_normalize_before", True)
    args.decoder_normalize_before = getattr(args, "decoder_normalize_before", True)
    args.dropout = getattr(args, "dropout", 0.1)
    args.attention_dropout = getattr(args, "attention_dropout", 0.0)
    args.activation_dropout = getattr(args, "activation_dropout", 0.0)
    args.activation_fn = getattr(args, "activation_fn", "relu")
    args.encoder_learned_pos = getattr(args, "encoder_learned_pos", False)
    args.no_token_positional_embeddings = getattr(args, "no_token_positional_embeddings", False)
    args.adaptive_input = getattr(args, "adaptive_input", False)
    args.max_source_positions = getattr(args, "max_source_positions", 256)
    args.max_target_positions = getattr(args, "max_target_positions", 256)
    args.max_length_offset = getattr(args, "max_length_offset", 50)


@register_model_architecture("refine_nat", "refine_nat")
def base_architecture(args):
    """Base size: 512-d, 6 encoder / 6 decoder-1 / 6 refinement layers (the paper's size)."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 2048)
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 8)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", args.encoder_attention_heads)
    args.refine_layers = getattr(args, "refine_layers", args.decoder_layers)
    args.length_hidden_dim = getattr(args, "length_hidden_dim", args.encoder_embed_dim)
    args.max_length_offset = getattr(args, "max_length_offset", 20)
    args.no_positional_attention = getattr(args, "no_positional_attention", False)
    args.length_detach_input = getattr(args, "length_detach_input", False)
    args.length_input = getattr(args, "length_input", "last")
    args.decoder_norm = getattr(args, "decoder_norm", "post")
    args.refine_embedding = getattr(args, "refine_embedding", "own")
    args.target_eos_slack = getattr(args, "target_eos_slack", 0)
    args.refine_input = getattr(args, "refine_input", "tokens+hidden")
    _nat_defaults(args)


@register_model_architecture("refine_nat", "refine_nat_base")
def refine_nat_base(args):
    base_architecture(args)


@register_model_architecture("refine_nat", "refine_nat_small")
def refine_nat_small(args):
    """For Multi30k on a CPU: 256-d, 3 layers each."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_layers = getattr(args, "encoder_layers", 3)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 3)
    args.refine_layers = getattr(args, "refine_layers", 3)
    base_architecture(args)


@register_model_architecture("refine_nat", "refine_nat_tiny")
def refine_nat_tiny(args):
    """For tests: 64-d, 2 layers each."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 2)
    args.refine_layers = getattr(args, "refine_layers", 2)
    args.dropout = getattr(args, "dropout", 0.0)
    base_architecture(args)
