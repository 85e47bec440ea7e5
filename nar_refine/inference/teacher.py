"""An autoregressive fairseq translation model that rescores NAT candidates (latent-search
candidates of the latent generators, length-beam candidates of refine_nat).

score(x, y) = sum_t log p_AR(y_t | y_<t, x) over y + </s>, by teacher forcing: one batched
forward pass for all candidates. The teacher must share the task's dictionaries symbol for
symbol (same ids), which is checked when it is loaded: against the dictionaries recorded in
the teacher checkpoint when it was trained with the plugin loaded (``nar_refine.dictionaries``),
and against the dict.*.txt of the data-bin recorded in it while that exists (a teacher without
a record whose data-bin is gone is refused).
"""

import logging
import os

import torch
from fairseq import checkpoint_utils, tasks
from fairseq.data import data_utils
from fairseq.models.transformer import TransformerDecoderBase
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase

from nar_refine.dictionaries import FINGERPRINT_KEY, first_difference, recorded_mismatch
from nar_refine.errors import NARConfigError
from nar_refine.inference.ct2_teacher import CTranslate2TeacherScorer, is_ctranslate2_model
from nar_refine.inference.distinct_rows import on_distinct_rows
from nar_refine.modules.token_scores import projected_token_log_probs

logger = logging.getLogger(__name__)


def dictionary_mismatch(side, teacher_dict, task_dict):
    """None if the symbol lists are equal, else a sentence that names the first difference."""
    return first_difference(side, teacher_dict.symbols, task_dict.symbols, ("teacher", "task"))


class TeacherScorer:
    name = "autoregressive teacher"

    def __init__(self, model, tgt_dict, path=""):
        self.model = model.eval()
        # as fairseq-generate prepares a model (prepare_for_inference_): its decoder layers keep
        # no attention weights, so fairseq's attention takes torch's fused kernel in every layer
        for layer in model.modules():
            if isinstance(layer, TransformerDecoderLayerBase):
                layer.make_generation_fast_(need_attn=False)
        # fairseq's Transformer decoder returns the last layer's attention weights (alignments)
        # unless told another layer: -1 is none
        self._decoder_kwargs = ({"alignment_layer": -1}
                                if isinstance(getattr(model, "decoder", None), TransformerDecoderBase) else {})
        self.pad, self.eos = tgt_dict.pad(), tgt_dict.eos()
        self.path = path

    @classmethod
    def from_path(cls, path, task, like=None):
        """Load the teacher checkpoint; refuse it unless its dictionaries equal ``task``'s.
        A folder made by ``ct2-fairseq-converter`` is the teacher served by CTranslate2."""
        if is_ctranslate2_model(path):
            return CTranslate2TeacherScorer.from_dir(path, task, like=like)
        if not os.path.isfile(path):
            raise NARConfigError(f"--teacher-path {path}: no such checkpoint file")
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
        cfg = state["cfg"]
        if getattr(cfg.model, "_name", None) is None and getattr(cfg.model, "arch", None) is None:
            raise NARConfigError(f"--teacher-path {path}: not a fairseq model checkpoint")
        pairs = [(getattr(c, "source_lang", None), getattr(c, "target_lang", None))
                 for c in (cfg.task, task.cfg)]
        teacher_data = str(cfg.task.data).split(os.pathsep)[0] if cfg.task.data else ""
        if None in pairs[0] and os.path.isdir(teacher_data):
            # fairseq infers the pair from the data dir's file names and does not store it
            pairs[0] = tuple(data_utils.infer_language_pair(teacher_data))
        if None not in pairs[0] + pairs[1] and tuple(pairs[0]) != tuple(pairs[1]):
            raise NARConfigError(
                f"--teacher-path {path} translates {'-'.join(pairs[0])} but this task is "
                f"{'-'.join(pairs[1])}: the teacher's languages (and so its dictionaries) do not "
                f"match this task's; train the teacher on this task's data-bin")
        data = str(cfg.task.data).split(os.pathsep)[0] if cfg.task.data else ""
        record = (state.get("task_state") or {}).get(FINGERPRINT_KEY)
        if record is not None:  # its dictionaries, recorded when it was trained
            problem = recorded_mismatch(record, task.source_dictionary, task.target_dictionary,
                                        ("teacher", "task"))
            if problem:
                raise NARConfigError(
                    f"--teacher-path {path} (trained on {record.get('data') or data}) does not "
                    f"share this task's dictionaries: {problem}. The teacher must be trained on "
                    f"data binarized with the same dict.*.txt (fairseq-preprocess "
                    f"--srcdict/--tgtdict).")
        if not os.path.isdir(data):
            if record is not None:  # moved: the record says its dictionaries are ours
                data = cfg.task.data = task.cfg.data
            else:
                raise NARConfigError(
                    f"--teacher-path {path}: its data-bin {data or '(none recorded)'} is gone and "
                    f"the checkpoint records no dictionaries (written by nar_refine 0.2.0 or "
                    f"earlier, or trained without the plugin), so they cannot be checked against "
                    f"this task's: put the data-bin (its dict.*.txt) back at "
                    f"{data or 'its path'}, or retrain the teacher with --user-dir nar_refine")
        for key in ("source_lang", "target_lang"):  # else inferred from file names in its data dir
            if getattr(cfg.task, key, None) is None and getattr(task.cfg, key, None) is not None:
                setattr(cfg.task, key, getattr(task.cfg, key))
        try:
            teacher_task = tasks.setup_task(cfg.task)
        except FileNotFoundError as err:  # dict.<lang>.txt of the teacher's languages
            raise NARConfigError(
                f"--teacher-path {path}: its dictionaries or languages do not match this task's "
                f"({err.filename or err} is missing); the teacher must be trained on this task's "
                f"data-bin ({task.cfg.source_lang}-{task.cfg.target_lang})") from err
        except Exception as err:  # fairseq raises bare Exceptions here
            raise NARConfigError(f"--teacher-path {path}: cannot set up its task "
                                 f"{getattr(cfg.task, '_name', '?')} from {data}: {err}") from err
        for side, t_dict, n_dict in (
            ("source", teacher_task.source_dictionary, task.source_dictionary),
            ("target", teacher_task.target_dictionary, task.target_dictionary),
        ):
            problem = dictionary_mismatch(side, t_dict, n_dict)
            if problem:
                raise NARConfigError(
                    f"--teacher-path {path} (dictionaries from {data}) does not share this task's "
                    f"dictionaries: {problem}. The teacher must be trained on data binarized with "
                    f"the same dict.*.txt (fairseq-preprocess --srcdict/--tgtdict)."
                )
        model = teacher_task.build_model(cfg.model)
        if getattr(model, "is_nar_refine_model", False):
            raise NARConfigError(f"--teacher-path {path} holds a non-autoregressive "
                                 f"{type(model).__name__}; the teacher must be an autoregressive "
                                 f"translation model (e.g. --arch transformer)")
        try:
            model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
        except RuntimeError as err:
            raise NARConfigError(f"--teacher-path {path}: its weights do not fit its own "
                                 f"architecture with this task's dictionaries ({err})") from err
        if like is not None:
            p = next(like.parameters())
            model = model.to(device=p.device, dtype=p.dtype)
        logger.info("candidates (latent search, or refine_nat's length beam) are scored by the "
                    "autoregressive teacher %s", path)
        return cls(model, task.target_dictionary, path)

    @torch.no_grad()
    def __call__(self, src_tokens, src_lengths, tokens, lprobs=None, rows=None):
        """Sum of teacher token log-probs of each row of ``tokens`` (+ </s>) given its source.

        ``rows`` (optional): the source row of every candidate, when ``src_tokens`` holds each
        source once (B rows) and ``tokens`` several candidates per source (latent search,
        length beam): the teacher then encodes every source once and repeats its encoder
        output (fairseq's ``reorder_encoder_out``) instead of encoding each candidate's copy.
        Equal candidates of one source are scored once."""
        if rows is None:
            return on_distinct_rows(self.score, (src_tokens, tokens), src_tokens, src_lengths, tokens)
        return on_distinct_rows(lambda t, r: self.score(src_tokens, src_lengths, t, rows=r),
                                (rows, tokens), tokens, rows)

    @torch.no_grad()
    def score(self, src_tokens, src_lengths, tokens, rows=None):
        """``__call__`` for every row, equal ones included."""
        p = next(self.model.parameters())
        if p.device != tokens.device:
            self.model.to(tokens.device)
        lengths = tokens.ne(self.pad).long().sum(1)
        bsz, width = tokens.size(0), int(lengths.max()) + 1
        target = tokens.new_full((bsz, width), self.pad)
        target[:, : tokens.size(1)] = tokens[:, :width]
        target.scatter_(1, lengths[:, None], self.eos)
        # teacher forcing input: </s> y_1 .. y_L (fairseq's prev_output_tokens), pads after
        shifted = torch.cat([target.new_full((bsz, 1), self.eos), target[:, :-1]], 1)
        real = torch.arange(width, device=tokens.device)[None, :] <= lengths[:, None]
        prev = shifted.masked_fill(~real, self.pad)
        encoder_out = self.model.encoder(src_tokens, src_lengths=src_lengths)
        if rows is not None:
            encoder_out = self.model.encoder.reorder_encoder_out(encoder_out, rows)
        decoder = self.model.decoder
        projection = getattr(decoder, "output_projection", None)
        if (getattr(decoder, "adaptive_softmax", None) is None and self._decoder_kwargs
                and isinstance(projection, torch.nn.Linear)):
            # fairseq's Transformer decoder: its states, projected onto the vocabulary in
            # blocks of positions (one fused fp32 log_softmax each, read at the target)
            states, _ = decoder(prev, encoder_out=encoder_out, features_only=True, **self._decoder_kwargs)
            tok_lp = projected_token_log_probs(states, projection, target)
        else:
            out = decoder(prev, encoder_out=encoder_out, **self._decoder_kwargs)
            lp = self.model.get_normalized_probs(out, log_probs=True).float()
            tok_lp = lp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return tok_lp.masked_fill(target.eq(self.pad), 0.0).sum(-1)
