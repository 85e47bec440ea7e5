"""Python API: load a nar_refine checkpoint and translate sentences, outside the CLIs.

    from nar_refine.hub import from_pretrained
    nat = from_pretrained("ckpt/lanmt", "checkpoint_best.pt", data_name_or_path="data-bin",
                          bpe="sentencepiece", sentencepiece_model="spm/spm.model")
    nat.translate(["A man rides a bike ."], decoding="delta", iter_decode_max_iter=4)

Built on fairseq's hub utilities (``fairseq.hub_utils.from_pretrained`` and
``GeneratorHubInterface``: ``translate``, ``sample``, ``generate``, ``encode``/``decode``).
What is added: every decoding option of ``fairseq-generate --task nar_translation`` is a
keyword argument of ``translate``/``generate`` (``decoding``, ``latent_search_size``,
``teacher_path``, ``score_steps``, ``iter_decode_max_iter``, ...), applied to that call only;
an unknown keyword, a value of the wrong type (``iter_decode_max_iter="abc"``), and a sentence
that is not a str or not valid text are each a :class:`NARConfigError` naming it.
"""

import contextlib
import copy
import os

from fairseq import hub_utils
from fairseq.dataclass.configs import GenerationConfig
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from nar_refine.errors import NARConfigError
from nar_refine.tasks.nar_translation import NARTranslationConfig

USER_DIR = os.path.dirname(os.path.abspath(__file__))


def from_pretrained(model_name_or_path, checkpoint_file="checkpoint_best.pt",
                    data_name_or_path=".", **kwargs):
    """Load a nar_refine checkpoint (``model_name_or_path/checkpoint_file``) with the
    dictionaries of ``data_name_or_path`` (a data-bin; '.' = beside the checkpoint).

    ``kwargs`` override the checkpoint's configuration as in fairseq (e.g. ``bpe``,
    ``sentencepiece_model``, ``lanmt_path``, ``cpu``). Returns a :class:`NARHubInterface`.
    """
    path = os.path.join(model_name_or_path, checkpoint_file)
    if not os.path.isfile(path):
        raise NARConfigError(f"{path}: no such checkpoint file")
    loaded = hub_utils.from_pretrained(model_name_or_path, checkpoint_file=checkpoint_file,
                                       data_name_or_path=data_name_or_path,
                                       user_dir=USER_DIR, **kwargs)
    models = loaded["models"]
    if not all(getattr(m, "is_nar_refine_model", False) for m in models):
        raise NARConfigError(f"{path} holds {type(models[0]).__name__}, not a nar_refine model; "
                             f"use fairseq's own hub interface for autoregressive models")
    return NARHubInterface(loaded["args"], loaded["task"], models)


PASSED_THROUGH = ("skip_invalid_size_inputs", "inference_step_args", "prefix_allowed_tokens_fn")


def checked_sentences(sentences):
    """The sentences of a ``translate``/``sample`` call, each a str that is valid text (encodes
    as UTF-8): :class:`NARConfigError` naming the first that is not."""
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            hint = (" (decode bytes first, e.g. b.decode('utf-8'))"
                    if isinstance(sentence, (bytes, bytearray)) else "")
            raise NARConfigError(f"sentence {i} (0-based) of this call is of type "
                                 f"{type(sentence).__name__}, not str{hint}")
        try:
            sentence.encode("utf-8")
        except UnicodeEncodeError as err:
            raise NARConfigError(
                f"sentence {i} (0-based) of this call is not valid text: character "
                f"{sentence[err.start]!r} at column {err.start + 1} cannot be written as UTF-8 "
                f"(a lone surrogate: bytes that were not UTF-8, read with errors="
                f"'surrogateescape'?)") from None
    return sentences


def typed_options(structured, values, what):
    """``values`` converted to the types of a dataclass config (e.g. "4" -> 4), as fairseq's
    parser would convert them; a value that does not convert names its option."""
    cfg = OmegaConf.structured(structured)
    out = {}
    for key, value in values.items():
        try:
            out[key] = OmegaConf.merge(cfg, {key: value})[key]
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            raise NARConfigError(f"bad value for {what} {key}: {reason}") from None
    return out


class NARHubInterface(hub_utils.GeneratorHubInterface):
    """fairseq's generator hub interface, with nar_translation's decoding options per call."""

    def sample(self, sentences, beam=1, verbose=False, **kwargs):
        if isinstance(sentences, str):
            return self.sample([sentences], beam=beam, verbose=verbose, **kwargs)[0]
        if isinstance(sentences, (bytes, bytearray)) or not hasattr(sentences, "__iter__"):
            raise NARConfigError(f"translate() wants a str or a list of str, got "
                                 f"{type(sentences).__name__}")
        return super().sample(checked_sentences(list(sentences)), beam, verbose, **kwargs)

    def generate(self, tokenized_sentences, beam=1, verbose=False, **kwargs):
        gen_keys = set(self.cfg.generation.keys())
        task_kw = {k: v for k, v in kwargs.items() if k in self.task.cfg and k not in gen_keys}
        unknown = sorted(k for k in kwargs if k not in gen_keys and k not in self.task.cfg
                         and k not in PASSED_THROUGH)
        if unknown:
            raise NARConfigError(f"unknown decoding option(s) {unknown}; see fairseq-generate "
                                 f"--user-dir nar_refine --task nar_translation --help")
        gen_kw = {k: v for k, v in kwargs.items() if k not in task_kw}
        typed = {k: v for k, v in gen_kw.items() if k not in PASSED_THROUGH}
        gen_kw.update(typed_options(GenerationConfig, typed, "decoding option"))
        task_kw = typed_options(NARTranslationConfig, task_kw, "decoding option")
        with self._task_options(task_kw):
            return super().generate(tokenized_sentences, beam=beam, verbose=verbose, **gen_kw)

    @contextlib.contextmanager
    def _task_options(self, options):
        """Set task options (e.g. ``decoding``) for one call, then restore the loaded ones."""
        saved = copy.deepcopy(self.task.cfg)
        try:
            with open_dict(self.task.cfg):
                for key, value in options.items():
                    setattr(self.task.cfg, key, value)
            yield
        finally:
            self.task.cfg = saved
