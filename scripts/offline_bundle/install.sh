#!/usr/bin/env bash
# Installs fairseq (fairseq-fixed 0.12.3.1) and nar_refine from this bundle, without network,
# into a Python that already has torch (a CUDA build on a GPU node), then runs check.sh.
# Usage: bash install.sh [--no-check] [--data MULTI30K_DIR] [--with-torch-extensions]
#   --with-torch-extensions  also build fairseq's torch C++ extensions (libnat for fairseq's
#           Levenshtein transformer, libbase for BASE layers; nar_refine uses neither), which
#           compile against torch's headers and take most of a full build's time
#   PYTHON  the interpreter to install into (default python3; e.g. a venv made with
#           `python3 -m venv --system-site-packages ENV`, so that it sees the node's torch)
# Everything comes from this folder (pip --no-index): the wheels in wheels/ for the bundle's
# Python version (TARGET), fairseq's source built against the installed torch
# (--no-build-isolation, its C++/Cython extensions only), nar_refine's wheel, and
# nar_refine-src/ (the repository: examples/, scripts/, tests/) unpacked beside this script.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY=${PYTHON:-python3}
CHECK=1; CHECK_ARGS=(); TORCH_EXT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-check) CHECK=0 ;;
    --data) CHECK_ARGS+=(--data "$2"); shift ;;
    --with-torch-extensions) TORCH_EXT=1 ;;
    *) echo "install.sh: unknown argument $1 (--no-check, --data DIR, --with-torch-extensions)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "[install $(date -u +%H:%M:%S)] $*"; }
t0=$(date +%s)

target=$(cat "$HERE/TARGET")
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
  || { echo "install.sh: no Python at PYTHON=$PY" >&2; exit 2; }
if [ "$have" != "$target" ]; then
  echo "install.sh: this bundle holds wheels for Python $target, but $PY is Python $have;" \
       "build one for it: scripts/make_offline_bundle.sh --python-version $have" >&2
  exit 2
fi
"$PY" -c "import torch" 2>/dev/null || {
  echo "install.sh: $PY cannot import torch; the bundle does not carry torch: install the" \
       "node's CUDA build first (or give PYTHON= a venv made with --system-site-packages)" >&2
  exit 2
}
if ! ls "$HERE"/wheels/numpy-*.whl > /dev/null 2>&1 && ! "$PY" -c "import numpy" 2>/dev/null; then
  echo "install.sh: the bundle was built --no-numpy but $PY has no numpy" >&2; exit 2
fi
say "$("$PY" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")')"

PIP=("$PY" -m pip install --no-index --find-links "$HERE/wheels" --disable-pip-version-check)
say "requirements (packages already installed in a fitting version are kept)"
"${PIP[@]}" -q -r "$HERE/requirements.txt"
say "fairseq: building its extensions against torch $("$PY" -c 'import torch; print(torch.__version__)')"
# Its three C++/Cython extensions (libbleu, the batching and token-block helpers; with
# --with-torch-extensions also the three that compile against torch's headers) compile side by
# side, one per core (setuptools builds them one after the other otherwise), through
# setuptools' own compiler calls: torch's ninja backend writes one build.ninja for every
# extension, which parallel builds would share, so a `ninja` that fails hides the real one. No
# debug information (-g0). Without CUDA_HOME: fairseq's CUDA kernels are not used by nar_refine
# and would need nvcc.
BUILD=$(mktemp -d); trap 'rm -rf "$BUILD"' EXIT
tar xzf "$HERE"/fairseq_fixed-*.tar.gz -C "$BUILD"
jobs=$(nproc); if [ "$jobs" -gt 6 ]; then jobs=6; fi
printf '\n[build_ext]\nparallel = %s\n' "$jobs" >> "$BUILD"/fairseq_fixed-*/setup.cfg
mkdir "$BUILD/no-ninja"; printf '#!/bin/sh\nexit 1\n' > "$BUILD/no-ninja/ninja"; chmod +x "$BUILD/no-ninja/ninja"
PATH="$BUILD/no-ninja:$PATH" CFLAGS="${CFLAGS:-} -g0" FAIRSEQ_TORCH_EXTENSIONS=$TORCH_EXT env -u CUDA_HOME \
  "${PIP[@]}" -q --no-deps --no-build-isolation "$BUILD"/fairseq_fixed-*/
say "nar_refine"
"${PIP[@]}" -q --no-deps "$HERE"/nar_refine-*.whl
rm -rf "$HERE/nar_refine-src"
tar xzf "$HERE/nar_refine-src.tar.gz" -C "$HERE"
"$PY" -c "import torch, fairseq, nar_refine; print('[install] ok: torch', torch.__version__, '| fairseq', fairseq.__version__, '| nar_refine', nar_refine.__version__)"
say "installed in $(( $(date +%s) - t0 )) s"

if [ "$CHECK" = 1 ]; then
  PYTHON="$PY" bash "$HERE/check.sh" "${CHECK_ARGS[@]}"
fi
