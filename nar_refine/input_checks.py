"""One clear line instead of a traceback for bad files and inputs handed to fairseq's CLIs.

Installed on import of the plugin (``--user-dir nar_refine``), so they also guard plain
fairseq models evaluated with the plugin loaded:

* a ``--path`` that is missing, not a PyTorch file (e.g. a text file), or a PyTorch file that
  is not a fairseq checkpoint: :class:`NARConfigError` naming the file;
* a checkpoint loaded with other dictionaries than it was trained with (see
  ``nar_refine.dictionaries``; for a checkpoint without a record, fairseq's size-mismatch dump):
  one line naming the file and the first difference;
* ``fairseq-interactive`` input that is not UTF-8: the line is named and reported, and
  replaced by an empty line (which nar_translation answers with an empty hypothesis, without
  a second message: see ``reported_input_lines``), and interactive use goes on;
* ``--bf16`` in fairseq-generate/-interactive (fairseq 0.12 ignores it there), ``--fp16`` on
  a CPU: one line;
* a line handed to fairseq-interactive or the Python API of which most tokens are <unk>
  (a missing ``--bpe``): a warning naming the line (``warn_unknown_words``).
"""

import functools
import logging
import os
import pickle
import sys

from nar_refine.dictionaries import DictionaryMismatch
from nar_refine.errors import NARConfigError

logger = logging.getLogger(__name__)

_PATCH_FLAG = "_nar_refine_input_check"

# numbers (1-based) of fairseq-interactive input lines already reported here, so that the task
# does not report the empty line that replaces them a second time
reported_input_lines = set()


def _patch(module, name, make):
    original = getattr(module, name)
    if getattr(original, _PATCH_FLAG, False):
        return
    patched = functools.wraps(original)(make(original))
    setattr(patched, _PATCH_FLAG, True)
    setattr(module, name, patched)


def checked_checkpoint_loader(original):
    """Wrap ``checkpoint_utils.load_checkpoint_to_cpu``: name the file and what is wrong."""

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        if not os.path.exists(path):
            raise NARConfigError(f"{path}: no such checkpoint file")
        try:
            state = original(path, *args, **kwargs)
        except (pickle.UnpicklingError, EOFError, UnicodeDecodeError) as err:
            raise NARConfigError(f"{path} is not a PyTorch checkpoint file (torch.load: "
                                 f"{type(err).__name__}: {err})") from err
        except RuntimeError as err:
            if "zip" not in str(err).lower() and "archive" not in str(err).lower():
                raise
            raise NARConfigError(f"{path} is not a PyTorch checkpoint file, or it is truncated "
                                 f"(torch.load: {err})") from err
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            # fairseq upgrades what torch.load returned before handing it back: a PyTorch file
            # that is not a checkpoint (e.g. a bare state dict) fails there on a missing entry
            if has_model_entry(path):
                raise
            raise NARConfigError(not_a_checkpoint(path)) from err
        if not isinstance(state, dict) or "model" not in state:
            raise NARConfigError(not_a_checkpoint(path))
        return state

    return load_checkpoint_to_cpu


def not_a_checkpoint(path):
    return (f"{path} is a PyTorch file but not a fairseq checkpoint (no 'model' entry); give a "
            f"checkpoint written by fairseq-train")


def has_model_entry(path):
    """Whether ``path`` holds a dict with a 'model' entry (looked at only after fairseq failed)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001  (unreadable: let fairseq's own error stand)
        return True
    return isinstance(state, dict) and "model" in state


def checked_model_loader(original):
    """Wrap ``checkpoint_utils.load_model_ensemble_and_task``: a missing file is one line."""

    def load_model_ensemble_and_task(filenames, *args, **kwargs):
        for name in filenames:
            if not os.path.exists(name):
                raise NARConfigError(f"--path {name}: no such checkpoint file")
        names = ", ".join(str(f) for f in filenames)
        try:
            return original(filenames, *args, **kwargs)
        except DictionaryMismatch as err:  # raised by the task, which does not know the file
            raise DictionaryMismatch(f"{names}: {err}") from err
        except RuntimeError as err:
            # a checkpoint without a dictionary record (nar_refine 0.2.0 or earlier) whose
            # embeddings have another number of rows than the dictionaries at hand
            if "size mismatch" not in str(err):
                raise
            first = next((l.strip() for l in str(err).splitlines() if "size mismatch" in l), "")
            raise NARConfigError(
                f"{names}: its weights do not fit the dictionaries it is loaded with (the "
                f"checkpoint was trained with other dictionaries: {first}); decode with the "
                f"data-bin it was trained on") from err

    return load_model_ensemble_and_task


def utf8_lines(path):
    """Lines of ``path`` ('-' = stdin) decoded one by one; a non-UTF-8 line is reported and
    replaced by an empty line (nar_translation answers it with an empty hypothesis)."""
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for number, raw in enumerate(stream, 1):
            try:
                yield raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                bad = raw[err.start:err.start + 1].hex()
                where = "standard input" if path == "-" else path
                sys.stdout.flush()
                print(f"nar_refine: error: {where} line {number} is not UTF-8 (byte 0x{bad} at "
                      f"column {err.start + 1}); replaced by an empty line", file=sys.stderr,
                      flush=True)
                reported_input_lines.add(number)
                yield ""
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


UNKNOWN_WARNINGS = 3  # lines reported by warn_unknown_words before it falls silent
_unknown_warned = [0]


def warn_unknown_words(line, dictionary, words, where):
    """Warn (one line on stderr) when more than half of a line's ``words`` tokens are <unk>:
    its text is not segmented as the data-bin was (e.g. fairseq-interactive without the
    --bpe/--tokenizer of the data), and the model would translate <unk>s. Host-side, per line
    handed to fairseq-interactive or the Python API; at most ``UNKNOWN_WARNINGS`` lines."""
    unknown = int(line.eq(dictionary.unk()).sum())
    if 2 * unknown <= words or _unknown_warned[0] >= UNKNOWN_WARNINGS:
        return
    _unknown_warned[0] += 1
    last = (" (further such lines are not reported)"
            if _unknown_warned[0] == UNKNOWN_WARNINGS else "")
    sys.stdout.flush()
    print(f"nar_refine: warning: {where}: {unknown} of its {words} tokens are not in the "
          f"dictionary (<unk>): is the text segmented as the data-bin was? Pass the --bpe and "
          f"--tokenizer the data was prepared with (e.g. --bpe sentencepiece "
          f"--sentencepiece-model spm.model){last}", file=sys.stderr, flush=True)


def checked_buffered_read(original):
    """Replace ``fairseq_cli.interactive.buffered_read`` with a per-line UTF-8 check."""

    def buffered_read(input, buffer_size):
        buffer = []
        for line in utf8_lines(input):
            buffer.append(line)
            if len(buffer) >= buffer_size:
                yield buffer
                buffer = []
        if buffer:
            yield buffer

    return buffered_read


def refuse_half_precision_decoding(common, cli):
    """fairseq 0.12's generate/interactive ignore --bf16 (they never convert the model to it),
    and --fp16 on a CPU runs half-precision kernels that are slower than fp32 there."""
    import torch

    if getattr(common, "bf16", False):
        raise NARConfigError(f"--bf16: {cli} of fairseq 0.12 ignores it and decodes in fp32; "
                             f"drop --bf16 (or use --fp16 on a CUDA GPU)")
    if getattr(common, "fp16", False) and (getattr(common, "cpu", False)
                                           or not torch.cuda.is_available()):
        raise NARConfigError(f"--fp16 on a CPU: {cli} would decode in half precision on the "
                             f"CPU, slower than in fp32 and with other scores; drop --fp16 (it "
                             f"is for CUDA GPUs)")


def checked_decoding_main(cli):
    """Wrap ``fairseq_cli.generate.main`` / ``interactive.main``: the precision flags first."""

    def make(original):
        def main(cfg, *args, **kwargs):
            refuse_half_precision_decoding(getattr(cfg, "common", cfg), cli)
            return original(cfg, *args, **kwargs)

        return main

    return make


def cli_module(name):
    """The running fairseq CLI module ``fairseq_cli.<name>`` (also as ``python -m``), or None."""
    module = sys.modules.get(f"fairseq_cli.{name}")
    main = sys.modules.get("__main__")
    if module is None and getattr(getattr(main, "__spec__", None), "name", None) == f"fairseq_cli.{name}":
        module = main
    return module


def install():
    from fairseq import checkpoint_utils

    _patch(checkpoint_utils, "load_checkpoint_to_cpu", checked_checkpoint_loader)
    _patch(checkpoint_utils, "load_model_ensemble_and_task", checked_model_loader)
    interactive = cli_module("interactive")
    if interactive is not None:  # only when running fairseq-interactive
        _patch(interactive, "buffered_read", checked_buffered_read)
    for cli in ("generate", "interactive"):  # only when running that CLI
        module = cli_module(cli)
        if module is not None:
            _patch(module, "main", checked_decoding_main(f"fairseq-{cli}"))
