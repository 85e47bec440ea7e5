"""The offline bundle's fairseq: fairseq-fixed's source distribution with scikit-learn and scipy
made optional, and its torch C++ extensions built only on request.

``import fairseq`` imports every criterion and task, and two of them import scikit-learn and
scipy at the top (``criterions/sentence_prediction.py``: F1, Matthews, Pearson and Spearman
metrics for GLUE-style sentence classification; ``tasks/audio_classification.py``: a ROC curve).
Translation never calls them, but without the two packages (about 45 MB of wheels for one
Python version) fairseq does not import at all. Here those imports move into the functions that
use them, so fairseq imports without the packages and the metrics still work where they are
installed. The version gets the local label ``+lazyimports`` so that ``pip list`` tells this
build from PyPI's.

Usage: python fairseq_sdist.py fairseq_fixed-0.12.3.1.tar.gz OUT_DIR  (prints the new path)
"""

import io
import re
import sys
import tarfile
from pathlib import Path

LABEL = "lazyimports"

# file -> [(text of fairseq-fixed 0.12.3.1, replacement)]; each text must occur exactly once
EDITS = {
    "fairseq/criterions/sentence_prediction.py": [(
        "from sklearn.metrics import f1_score\n"
        "from sklearn.metrics import matthews_corrcoef as _matthews_corrcoef\n"
        "from scipy.stats import pearsonr, spearmanr\n",
        "\n"
        "# scikit-learn and scipy are imported when a metric is computed (nar_refine's offline\n"
        "# bundle: fairseq imports without them)\n"
        "def f1_score(*args, **kwargs):\n"
        "    from sklearn.metrics import f1_score\n"
        "    return f1_score(*args, **kwargs)\n"
        "\n\n"
        "def _matthews_corrcoef(*args, **kwargs):\n"
        "    from sklearn.metrics import matthews_corrcoef\n"
        "    return matthews_corrcoef(*args, **kwargs)\n"
        "\n\n"
        "def pearsonr(*args, **kwargs):\n"
        "    from scipy.stats import pearsonr\n"
        "    return pearsonr(*args, **kwargs)\n"
        "\n\n"
        "def spearmanr(*args, **kwargs):\n"
        "    from scipy.stats import spearmanr\n"
        "    return spearmanr(*args, **kwargs)\n"
        "\n\n",
    )],
    "fairseq/tasks/audio_classification.py": [(
        "from sklearn import metrics as sklearn_metrics\n",
        "",
    ), (
        "            fpr, tpr, thresholds = sklearn_metrics.roc_curve(",
        "            from sklearn import metrics as sklearn_metrics  # (imported when used)\n"
        "\n"
        "            fpr, tpr, thresholds = sklearn_metrics.roc_curve(",
    )],
}

# fairseq's torch C++ extensions (BASE layers' balanced assignment, the Levenshtein
# transformer's edit distances, an example's alignment kernel) take most of the install's
# build time (each compiles against torch's headers) and nar_refine runs none of them: they
# are built only with FAIRSEQ_TORCH_EXTENSIONS=1 (install.sh --with-torch-extensions)
BUILD_EDITS = {
    "setup.py": [(
        'if "CUDA_HOME" in os.environ:\n',
        'if os.environ.get("FAIRSEQ_TORCH_EXTENSIONS", "0") != "1":\n'
        '    _torch_only = {"fairseq.libbase", "fairseq.libnat", "alignment_train_cpu_binding"}\n'
        '    extensions = [e for e in extensions if e.name not in _torch_only]\n'
        'if "CUDA_HOME" in os.environ:\n',
    )],
}


def patch_source(relpath, text):
    """``text`` of fairseq file ``relpath`` with the edits above (unchanged for other files)."""
    crlf = "\r\n" in text  # some files of the sdist have Windows line ends
    text = text.replace("\r\n", "\n")
    for old, new in {**EDITS, **BUILD_EDITS}.get(relpath, []):
        if text.count(old) != 1:
            raise SystemExit(f"{relpath}: expected the fairseq-fixed 0.12.3.1 text once, found "
                             f"{text.count(old)} times: {old.splitlines()[0]!r}")
        text = text.replace(old, new)
    return text.replace("\n", "\r\n") if crlf else text


def patch_sdist(sdist, out_dir):
    """Write the patched sdist into ``out_dir``; return its path."""
    sdist, out_dir = Path(sdist), Path(out_dir)
    with tarfile.open(sdist) as src:
        members = src.getmembers()
        top = members[0].name.split("/")[0]  # fairseq_fixed-0.12.3.1
        name, version = top.rsplit("-", 1)
        new_version = f"{version}+{LABEL}"
        new_top = f"{name}-{new_version}"
        out = out_dir / f"{new_top}.tar.gz"
        seen = set()
        with tarfile.open(out, "w:gz") as dst:
            for m in members:
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                data = src.extractfile(m).read() if m.isfile() else None
                if rel in EDITS or rel in BUILD_EDITS:
                    data = patch_source(rel, data.decode()).encode()
                    seen.add(rel)
                elif rel == "fairseq/version.txt":
                    data = new_version.encode()
                elif rel == "PKG-INFO":
                    data = re.sub(rf"(?m)^Version: {re.escape(version)}(\r?)$",
                                  rf"Version: {new_version}\1", data.decode(), count=1).encode()
                info = tarfile.TarInfo(f"{new_top}/{rel}" if rel else new_top)
                info.type, info.mode, info.mtime = m.type, m.mode, m.mtime
                if data is not None:
                    info.size = len(data)
                    dst.addfile(info, io.BytesIO(data))
                else:
                    info.linkname = m.linkname
                    dst.addfile(info)
    missing = (set(EDITS) | set(BUILD_EDITS)) - seen
    if missing:
        raise SystemExit(f"{sdist}: no {', '.join(sorted(missing))}; not fairseq-fixed 0.12.3.1?")
    return out


if __name__ == "__main__":
    print(patch_sdist(sys.argv[1], sys.argv[2]))
