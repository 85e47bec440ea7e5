"""Inference networks for continuous-space refinement (Lee, Shu & Cho 2020).

On top of a trained, frozen LaNMT (``models/lanmt.py``) a small network learns where delta
inference would move a latent z, so that one cheap update replaces several decodes:

    score network   S(z; x)                      -> B x S x d   (a vector per source position)
    energy network  E(z; x) in R,  S = -dE/dz   -> gradient descent on E

    refinement      z <- z + alpha * S(z; x)     (only the final z is decoded: one softmax)

Network: Linear(latent -> hidden), a few Transformer layers over the latent positions (the
LaNMT's source positions) that attend to the LaNMT's source states, Linear(hidden -> latent)
(score) or a per-position Linear(hidden -> 1) summed over positions (energy).

The LaNMT is loaded in ``build_model`` from its own checkpoint (``--lanmt-path``, an option of
the ``nar_translation`` task, recorded in the model config), frozen (no gradients, always in
eval mode) and kept out of this model's state dict: a checkpoint of the inference network
holds only its own weights plus ``lanmt_fingerprint`` (SHA-256 of the LaNMT's parameters).
Loading it re-reads the LaNMT from the recorded path (or from ``--lanmt-path`` given at
generation time) and refuses, with :class:`NARConfigError`, a LaNMT that is missing or whose
parameters differ from the ones the network was trained on.
"""

import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture

from nar_refine.errors import NARConfigError
from nar_refine.modules import ParallelTransformerStack
from nar_refine.modules.parallel_transformer import lengths_to_padding_mask

logger = logging.getLogger(__name__)

# what a frozen LaNMT must offer the inference networks and their generators
LANMT_METHODS = ("encode", "prior", "posterior", "decode", "delta_step", "log_prior")


SCALE_DRAWS = ("uniform", "fixed")


@dataclass
class ScorePlan:
    """How ``forward`` draws training pairs (start z, delta-inference target); see ``forward``.

    Defaults are the reference's (zomux/lanmt-ebm): u ~ U(0, 1) per batch, k = 4.
    """

    noise_scale: float = 1.0  # s: start points z = mu + u * s * sigma * eps
    scale_draw: str = "uniform"  # u ~ U(0, 1) once per batch ("uniform") or u = 1 ("fixed")
    delta_steps: int = 4  # k: delta-inference steps that define the target

    def __post_init__(self):
        if self.scale_draw not in SCALE_DRAWS:
            raise ValueError(f"scale_draw must be one of {SCALE_DRAWS}, got {self.scale_draw!r}")

    def draw_scale(self):
        """u * s for one batch: U(0, 1) puts starts at and near the prior mean, where inference
        starts (a fixed u = 1 keeps every start about sqrt(d) sigma away from it)."""
        u = float(torch.rand(())) if self.scale_draw == "uniform" else 1.0  # CPU draw: no sync
        return u * self.noise_scale


def parameter_fingerprint(module):
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s parameters.

    Returns a 32-byte uint8 tensor. Parameters only: some fairseq buffers are uninitialised
    memory until a checkpoint is loaded into them.
    """
    digest = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(p.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return torch.tensor(list(digest.digest()), dtype=torch.uint8)


def load_frozen_lanmt(path, task):
    """Load the LaNMT checkpoint at ``path`` with ``task`` and freeze it.

    Raises :class:`NARConfigError` when the file is missing or holds no LaNMT.
    """
    from fairseq import checkpoint_utils
    from fairseq.models import ARCH_MODEL_REGISTRY

    if not path:
        raise NARConfigError(
            "score_net/energy_net need a trained LaNMT: pass its checkpoint with --lanmt-path "
            "(task nar_translation)"
        )
    if not os.path.isfile(path):
        raise NARConfigError(
            f"the LaNMT checkpoint {path} of this inference network does not exist; "
            f"point --lanmt-path to the LaNMT it was trained on"
        )
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    model_cfg = state["cfg"]["model"] if state.get("cfg") is not None else state.get("args")
    arch = getattr(model_cfg, "arch", None) or getattr(model_cfg, "_name", None)
    if arch is None and isinstance(model_cfg, dict):
        arch = model_cfg.get("arch") or model_cfg.get("_name")
    cls = ARCH_MODEL_REGISTRY.get(arch)
    # checked before building: an inference network given here would load itself forever
    if cls is None or issubclass(cls, InferenceNetworkModel) or not all(
            hasattr(cls, name) for name in LANMT_METHODS):
        raise NARConfigError(
            f"{path} holds a {arch} model, not a LaNMT; --lanmt-path must name the checkpoint "
            f"of a model trained with --arch lanmt*"
        )
    try:
        models, _ = checkpoint_utils.load_model_ensemble([path], task=task, state=state)
    except RuntimeError as err:  # fairseq's message for weights of the wrong shapes
        raise NARConfigError(
            f"the LaNMT {path} does not fit this task's data (trained with other dictionaries?): {err}"
        ) from err
    lanmt = models[0]
    lanmt.eval()
    for p in lanmt.parameters():
        p.requires_grad_(False)
    return lanmt


class InferenceNetwork(nn.Module):
    """Linear(d -> H), Transformer layers over latent positions attending to the source
    states, then Linear(H -> d) (``scalar=False``) or Linear(H -> 1) per position."""

    def __init__(self, latent_dim, context_dim, embed_dim, ffn_dim, heads, layers, dropout,
                 max_positions, padding_idx, scalar=False):
        super().__init__()
        self.latent_in = nn.Linear(latent_dim, embed_dim)
        # the LaNMT's source states are read at the network's own width
        self.context_in = nn.Linear(context_dim, embed_dim) if context_dim != embed_dim else None
        self.layers = ParallelTransformerStack(
            embed_dim, ffn_dim, heads, layers, dropout=dropout, cross_attention=True,
            max_positions=max_positions, padding_idx=padding_idx,
        )
        # an energy's bias would get no gradient (dE/dz ignores it): none, for DDP's sake
        self.out = nn.Linear(embed_dim, 1, bias=False) if scalar else nn.Linear(embed_dim, latent_dim)

    def forward(self, z, padding_mask, context, context_padding_mask):
        """z: B x S x d on the source positions; returns B x S x (d or 1), 0 at pads."""
        ctx = self.context_in(context) if self.context_in is not None else context
        h = self.layers(self.latent_in(z), padding_mask, ctx, context_padding_mask)
        return self.out(h).masked_fill(padding_mask.unsqueeze(-1), 0.0)


@register_model("score_net")
class InferenceNetworkModel(BaseFairseqModel):
    """Score network S(z;x) over a frozen LaNMT (``energy_net``: the energy variant)."""

    is_nar_refine_model = True
    nar_family = "score_net"
    default_decoding = "score"
    energy = False

    def __init__(self, args, lanmt, net):
        super().__init__()
        self.args = args
        self.lanmt = lanmt
        self.net = net
        self.register_buffer("lanmt_fingerprint", parameter_fingerprint(lanmt))
        self._lanmt_fingerprint = self.lanmt_fingerprint.clone()  # as loaded, before any .half()
        self._register_state_dict_hook(_drop_lanmt_from_state_dict)

    @staticmethod
    def add_args(parser):
        # --lanmt-path is an option of the nar_translation task (shared with generation, where
        # it overrides the path recorded in the checkpoint); it lands in the model config too.
        parser.add_argument("--inference-embed-dim", type=int, metavar="N",
                            help="hidden size of the inference network")
        parser.add_argument("--inference-ffn-embed-dim", type=int, metavar="N",
                            help="feed-forward size of its Transformer layers")
        parser.add_argument("--inference-layers", type=int, metavar="N",
                            help="Transformer layers over the latent positions")
        parser.add_argument("--inference-attention-heads", type=int, metavar="N",
                            help="attention heads of those layers")
        parser.add_argument("--inference-dropout", type=float, metavar="D",
                            help="dropout inside the inference network")

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        # generation-time --lanmt-path overrides the path recorded at training time
        path = getattr(task.cfg, "lanmt_path", None) or getattr(args, "lanmt_path", None)
        lanmt = load_frozen_lanmt(path, task)
        args.lanmt_path = os.path.abspath(path)  # recorded in the checkpoint's model config
        logger.info("%s: frozen LaNMT %s (%d parameters)", cls.nar_family, args.lanmt_path,
                    sum(p.numel() for p in lanmt.parameters()))
        context_dim = lanmt.args.encoder_embed_dim
        net = InferenceNetwork(
            lanmt.latent_dim, context_dim, args.inference_embed_dim, args.inference_ffn_embed_dim,
            args.inference_attention_heads, args.inference_layers, args.inference_dropout,
            max_positions=args.max_source_positions + task.source_dictionary.pad() + 1,
            padding_idx=task.source_dictionary.pad(), scalar=cls.energy,
        )
        return cls(args, lanmt, net)

    # -- the frozen LaNMT ---------------------------------------------------------------------
    def train(self, mode=True):
        super().train(mode)
        self.lanmt.eval()  # frozen: no dropout, whatever the trainer asks
        return self

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load the network's own weights after checking the LaNMT is the one it was trained on."""
        saved = state_dict.get("lanmt_fingerprint")
        if saved is not None and not torch.equal(saved.cpu(), self._lanmt_fingerprint):
            raise NARConfigError(
                f"the LaNMT at {self.args.lanmt_path} is not the one this inference network was "
                f"trained on (parameter fingerprint {_hex(self._lanmt_fingerprint)[:16]}..., "
                f"checkpoint expects {_hex(saved)[:16]}...); pass the right one with --lanmt-path"
            )
        full = OrderedDict(state_dict)
        # the LaNMT is not saved with the network: load its current weights onto itself
        for key, value in self.lanmt.state_dict(prefix="lanmt.").items():
            full.setdefault(key, value)
        return super().load_state_dict(full, strict=strict, model_cfg=model_cfg, args=args)

    def max_positions(self):
        return self.lanmt.max_positions()

    # -- the LaNMT's pieces, so LaNMT generators can drive this model --------------------------
    @property
    def latent_dim(self):
        return self.lanmt.latent_dim

    @property
    def output_projection(self):
        return self.lanmt.output_projection

    @torch.no_grad()
    def encode(self, src_tokens, src_lengths):
        return self.lanmt.encode(src_tokens, src_lengths)

    def prior(self, enc):
        return self.lanmt.prior(enc)

    def posterior(self, enc, y):
        return self.lanmt.posterior(enc, y)

    def predict_lengths(self, enc, z):
        return self.lanmt.predict_lengths(enc, z)

    def decode_logits(self, enc, z, tgt_lengths):
        return self.lanmt.decode_logits(enc, z, tgt_lengths)

    def decode(self, enc, z, scores=True):
        return self.lanmt.decode(enc, z, scores=scores)

    def decode_at(self, enc, z, lengths):
        """The LaNMT's ``decode`` at given target lengths instead of predicted ones: argmax y of
        p(y|z,x) (special symbols excluded); returns (tokens, token log-probs), pad / 0 at pads.
        Used to compare latents at one fixed length (the score line search)."""
        scores, tokens = self.lanmt.decode_read(enc, z, lengths)
        pad_mask = lengths_to_padding_mask(lengths, tokens.size(1))
        return tokens.masked_fill(pad_mask, self.lanmt.pad), scores.masked_fill(pad_mask, 0.0)

    def delta_step(self, enc, z):
        return self.lanmt.delta_step(enc, z)

    def log_prior(self, enc, z, prior=None):
        return self.lanmt.log_prior(enc, z, prior=prior)

    # -- the inference network ------------------------------------------------------------------
    def score(self, enc, z):
        """S(z; x), B x S x d (0 at source pads): the predicted move of delta inference."""
        # z is fp32 (the LaNMT's Gaussian heads are); the network runs in the model dtype
        return self.net(z.to(enc["states"].dtype), enc["padding_mask"], enc["states"], enc["padding_mask"])

    def score_step(self, enc, z, alpha=1.0):
        """One refinement update z <- z + alpha * S(z; x) (Lee, Shu & Cho 2020, eq. 9)."""
        return z + alpha * self.score(enc, z)

    def prior_output(self, src_tokens, src_lengths):
        """The LaNMT's decoding from the prior mean (no score step), in one call."""
        return self.lanmt.prior_output(src_tokens, src_lengths)

    def score_output(self, src_tokens, src_lengths, alpha):
        """One score step from the prior mean, decoded (``--decoding score --score-steps 1``),
        from the source in one call; returns as the LaNMT's ``prior_output``."""
        enc = self.encode(src_tokens, src_lengths)
        mu, sigma = self.prior(enc)
        return self.lanmt.decoded_output(enc, mu, sigma, self.score_step(enc, mu, alpha).to(mu.dtype))

    @torch.no_grad()
    def delta_target(self, enc, z, steps):
        """delta = z_k - z, z_k after ``steps`` delta-inference steps from z (the regression target)."""
        z_k = z
        for _ in range(steps):
            z_k = self.lanmt.delta_step(enc, z_k)[0]
        return z_k - z

    def start_points(self, mu, sigma, plan):
        """Training start points z = mu + u * s * sigma * eps (eps ~ N(0, I); u * s from
        ``plan.draw_scale``, one per batch as in the reference). Returns (z, u * s)."""
        scale = plan.draw_scale()
        return mu + scale * sigma * torch.randn_like(mu), scale

    def forward(self, src_tokens, src_lengths, prev_output_tokens=None, tgt_tokens=None,
                plan: ScorePlan = None, **kwargs):
        """One training batch for the ``score_matching`` criterion, all in one call.

        z from ``start_points`` around the prior p(z|x); delta = (k delta-inference steps from
        z) - z, both without gradients (the LaNMT is frozen); S(z; x) with them. ``start`` (z)
        and ``start_scale`` (u * s) are returned for logging and inspection.
        """
        plan = plan or ScorePlan()
        enc = self.encode(src_tokens, src_lengths)
        with torch.no_grad():
            mu, sigma = self.lanmt.prior(enc)
            z, scale = self.start_points(mu, sigma, plan)
            delta = self.delta_target(enc, z, plan.delta_steps)
        return {"score": {"out": self.score(enc, z), "tgt": delta, "mask": ~enc["padding_mask"],
                          "start": z, "start_scale": scale}}


@register_model("energy_net")
class EnergyNetworkModel(InferenceNetworkModel):
    """Energy network E(z;x); its score is S = -dE/dz (gradient descent on the energy)."""

    nar_family = "energy_net"
    default_decoding = "energy"
    energy = True

    def energy_value(self, enc, z):
        """E(z; x) per sentence (B): per-position energies summed over real positions, so
        that -dE/dz_i does not shrink with the sentence length."""
        return self.net(z.to(enc["states"].dtype), enc["padding_mask"], enc["states"],
                        enc["padding_mask"]).sum((1, 2))

    def score(self, enc, z):
        """S = -dE/dz; a differentiable function of the weights while training (create_graph)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # fused attention kernels lack the double backward that training (create_graph) needs;
        # decoding takes a single gradient and may use them
        kernels = sdpa_kernel([SDPBackend.MATH]) if self.training else contextlib.nullcontext()
        with torch.enable_grad(), kernels:
            z = z.detach().requires_grad_(True)
            energy = self.energy_value(enc, z)
            (grad,) = torch.autograd.grad(energy.sum(), z, create_graph=self.training)
        return -grad


def _drop_lanmt_from_state_dict(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "lanmt.")]:
        del state_dict[key]
    return state_dict


def _hex(fingerprint):
    return bytes(fingerprint.cpu().tolist()).hex()


def _defaults(args):
    args.inference_embed_dim = getattr(args, "inference_embed_dim", 512)
    args.inference_ffn_embed_dim = getattr(args, "inference_ffn_embed_dim", 2 * args.inference_embed_dim)
    args.inference_layers = getattr(args, "inference_layers", 3)
    args.inference_attention_heads = getattr(args, "inference_attention_heads", 8)
    args.inference_dropout = getattr(args, "inference_dropout", 0.1)
    args.max_source_positions = getattr(args, "max_source_positions", 256)
    args.max_target_positions = getattr(args, "max_target_positions", 256)


@register_model_architecture("score_net", "score_net")
def base_architecture(args):
    """Base size: 512-d, 3 layers (beside a base LaNMT)."""
    _defaults(args)


@register_model_architecture("score_net", "score_net_small")
def score_net_small(args):
    """For Multi30k on a CPU: 256-d, 2 layers."""
    args.inference_embed_dim = getattr(args, "inference_embed_dim", 256)
    args.inference_layers = getattr(args, "inference_layers", 2)
    args.inference_attention_heads = getattr(args, "inference_attention_heads", 4)
    _defaults(args)


@register_model_architecture("score_net", "score_net_tiny")
def score_net_tiny(args):
    """For tests: 32-d, 1 layer, no dropout."""
    args.inference_embed_dim = getattr(args, "inference_embed_dim", 32)
    args.inference_layers = getattr(args, "inference_layers", 1)
    args.inference_attention_heads = getattr(args, "inference_attention_heads", 2)
    args.inference_dropout = getattr(args, "inference_dropout", 0.0)
    _defaults(args)


@register_model_architecture("energy_net", "energy_net")
def energy_base_architecture(args):
    _defaults(args)


@register_model_architecture("energy_net", "energy_net_small")
def energy_net_small(args):
    score_net_small(args)


@register_model_architecture("energy_net", "energy_net_tiny")
def energy_net_tiny(args):
    score_net_tiny(args)
