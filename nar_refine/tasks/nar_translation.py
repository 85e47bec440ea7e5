"""The ``nar_translation`` task: fairseq translation data, parallel models, our generators.

Data loading is fairseq's ``translation`` task unchanged (raw or distilled binarized
targets alike). What this task adds is the choice of decoding algorithm on
``fairseq-generate``'s command line (``--decoding``) and the options of each algorithm.
fairseq's own iterative-decoding flags are reused where they mean the same thing:
``--iter-decode-max-iter`` (refinement / delta steps), ``--iter-decode-force-max-iter``
(no early stop), ``--iter-decode-with-beam`` (length beam), ``--retain-iter-history`` and
``--print-step``.
"""

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from nar_refine.errors import NARConfigError  # noqa: F401  (re-exported for old imports)

logger = logging.getLogger(__name__)

DECODING_CHOICES = ChoiceEnum(["auto", "refine", "prior", "delta", "score", "energy"])


@dataclass
class NARTranslationConfig(TranslationConfig):
    left_pad_source: bool = field(
        default=False,
        metadata={"help": "pad source on the left (parallel decoders copy source positions, "
                  "so nar_translation pads on the right by default)"},
    )
    decoding: DECODING_CHOICES = field(
        default="auto",
        metadata={
            "help": "decoding algorithm: refine (discrete iterative refinement, refine_nat "
            "models), prior (decode the LaNMT prior mean once), delta (delta-posterior "
            "inference), score / energy (continuous refinement with an inference network); "
            "auto picks the model's own default"
        },
    )
    latent_search_size: int = field(
        default=1,
        metadata={
            "help": "latent search: number of latent candidates per sentence (prior mean plus "
            "scaled noise), refined in one batch and rescored; 1 disables the search"
        },
    )
    latent_search_noise: float = field(
        default=0.5,
        metadata={"help": "latent search: candidates are mu + noise * sigma * N(0, I)"},
    )
    delta_no_ascent_check: bool = field(
        default=False,
        metadata={
            "help": "delta inference: run the plain chain of the paper; by default a step that "
            "lowers log p(y|z,x) + log p(z|x) is undone and the sentence stops there"
        },
    )
    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "checkpoint of an autoregressive fairseq translation model that rescores "
            "latent-search candidates (sum of token log-probabilities); without it candidates "
            "are scored by the NAT's own log p(y|z,x)"
        },
    )
    score_steps: int = field(
        default=1, metadata={"help": "score/energy inference: number of updates z <- z + alpha*S(z;x)"}
    )
    score_alpha: float = field(
        default=1.0, metadata={"help": "score/energy inference: step size alpha"}
    )
    score_line_search: Optional[str] = field(
        default=None,
        metadata={
            "help": "score/energy inference: comma-separated step sizes tried at each step, "
            "the best kept by log p(y|z,x) (costs one softmax per candidate); e.g. 0.5,1,2"
        },
    )
    lanmt_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "score/energy models: use this LaNMT checkpoint instead of the path "
            "recorded in the inference network (e.g. after moving files)"
        },
    )


@register_task("nar_translation", dataclass=NARTranslationConfig)
class NARTranslationTask(TranslationTask):
    """Translation with non-autoregressive latent-variable / refinement models."""

    cfg: NARTranslationConfig

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not getattr(model, "is_nar_refine_model", False):
            raise NARConfigError(
                f"task nar_translation trains nar_refine models (refine_nat, lanmt, "
                f"score_net/energy_net); got {type(model).__name__}. Use --task translation "
                f"for autoregressive models or --task translation_lev for fairseq's CMLM/NAT."
            )
        return model

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        # Criteria with schedules (the KL budget) need the update number.
        if hasattr(criterion, "set_update_num"):
            criterion.set_update_num(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        from nar_refine.inference import build_nar_generator

        return build_nar_generator(self, models, args)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if constraints is not None or prefix_tokens is not None:
            raise NARConfigError("nar_translation decoders do not support prefixes or constraints")
        self.check_sources(sample)
        with torch.no_grad():
            return generator.generate(models, sample)

    def check_sources(self, sample):
        """Refuse empty source lines with the ids to fix, instead of an obscure failure."""
        src = sample["net_input"]["src_tokens"]
        special = src.eq(self.src_dict.pad()) | src.eq(self.src_dict.eos()) | src.eq(self.src_dict.bos())
        empty = (~special).sum(1).eq(0)
        if empty.any():
            ids = sample["id"][empty].tolist()
            raise NARConfigError(
                f"empty source line(s) at sample id(s) {ids}: a non-autoregressive model "
                f"cannot predict a length from nothing; remove or fill these lines"
            )
