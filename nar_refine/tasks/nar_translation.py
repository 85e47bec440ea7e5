"""The ``nar_translation`` task: fairseq translation data, parallel models, our generators.

Data loading is fairseq's ``translation`` task unchanged (raw or distilled binarized
targets alike). What this task adds is the choice of decoding algorithm on
``fairseq-generate``'s command line (``--decoding``) and the options of each algorithm.
fairseq's own iterative-decoding flags are reused where they mean the same thing:
``--iter-decode-max-iter`` (refinement / delta steps, at most 1000, as ``--score-steps``),
``--iter-decode-force-max-iter``
(no early stop), ``--iter-decode-with-beam`` (length beam), ``--retain-iter-history`` and
``--print-step``.

Checkpoint selection by validation BLEU (``fairseq-train --eval-bleu``, with the companion
options of fairseq's ``translation`` task: ``--eval-bleu-args``, ``--eval-bleu-detok``,
``--eval-bleu-remove-bpe``, ``--eval-tokenized-bleu``, ``--eval-bleu-print-samples``): every
validation decodes with the model's own generator, the one ``fairseq-generate`` would build
(``--decoding``, default auto), configured by the JSON of ``--eval-bleu-args`` (fairseq's
``iter_decode_*`` options and this task's decoding options, e.g.
``{"iter_decode_max_iter": 4}`` or ``{"decoding": "prior"}``); ``bleu`` (from summed n-gram
counts, as fairseq's translation task) and ``decode_steps`` (mean refinement steps per
sentence) join the validation log, and ``--best-checkpoint-metric bleu
--maximize-best-checkpoint-metric`` makes checkpoint_best.pt follow BLEU.
"""

import contextlib
import copy
import json
import logging
import os
import sys
from argparse import Namespace
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.distributed as dist
from fairseq import metrics, utils
from fairseq.data import encoders
from fairseq.dataclass import ChoiceEnum
from fairseq.dataclass.configs import GenerationConfig
from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY
from fairseq.tasks import FairseqTask, register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from nar_refine import dictionaries, training_checks
from nar_refine.errors import NARConfigError  # noqa: F401  (re-exported for old imports)
from nar_refine.inference import build_nar_generator
from nar_refine.inference.adaptive_refinement import REPEAT_MODES
from nar_refine.inference.compiled import with_exported_passes
from nar_refine.inference.hypotheses import remove_repeats
from nar_refine.models import encoder_init
from nar_refine.tasks.input_lines import (
    InputLinesDataset, checked_lines, empty_hypothesis, is_input_lines_batch,
)

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
    adaptive_window: int = field(
        default=2,
        metadata={
            "help": "refine decoding, adaptive stop: a step is stale when its output equals one "
            "of the W outputs before it; a sentence stops after W consecutive stale steps (a "
            "fixed point held W steps or a cycle of length <= W). 1 = stop at the first "
            "unchanged step (fairseq's rule; too early for refine_nat, whose decoder also reads "
            "the previous hidden state); 0 = never stop early (as --iter-decode-force-max-iter)"
        },
    )
    adaptive_min_steps: int = field(
        default=3,
        metadata={
            "help": "refine decoding, adaptive stop: run at least this many refinement steps "
            "before a sentence may stop; 0 = no minimum (values up to --adaptive-window change "
            "nothing: W stale steps take at least W steps)"
        },
    )
    refine_repeats: ChoiceEnum(list(REPEAT_MODES)) = field(
        default="mask",
        metadata={
            "help": "refine decoding: what decoder 2 reads at a token equal to the one before "
            "it: mask (default: no token, only the previous hidden state, so the step predicts "
            "that word again from its context, as CMLM re-predicts masked positions); keep (the "
            "token, the paper's decoding); drop (the token deleted and the gap closed: the "
            "sentence gets shorter). A repeat made by the last step stays (--remove-repeats "
            "drops it after decoding)"
        },
    )
    latent_search_size: int = field(
        default=1,
        metadata={
            "help": "latent search: number of latent candidates per sentence (prior mean plus "
            "scaled noise), refined in one batch and rescored; 1 disables the search (>= 1; "
            "latent decodings only: refine_nat has no latent, its candidates are the length "
            "beam, --iter-decode-with-beam)"
        },
    )
    latent_search_noise: float = field(
        default=0.5,
        metadata={"help": "latent search: candidates are mu + noise * sigma * N(0, I) (finite, "
                  ">= 0; 0 = every candidate is the prior mean)"},
    )
    latent_search_max_tokens: int = field(
        default=0,
        metadata={"help": "latent search: decode the B x m candidates of a batch in chunks of whole "
                  "sentences with at most this many candidate source tokens (m x source length "
                  "per sentence), so that a large m does not run out of memory; --max-tokens "
                  "does not see the m copies. 0 = one chunk, unless the batch would not fit in "
                  "memory (see --decode-memory-gb) (>= 0)"},
    )
    decode_memory_gb: float = field(
        default=0.0,
        metadata={"help": "memory (GB) that decoding one batch may take: the candidates of "
                  "latent search (B x m) or of the length beam (B x L) are estimated before "
                  "they are allocated; a batch that needs more is decoded in chunks of whole "
                  "sentences, and a sentence that alone needs more is refused. 0 = 80% of the "
                  "memory available when decoding starts (free CUDA memory, or the system's "
                  "available memory on a CPU) (>= 0)"},
    )
    delta_ascent_check: bool = field(
        default=False,
        metadata={
            "help": "delta inference: undo a step that lowers log p(y|z,x) + log p(z|x) and stop "
            "the sentence there; by default the plain chain of the paper runs (stop when y is "
            "unchanged). The objective sums token log-probs over lengths that change between "
            "steps, so the check also undoes steps that lengthen the output"
        },
    )
    teacher_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "checkpoint of an autoregressive fairseq translation model that rescores "
            "candidates by the sum of its token log-probabilities: latent-search candidates "
            "(without it they are scored by the NAT's own log p(y|z,x)), and with --decoding "
            "refine the length-beam candidates of --iter-decode-with-beam L > 1 (without it "
            "refine_nat ranks them itself); or a folder made by ct2-fairseq-converter from such "
            "a model, which CTranslate2 then runs"
        },
    )
    score_steps: int = field(
        default=1, metadata={"help": "score/energy inference: number of updates "
                             "z <- z + alpha*S(z;x) (0 to 1000; 0 = decode the prior mean)"}
    )
    score_alpha: float = field(
        default=1.0, metadata={"help": "score/energy inference: step size alpha (positive, "
                               "finite)"}
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
    remove_repeats: bool = field(
        default=False,
        metadata={
            "help": "drop every output token equal to the one before it, before detokenisation, "
            "as the papers' evaluations do (dl4mt-nonauto's --remove_repeats; lanmt always "
            "does); off by default, so that BLEU measures what the model wrote"
        },
    )
    truncate_long_inputs: bool = field(
        default=False,
        metadata={
            "help": "fairseq-interactive / Python API: translate the first tokens of a line "
            "longer than the model's source positions (with a warning naming the line); by "
            "default such a line is reported and answered with an empty hypothesis"
        },
    )
    onnx_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "decode with the model's passes exported to this folder by "
            "scripts/export_onnx.py (ONNX Runtime), the same decoding algorithm and options; "
            "refused when they were exported from another checkpoint"
        },
    )
    onnx_provider: ChoiceEnum(["auto", "cpu", "cuda"]) = field(
        default="auto",
        metadata={
            "help": "with --onnx-dir: ONNX Runtime's execution provider, cpu or cuda (the "
            "onnxruntime-gpu package); auto = cuda when the model is on a GPU and the provider "
            "is installed, else cpu"
        },
    )


# fairseq-generate options that nar_translation's generators read (with fairseq's defaults)
GENERATION_KEYS = ("iter_decode_max_iter", "iter_decode_force_max_iter",
                   "iter_decode_with_beam")
# options of this task that build the model rather than configure its decoding
MODEL_KEYS = ("lanmt_path",)


def decoding_option_names():
    """The task's own decoding options (NARTranslationConfig minus fairseq's translation data
    options and the model-building ones): keys that ``--eval-bleu-args`` may set."""
    inherited = {f.name for f in fields(TranslationConfig)}
    return sorted(f.name for f in fields(NARTranslationConfig)
                  if f.name not in inherited and f.name not in MODEL_KEYS)


def parse_eval_bleu_args(task_cfg):
    """``--eval-bleu-args`` JSON -> (generation Namespace, task config with the decoding options).

    Keys are checked against what the generators read and values against the options' types,
    as fairseq-generate's own parser would check them: :class:`NARConfigError` otherwise.
    """
    text = task_cfg.eval_bleu_args or "{}"
    try:
        given = json.loads(text)
    except json.JSONDecodeError as err:
        raise NARConfigError(f"--eval-bleu-args is not valid JSON ({err}): {text}") from None
    if not isinstance(given, dict):
        raise NARConfigError(f"--eval-bleu-args wants a JSON object of options, got {text}")
    task_keys = decoding_option_names()
    unknown = sorted(set(given) - set(GENERATION_KEYS) - set(task_keys))
    if unknown:
        raise NARConfigError(
            f"--eval-bleu-args: unknown key(s) {unknown}; the nar_translation generators read "
            f"fairseq-generate's {list(GENERATION_KEYS)} and this task's {task_keys}"
        )
    gen_values = {k: v for k, v in given.items() if k in GENERATION_KEYS}
    task_values = {k: v for k, v in given.items() if k in task_keys}
    gen = _checked_merge(OmegaConf.structured(GenerationConfig), gen_values)
    if gen.iter_decode_max_iter < 0 or gen.iter_decode_with_beam < 1:
        raise NARConfigError(
            f"--eval-bleu-args: iter_decode_max_iter must be >= 0 and iter_decode_with_beam "
            f">= 1, got {text}"
        )
    base = task_cfg if isinstance(task_cfg, DictConfig) else OmegaConf.structured(task_cfg)
    cfg = _checked_merge(copy.deepcopy(base), task_values)
    return Namespace(**{k: gen[k] for k in gen_values}), cfg


def _checked_merge(cfg, values):
    """cfg with ``values`` set one key at a time, a type error naming its key."""
    for key, value in values.items():
        try:
            cfg = OmegaConf.merge(cfg, {key: value})
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise NARConfigError(f"--eval-bleu-args: bad value for {key}: {reason}") from None
    return cfg


@register_task("nar_translation", dataclass=NARTranslationConfig)
class NARTranslationTask(TranslationTask):
    """Translation with non-autoregressive latent-variable / refinement models."""

    cfg: NARTranslationConfig
    is_nar_translation_task = True  # what models check (they do not import tasks)

    def build_model(self, cfg, from_checkpoint=False):
        # FairseqTask's build, not TranslationTask's: that one would build a validation
        # generator for every model built with this task, the frozen LaNMT that a score_net
        # loads inside its own build_model too; here only the outermost model gets one.
        depth = getattr(self, "_model_build_depth", 0)
        if depth == 0 and not from_checkpoint:  # training builds a fresh model
            refuse_lone_launched_process()
            training_checks.before_training(self, cfg)  # options, precision, --save-dir lock
        self._model_build_depth = depth + 1
        if from_checkpoint:  # arguments saved by an older version: build the model it was
            upgrade_checkpoint_args(cfg)
        init_path = None if from_checkpoint else getattr(cfg, "init_encoder_from", None)
        if init_path:  # the encoder's options follow the checkpoint it starts from
            init_state = encoder_init.read_encoder_checkpoint(init_path)
            with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.ExitStack():
                ARCH_CONFIG_REGISTRY[getattr(cfg, "arch", None) or cfg._name](cfg)
                encoder_init.adopt_encoder_style(cfg, init_state, init_path)
        try:
            model = FairseqTask.build_model(self, cfg, from_checkpoint)
        finally:
            self._model_build_depth = depth
        if init_path:
            copied = encoder_init.load_encoder(model, init_state, self, init_path)
            logger.info("encoder initialised from %s (%d tensors)", init_path, copied)
        if not getattr(model, "is_nar_refine_model", False):
            raise NARConfigError(
                f"task nar_translation trains nar_refine models (refine_nat, lanmt, "
                f"score_net/energy_net); got {type(model).__name__}. Use --task translation "
                f"for autoregressive models or --task translation_lev for fairseq's CMLM/NAT."
            )
        if depth == 0:  # the source limit of lines given for translation
            self.model_max_positions = utils.resolve_max_positions(
                getattr(self, "model_max_positions", None), model.max_positions())
        if self.cfg.eval_bleu and depth == 0:
            detok_args = json.loads(self.cfg.eval_bleu_detok_args or "{}")
            self.tokenizer = encoders.build_tokenizer(
                Namespace(tokenizer=self.cfg.eval_bleu_detok, **detok_args))
            self.sequence_generator = self.build_validation_generator(model)
        return model

    def build_validation_generator(self, model):
        """The generator ``fairseq-generate`` would build for ``model`` (``--decoding``),
        with the options of ``--eval-bleu-args`` (see :func:`parse_eval_bleu_args`)."""
        gen_args, decoding_cfg = parse_eval_bleu_args(self.cfg)
        # the generator builders read the task's decoding options from self.cfg
        task_cfg, self.cfg = self.cfg, decoding_cfg
        try:
            generator = self.build_generator([model], gen_args)
        except NARConfigError as err:
            raise NARConfigError(
                f"validation BLEU (--eval-bleu-args {task_cfg.eval_bleu_args}): {err}") from None
        finally:
            self.cfg = task_cfg
        logger.info("validation BLEU decodes with %s, --decoding %s, --eval-bleu-args %s",
                    type(getattr(generator, "generator", generator)).__name__,  # in its DecodeGuard
                    decoding_cfg.decoding, task_cfg.eval_bleu_args)
        return generator

    def valid_step(self, sample, model, criterion):
        """Validation loss and, with ``--eval-bleu``, BLEU n-gram counts of the model's own
        decoding (fairseq's translation task) plus its refinement steps. The generators
        switch the model to eval mode; the mode it came in is restored."""
        was_training = model.training
        self._decode_steps = None
        try:
            loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        finally:
            model.train(was_training)
        if self.cfg.eval_bleu and self._decode_steps is not None:
            logging_output["_decode_steps"], logging_output["_decode_sents"] = self._decode_steps
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        sents = sum(log.get("_decode_sents", 0) for log in logging_outputs)
        if sents > 0:
            steps = sum(log.get("_decode_steps", 0) for log in logging_outputs)
            metrics.log_scalar("_decode_steps", steps)
            metrics.log_scalar("_decode_sents", sents)
            metrics.log_derived(
                "decode_steps",
                lambda meters: round(meters["_decode_steps"].sum / meters["_decode_sents"].sum, 2))

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        # Criteria with schedules (the KL budget) need the update number.
        if hasattr(criterion, "set_update_num"):
            criterion.set_update_num(update_num)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def build_criterion(self, cfg, from_checkpoint=False):
        training_checks.check_criterion_config(cfg)  # non-finite or negative numbers
        return super().build_criterion(cfg, from_checkpoint)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """fairseq's translation data; a split with empty source lines (or, for training,
        empty target lines) is refused here, before any decoding or update."""
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        training_checks.refuse_empty_lines(self, split, self.datasets[split],
                                           training=getattr(self, "_nar_training", False))

    def load_state_dict(self, state_dict):
        """The ``task_state`` of a checkpoint being loaded with this task's data: refuse it
        when the dictionaries recorded in it are not this task's (``nar_refine.dictionaries``)."""
        dictionaries.check_loaded_checkpoint(self, state_dict)
        super().load_state_dict(state_dict)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        return with_exported_passes(self, models, build_nar_generator(self, models, args))

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if constraints is not None or prefix_tokens is not None:
            raise NARConfigError("nar_translation decoders do not support prefixes or constraints")
        empty = self.empty_sources(sample)
        if empty.any() and not is_input_lines_batch(sample):
            ids = sample["id"][empty].tolist()
            raise NARConfigError(
                f"empty source line(s) at sample id(s) {ids}: a non-autoregressive model "
                f"cannot predict a length from nothing; remove or fill these lines"
            )
        with torch.no_grad():
            hypos = self._generate_nonempty(generator, models, sample, empty)
        if getattr(self.cfg, "remove_repeats", False):
            hypos = [[remove_repeats(h) for h in nbest] for nbest in hypos]
        # (total refinement steps, sentences), logged by valid_step as decode_steps
        self._decode_steps = (sum(int(h[0].get("steps", 0)) for h in hypos), len(hypos))
        return hypos

    def empty_sources(self, sample):
        """Rows of the batch with no token besides <pad>, </s> and <s> (bool, B)."""
        src = sample["net_input"]["src_tokens"]
        d = self.src_dict
        return ~(src.ne(d.pad()) & src.ne(d.eos()) & src.ne(d.bos())).any(1)

    def _generate_nonempty(self, generator, models, sample, empty):
        """Decode the non-empty rows; an empty row (reported when its line was read, see
        :meth:`build_dataset_for_inference`) gets an empty hypothesis in its place."""
        if not empty.any():
            return generator.generate(models, sample)
        keep = (~empty).nonzero().squeeze(1)
        hypos = iter([])
        if keep.numel() > 0:
            net = sample["net_input"]
            sub = {"net_input": {"src_tokens": net["src_tokens"].index_select(0, keep),
                                 "src_lengths": net["src_lengths"].index_select(0, keep)}}
            if "id" in sample:
                sub["id"] = sample["id"].index_select(0, keep)
            hypos = iter(generator.generate(models, sub))
        eos = self.tgt_dict.eos()
        return [[empty_hypothesis(eos, sample["net_input"]["src_tokens"])] if is_empty
                else next(hypos) for is_empty in empty.tolist()]

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Lines given for translation (fairseq-interactive, the Python API), padded as this
        task pads its data (fairseq's default would pad them on the left), each line checked
        first (:func:`~nar_refine.tasks.input_lines.checked_lines`)."""
        interactive = "fairseq_cli.interactive" in sys.modules
        first = getattr(self, "_input_lines_read", 0) if interactive else 0
        self._input_lines_read = first + len(src_tokens)
        tokens, lengths = checked_lines(src_tokens, self.src_dict, self.source_position_limit(),
                                        self.cfg.truncate_long_inputs, interactive, first)
        return InputLinesDataset(tokens, lengths, self.src_dict, tgt_dict=self.tgt_dict,
                                 left_pad_source=self.cfg.left_pad_source,
                                 constraints=constraints)

    def source_position_limit(self):
        """(most source tokens with </s>, what sets it): the smaller of the loaded model's
        ``max_positions()`` (recorded by :meth:`build_model`) and ``--max-source-positions``."""
        model_limit = getattr(self, "model_max_positions", None)
        model_limit = model_limit[0] if isinstance(model_limit, tuple) else model_limit
        task_limit = self.cfg.max_source_positions
        if model_limit is not None and (task_limit is None or model_limit <= task_limit):
            return model_limit, "the model's limit of"
        return task_limit, "the --max-source-positions limit of"


def upgrade_checkpoint_args(cfg):
    """Let the model class of a checkpoint's architecture fill in arguments that its version
    did not have (``upgrade_checkpoint_args``), before fairseq applies the architecture's
    current defaults to them."""
    model_cls = ARCH_MODEL_REGISTRY.get(getattr(cfg, "arch", None) or getattr(cfg, "_name", None))
    upgrade = getattr(model_cls, "upgrade_checkpoint_args", None)
    if upgrade is not None:
        upgrade(cfg)


def refuse_lone_launched_process():
    """A launcher (torchrun, torch.distributed.launch) started several processes, but fairseq
    did not join them (distributed world size 1, its default with --cpu or one GPU): each would
    train its own model into the same --save-dir. Refuse with the command that works."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return
    if world <= 1 or (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    raise NARConfigError(
        f"this process was launched as rank {os.environ.get('RANK', '?')} of WORLD_SIZE={world} "
        f"(torchrun / torch.distributed.launch), but fairseq trains in it alone (distributed "
        f"world size 1, its default with --cpu or with one GPU), so {world} processes would "
        f"train {world} separate models and overwrite each other's checkpoints. Pass "
        f"--distributed-world-size {world} and fairseq joins them: on CPUs torchrun "
        f"--nproc_per_node {world} $(which fairseq-train) ... --cpu --distributed-world-size "
        f"{world} --distributed-backend gloo; on several GPU nodes torchrun --nnodes M "
        f"--nproc_per_node G ... $(which fairseq-train) ... --distributed-world-size M*G. On one "
        f"node with N GPUs, fairseq-train needs no launcher: it starts one process per GPU "
        f"(--distributed-world-size N)"
    )
