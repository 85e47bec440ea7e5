"""Shared definitions at the bottom of the import graph (tasks -> inference -> models -> modules
-> errors): the error type every part raises for a user mistake, and how the CLIs show it."""

import os
import sys


class NARConfigError(ValueError):
    """A wrong combination of task, model, generator or inputs, explained to the user.

    Uncaught in a fairseq CLI it is printed as one line, ``nar_refine: error: <message>``,
    with exit status 2 (set ``NAR_REFINE_TRACEBACK=1`` to see the traceback as well). Any
    other exception keeps its full traceback: that is a bug, not a usage error.
    """


_HOOK_FLAG = "_nar_refine_excepthook"
_CLEANUPS = []


def at_user_error_exit(fn):
    """Run ``fn()`` before the hook below ends the process on a :class:`NARConfigError` (it
    exits with ``os._exit``, which skips ``atexit``): e.g. release a lock file."""
    if fn not in _CLEANUPS:
        _CLEANUPS.append(fn)


def install_excepthook():
    """Print uncaught :class:`NARConfigError` as one line and exit 2; leave other errors alone."""
    previous = sys.excepthook
    if getattr(previous, _HOOK_FLAG, False):
        return

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, NARConfigError) and not os.environ.get("NAR_REFINE_TRACEBACK"):
            message = " ".join(str(exc).split("\n"))
            sys.stdout.flush()
            sys.stderr.write(f"nar_refine: error: {message}\n")
            sys.stderr.flush()
            for cleanup in _CLEANUPS:
                try:
                    cleanup()
                except Exception:  # noqa: BLE001  (the error line is what the user needs)
                    pass
            os._exit(2)  # exit status 2 like argparse; no interpreter teardown noise
        previous(exc_type, exc, tb)

    setattr(hook, _HOOK_FLAG, True)
    sys.excepthook = hook
