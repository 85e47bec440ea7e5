"""A checkpoint's dictionaries, recorded when it is trained and checked when it is loaded.

fairseq stores no dictionary in a checkpoint: ``fairseq-generate``, ``fairseq-interactive``
and the hub read ``dict.*.txt`` from the data directory they are given, and token ids mean
whatever that file says. A data-bin of the same size made by a second ``prepare.sh`` on other
text decodes garbage without a word; one of another size fails deep inside ``load_state_dict``.

So every checkpoint written while the plugin is loaded (any task with source and target
dictionaries: nar_translation, and fairseq's translation for teachers) records the symbols of
its dictionaries in its ``task_state`` (``FINGERPRINT_KEY``: SHA-256, size and symbol list of
each side, and the data directory). Loading compares them with the dictionaries at hand and
refuses a difference in one line that names the first differing entry. Checkpoints written by
nar_refine 0.2.0 or earlier carry no record: they load with a warning.
"""

import functools
import hashlib
import logging

from nar_refine.errors import NARConfigError

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "nar_refine_dictionaries"
_PATCH_FLAG = "_nar_refine_dictionary_record"


class DictionaryMismatch(NARConfigError):
    """A checkpoint's recorded dictionaries differ from the ones it is loaded with."""


def symbols_digest(symbols):
    digest = hashlib.sha256()
    for s in symbols:
        digest.update(s.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def fingerprint(src_dict, tgt_dict, data=None):
    """The record stored in a checkpoint: for each side its size, SHA-256 and symbols."""
    record = {"version": 1, "data": data}
    for side, d in (("source", src_dict), ("target", tgt_dict)):
        symbols = list(d.symbols)
        record[side] = {"size": len(symbols), "sha256": symbols_digest(symbols),
                        "symbols": symbols}
    return record


def first_difference(side, recorded, current, names=("checkpoint", "data")):
    """None if the symbol lists are equal, else a sentence that names the first difference."""
    a, b = list(recorded), list(current)
    if a == b:
        return None
    if len(a) != len(b):
        head = f"{side} dictionary sizes differ: {names[0]} {len(a)}, {names[1]} {len(b)}"
    else:
        head = f"{side} dictionaries have the same size ({len(a)}) but different symbols"
    for i, (s, t) in enumerate(zip(a, b)):
        if s != t:
            return f"{head}; first difference at id {i}: {names[0]} {s!r}, {names[1]} {t!r}"
    return f"{head}; the first {min(len(a), len(b))} symbols agree"


def recorded_mismatch(record, src_dict, tgt_dict, names=("checkpoint", "data")):
    """The first difference between a record and two dictionaries (a sentence), or None."""
    for side, d in (("source", src_dict), ("target", tgt_dict)):
        saved = record.get(side) or {}
        symbols = list(d.symbols)
        if saved.get("sha256") == symbols_digest(symbols):
            continue
        problem = first_difference(side, saved.get("symbols") or [], symbols, names)
        if problem:
            return problem
    return None


def check_loaded_checkpoint(task, task_state):
    """Called with the ``task_state`` of a checkpoint being loaded into ``task`` (fairseq's
    ``load_model_ensemble_and_task``): refuse other dictionaries, warn when unrecorded."""
    data = str(getattr(task.cfg, "data", "") or "")
    record = (task_state or {}).get(FINGERPRINT_KEY)
    if record is None:
        logger.warning("this checkpoint records no dictionaries (written by nar_refine 0.2.0 or "
                       "earlier, or trained without the plugin): cannot check that %s holds the "
                       "dictionaries it was trained with", data or "the data directory")
        return
    problem = recorded_mismatch(record, task.source_dictionary, task.target_dictionary)
    if problem:
        trained_on = record.get("data")
        where = f" (it was trained on {trained_on})" if trained_on else ""
        raise DictionaryMismatch(
            f"the checkpoint was trained with other dictionaries than those of {data}{where}: "
            f"{problem}. Decode with the data-bin it was trained on, or binarize with its "
            f"dictionaries (fairseq-preprocess --srcdict/--tgtdict)")


def task_dictionaries(task):
    """(source, target) dictionaries of a task, or None when it has not both."""
    try:
        src, tgt = task.source_dictionary, task.target_dictionary
    except (AttributeError, NotImplementedError):
        return None
    if src is None or tgt is None or not hasattr(src, "symbols") or not hasattr(tgt, "symbols"):
        return None
    return src, tgt


def recording_state_dict(original):
    """Wrap ``FairseqTask.state_dict`` (what the trainer saves as ``task_state``)."""

    def state_dict(self):
        state = original(self)
        dicts = task_dictionaries(self)
        if dicts is None:
            return state
        state = dict(state)
        cfg = getattr(self, "cfg", None)
        data = getattr(cfg, "data", None) if cfg is not None else None
        state[FINGERPRINT_KEY] = fingerprint(*dicts, data=str(data) if data else None)
        return state

    return state_dict


def install():
    """Record the dictionaries in the checkpoints of every task (trainer's ``task_state``)."""
    from fairseq.tasks.fairseq_task import FairseqTask

    original = FairseqTask.state_dict
    if getattr(original, _PATCH_FLAG, False):
        return
    patched = functools.wraps(original)(recording_state_dict(original))
    setattr(patched, _PATCH_FLAG, True)
    FairseqTask.state_dict = patched
