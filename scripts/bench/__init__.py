"""The parts of scripts/benchmark.py (the entry point, with the same command line):

    options.py   the command line and the default paths of a pipeline work dir
    systems.py   which systems run, each as its fairseq-generate arguments
    runner.py    loading a system as fairseq-generate does, timing it, its hypotheses
    scoring.py   BLEU (two variants), speed-ups, the CMLM frontier and the targets
    report.py    results.md and the summary printed at the end
    plots.py     the three plots
    extra.py     extra source files (the blind test sets): segment, binarise, translate
    main.py      one benchmark run, in order

Paths written into results.json/.md and translations.json/.md are relative to the repository
(``relative``), so the files hold no machine's absolute paths and the commands run from the
repository root.
"""

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_DIR = str(REPO / "nar_refine")
EXAMPLE_DIR = REPO / "examples" / "multi30k"
SCRIPT = REPO / "scripts" / "benchmark.py"


def relative(path):
    """``path`` (absolute, or relative to the current directory) relative to the repository."""
    return None if path is None else os.path.relpath(os.path.abspath(str(path)), REPO)


def relative_paths_in(text):
    """``text`` (e.g. a training command) with every absolute path inside the repository, or that
    exists, made relative to the repository."""
    def rel(match):
        path = match.group()
        return relative(path) if path.startswith(str(REPO) + os.sep) or os.path.exists(path) else path

    return re.sub(r"(?<![\w.~])/[^\s'\"`]+", rel, text)
