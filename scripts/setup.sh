#!/usr/bin/env bash
# One-command set-up on a fresh machine (Python 3.11, CPU only).
# Creates a virtual environment (default: ./.venv, override with VENV=path) holding
# torch 2.13.0 (CPU build), fairseq 0.12 (the fairseq-fixed build), sacrebleu,
# sentencepiece, fastBPE + sacremoses (the --bpe fastbpe recipe), matplotlib, pytest, and
# nar_refine in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
# torch pinned: an unpinned torch pulls a multi-GB CUDA build.
$PIP install -q "torch==2.13.0" "cython" "numpy<2.3"
# fairseq's own requirements, minus torchaudio (it would replace our torch; fairseq only
# needs it for speech tasks).
$PIP install -q cffi "hydra-core==1.3.2" "omegaconf==2.3.0" regex "sacrebleu>=2.0" tqdm \
  bitarray scikit-learn packaging sentencepiece sacremoses matplotlib pytest
# fastBPE and fairseq compile C++/Cython extensions against the packages above.
$PIP install -q --no-build-isolation fastbpe
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  echo "[setup] building fairseq 0.12 (fairseq-fixed 0.12.3.1) from source, about 3 minutes"
  $PIP install -q --no-deps --no-build-isolation "fairseq-fixed==0.12.3.1"
fi
$PIP install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, fairseq, nar_refine; print('[setup] ok: torch', torch.__version__, 'fairseq', fairseq.__version__)"
echo "[setup] done. Activate with: source $VENV/bin/activate"
