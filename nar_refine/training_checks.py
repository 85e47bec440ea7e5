"""What ``fairseq-train --task nar_translation`` refuses before it trains, in one line each.

Called by the task (``nar_refine.tasks.nar_translation``) when it builds the model it is about
to train (the legacy model options fairseq hands it hold every command-line option), when it
builds the criterion and when it loads a split; all before the first update, so nothing is
written (no checkpoint, no crash.pt):

1. a model and a criterion that do not belong together (``--arch lanmt_tiny --criterion
   refine_nat_loss`` failed in the first update with KeyError 'pass_0');
2. numbers that cannot work: a non-finite value of any numeric option (``--kl-budget nan``
   trained with a nan loss and saved checkpoints), a negative or zero batch size, learning rate
   or update frequency, a negative value of a numeric criterion option whose default is >= 0;
3. ``--fp16``/``--bf16`` without a CUDA GPU (fairseq 0.12's FP16Optimizer needs CUDA);
4. a ``--save-dir`` in use by a running training (``SaveDirLock``: a lock file naming the
   process; a lock whose process is gone is taken over);
5. empty source or target lines in a split (the model cannot predict a length from nothing).
"""

import atexit
import json
import logging
import math
import os
import socket
import sys
import time
from argparse import Namespace
from dataclasses import fields, is_dataclass

import numpy as np
import torch

from nar_refine.errors import NARConfigError, at_user_error_exit

logger = logging.getLogger(__name__)

# the criterion that trains each model (its name in fairseq's model registry)
FAMILY_CRITERION = {
    "refine_nat": "refine_nat_loss",
    "lanmt": "lanmt_elbo",
    "score_net": "score_matching",
    "energy_net": "score_matching",
}

# fairseq options that must be > 0 when given (None = unset)
POSITIVE = ("lr", "max_tokens", "batch_size", "max_tokens_valid", "batch_size_valid")
# fairseq options that must be >= 1
AT_LEAST_ONE = ("update_freq", "required_batch_size_multiple")
# fairseq options that must be >= 0
NON_NEGATIVE = ("max_update", "max_epoch", "warmup_updates", "clip_norm", "weight_decay",
                "num_workers", "stop_time_hours", "curriculum")
# fractions in [0, 1)
FRACTIONS = ("dropout", "attention_dropout", "activation_dropout", "label_smoothing")

LOCK_NAME = "train.lock"


def option(name):
    return "--" + name.replace("_", "-")


def numbers(value):
    """The numbers in an option's value (a number or a list of them); bools are not numbers."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def bad_numeric_options(args):
    """Sentences naming every numeric option of ``args`` (a Namespace) that cannot work."""
    bad = []
    values = vars(args)
    for name in sorted(values):
        if any(not math.isfinite(v) for v in numbers(values[name])):
            bad.append(f"{option(name)} must be finite, got {values[name]}")
    seen = {b.split()[0] for b in bad}

    def need(names, ok, rule):
        for name in names:
            value = values.get(name)
            if value is None or option(name) in seen:
                continue
            if not all(ok(v) for v in numbers(value)):
                bad.append(f"{option(name)} must be {rule}, got {value}")

    for name in ("max_tokens", "batch_size"):  # the *_valid default is a copy: named once
        if values.get(f"{name}_valid") == values.get(name):
            seen.add(option(f"{name}_valid"))
    need(POSITIVE, lambda v: v > 0, "> 0")
    need(AT_LEAST_ONE, lambda v: v >= 1, ">= 1")
    need(NON_NEGATIVE, lambda v: v >= 0, ">= 0")
    need(FRACTIONS, lambda v: 0 <= v < 1, "in [0, 1)")
    return bad


def bad_dataclass_options(cfg, dataclass_type):
    """Sentences naming each numeric field of a (criterion's) config that is non-finite, or
    negative where its default is >= 0."""
    if dataclass_type is None or not is_dataclass(dataclass_type):
        return []
    bad = []
    for f in fields(dataclass_type):
        try:
            value = getattr(cfg, f.name, None)
        except Exception:  # noqa: BLE001  (an unresolvable interpolation: not ours to judge)
            continue
        nums = numbers(value)
        if not nums:
            continue
        default = f.default if isinstance(f.default, (int, float)) else None
        if any(not math.isfinite(v) for v in nums):
            bad.append(f"{option(f.name)} must be finite, got {value}")
        elif default is not None and default >= 0 and any(v < 0 for v in nums):
            bad.append(f"{option(f.name)} must be >= 0, got {value}")
    return bad


def check_pairing(args):
    """The model family of ``--arch`` and ``--criterion`` must belong together."""
    from fairseq.models import ARCH_MODEL_NAME_REGISTRY

    arch, criterion = getattr(args, "arch", None), getattr(args, "criterion", None)
    family = ARCH_MODEL_NAME_REGISTRY.get(arch)  # the registered model: refine_nat, lanmt, ...
    want = FAMILY_CRITERION.get(family)
    if want is None or criterion is None or criterion == want:
        return
    raise NARConfigError(
        f"--criterion {criterion} cannot train --arch {arch} (a {family} model): its losses "
        f"come from --criterion {want}")


def check_precision(args, what="fairseq-train"):
    """--fp16/--bf16 need a CUDA GPU in fairseq 0.12's trainer."""
    for flag in ("fp16", "bf16"):
        if not getattr(args, flag, False):
            continue
        if getattr(args, "cpu", False):
            where = "with --cpu"
        elif not torch.cuda.is_available():
            where = "without a CUDA GPU (torch.cuda.is_available() is False)"
        else:
            continue
        raise NARConfigError(
            f"--{flag} {where}: {what} of fairseq 0.12 runs --{flag} only on a CUDA GPU (its "
            f"{flag.upper()} optimizer needs CUDA); drop --{flag} to train in fp32 on the CPU")


def before_training(task, args):
    """Every check that needs only the options, then the --save-dir lock. ``args`` is the
    Namespace of a legacy model (all command-line options), or a model config (fewer)."""
    check_pairing(args)
    bad = bad_numeric_options(args) if isinstance(args, Namespace) else []
    if bad:
        raise NARConfigError("; ".join(bad))
    check_precision(args)
    task._nar_training = True
    save_dir = getattr(args, "save_dir", None)
    if save_dir and not getattr(args, "no_save", False) and running_fairseq_train() and rank(args) == 0:
        SaveDirLock.acquire(save_dir)


def rank(args):
    """This process's rank: the joined process group's (the model's options keep the rank of
    before the launch), else the option's."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(getattr(args, "distributed_rank", 0) or 0)


def check_criterion_config(cfg):
    """Non-finite or negative values of a criterion's numeric options (its dataclass)."""
    from fairseq.criterions import CRITERION_DATACLASS_REGISTRY

    name = getattr(cfg, "_name", None) or getattr(cfg, "criterion", None)
    bad = bad_dataclass_options(cfg, CRITERION_DATACLASS_REGISTRY.get(name))
    if bad:
        raise NARConfigError("; ".join(bad))


def running_fairseq_train():
    """True in the fairseq-train CLI (console script or ``python -m fairseq_cli.train``), where
    a --save-dir is written; False for in-process users of the task (tests, scripts)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (getattr(spec, "name", None) == "fairseq_cli.train"
            or os.path.basename(sys.argv[0] if sys.argv else "") == "fairseq-train")


# -- empty lines --------------------------------------------------------------------------
def empty_line_ids(sizes):
    """0-based ids of lines with no token but </s> (binarized size <= 1)."""
    if sizes is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.asarray(sizes) <= 1)


def refuse_empty_lines(task, split, dataset, training):
    """Empty source lines in any split, and empty target lines when training: one line."""
    sides = [("source", getattr(dataset, "src_sizes", None))]
    if training:
        sides.append(("target", getattr(dataset, "tgt_sizes", None)))
    for side, sizes in sides:
        ids = empty_line_ids(sizes)
        if ids.size == 0:
            continue
        shown = ids[:10].tolist()
        more = f" ({ids.size} in all)" if ids.size > len(shown) else ""
        what = ("predict a length from nothing" if side == "source"
                else "learn to write nothing (it predicts a length of at least 1)")
        raise NARConfigError(
            f"empty {side} line(s) at sample id(s) {shown}{more} of the {split} split of "
            f"{task.cfg.data}: a non-autoregressive model cannot {what}; remove or fill these "
            f"lines (sample id = line number - 1) and binarize again")


# -- the --save-dir lock ------------------------------------------------------------------
def process_start(pid):
    """Start time of a process (clock ticks since boot, /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid, start=None):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    now = process_start(pid)
    return start is None or now is None or now == start  # not a new process with the same id


class SaveDirLock:
    """``SAVE_DIR/train.lock``: JSON naming the training process (host, pid, its start time,
    command). Created atomically (a hard link of a complete file), removed when the process
    exits (normally, by an exception, or by a plugin usage error). A lock whose process is gone
    (same host) is taken over with a warning; one held by a live process, or by a process on
    another host, refuses the second training."""

    held = None  # path of the lock this process holds

    @classmethod
    def acquire(cls, save_dir):
        path = os.path.join(save_dir, LOCK_NAME)
        if cls.held == os.path.abspath(path):
            return
        os.makedirs(save_dir, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid()),
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(me, f)
        try:
            for _ in range(2):
                try:
                    cls.create(tmp, path)
                    break
                except FileExistsError:
                    holder = cls.read(path)
                    if not cls.stale(holder):
                        raise NARConfigError(cls.in_use(save_dir, path, holder)) from None
                    logger.warning("--save-dir %s: taking over the lock of process %s (%s), which "
                                   "is not running any more", save_dir, holder.get("pid"),
                                   holder.get("command", "?"))
                    try:
                        os.remove(path)
                    except FileNotFoundError:
                        pass
            else:
                raise NARConfigError(f"--save-dir {save_dir}: could not take its lock {path}")
        finally:
            os.remove(tmp)
        cls.held = os.path.abspath(path)
        atexit.register(cls.release)
        at_user_error_exit(cls.release)

    @staticmethod
    def create(tmp, path):
        """``path`` with the content of ``tmp``, or FileExistsError: a hard link (atomic: the
        lock is never seen half written); where links are not supported, O_EXCL."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            with os.fdopen(fd, "w") as f, open(tmp) as src:
                f.write(src.read())

    @staticmethod
    def read(path):
        try:
            with open(path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def stale(holder):
        """A lock that names no process, or a process of this host that is gone."""
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell: keep it
        return not process_alive(pid, holder.get("start"))

    @staticmethod
    def in_use(save_dir, path, holder):
        host = holder.get("host")
        where = "" if host == socket.gethostname() else f" on host {host}"
        return (f"--save-dir {save_dir} is in use by a running training (process "
                f"{holder.get('pid')}{where}, started {holder.get('started', '?')}: "
                f"{holder.get('command', '?')}); both would write the same checkpoints. Use "
                f"another --save-dir, or wait for that training to end (remove {path} only if "
                f"that process is no training)")

    @classmethod
    def release(cls):
        path, cls.held = cls.held, None
        if path is None:
            return
        if cls.read(path).get("pid") == os.getpid():
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
