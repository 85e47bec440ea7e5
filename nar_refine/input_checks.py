"""One clear line instead of a traceback for bad files and inputs handed to fairseq's CLIs.

Installed on import of the plugin (``--user-dir nar_refine``), so they also guard plain
fairseq models evaluated with the plugin loaded:

* a ``--path`` that is missing, not a PyTorch file (e.g. a text file), or a PyTorch file that
  is not a fairseq checkpoint: :class:`NARConfigError` naming the file;
* ``fairseq-interactive`` input that is not UTF-8: the line is named and reported, and
  replaced by an empty line (which nar_translation answers with an empty hypothesis, without
  a second message: see ``reported_input_lines``), and interactive use goes on.
"""

import functools
import logging
import os
import pickle
import sys

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
        return original(filenames, *args, **kwargs)

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


def install():
    from fairseq import checkpoint_utils

    _patch(checkpoint_utils, "load_checkpoint_to_cpu", checked_checkpoint_loader)
    _patch(checkpoint_utils, "load_model_ensemble_and_task", checked_model_loader)
    interactive = sys.modules.get("fairseq_cli.interactive")
    if interactive is not None:  # only when running fairseq-interactive
        _patch(interactive, "buffered_read", checked_buffered_read)
