#!/usr/bin/env bash
# One-command set-up on a fresh machine (Python 3.11, CPU only).
# Creates a virtual environment (default: ./.venv, override with VENV=path) holding
# torch 2.13.0 (CPU build), fairseq 0.12 (the fairseq-fixed build), sacrebleu,
# sentencepiece, fastBPE + sacremoses (the --bpe fastbpe recipe), matplotlib, pytest (+ xdist),
# nar_refine in editable mode, and the optional onnx, onnxruntime and ctranslate2.
# On a GPU machine, a CUDA build of torch instead: TORCH_INDEX_URL names PyTorch's wheel index
# for the machine's CUDA (e.g. https://download.pytorch.org/whl/cu130) and TORCH_SPEC the torch
# release (default torch==2.13.0); e.g.
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 bash scripts/setup.sh
# A node without network that already has a CUDA torch: scripts/make_offline_bundle.sh.
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
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  echo "[setup] $TORCH_SPEC from $TORCH_INDEX_URL"
  $PIP install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  $PIP install -q "cython" "numpy<2.3"
else
  $PIP install -q "$TORCH_SPEC" "cython" "numpy<2.3"
fi
# fairseq's own requirements, minus torchaudio (it would replace our torch; fairseq only
# needs it for speech tasks).
$PIP install -q cffi "hydra-core==1.3.2" "omegaconf==2.3.0" regex "sacrebleu>=2.0" tqdm \
  bitarray scikit-learn packaging sentencepiece sacremoses matplotlib pytest pytest-xdist
# fastBPE and fairseq compile C++/Cython extensions against the packages above.
$PIP install -q --no-build-isolation fastbpe
if ! "$VENV/bin/python" -c "import fairseq" 2>/dev/null; then
  echo "[setup] building fairseq 0.12 (fairseq-fixed 0.12.3.1) from source, about 3 minutes"
  # without CUDA_HOME fairseq builds only its C++/Cython extensions: its CUDA kernels (fairseq's
  # Levenshtein and n-gram blocking) are not used here and would need nvcc and minutes more
  env -u CUDA_HOME $PIP install -q --no-deps --no-build-isolation "fairseq-fixed==0.12.3.1"
fi
$PIP install -q --no-deps --no-build-isolation -e .
# Optional, each on its own (a package that cannot install is skipped with a note; what needs it
# says so): ONNX Runtime for decoding over exported passes (scripts/export_onnx.py, --onnx-dir;
# on a GPU, onnxruntime-gpu instead gives the CUDA provider) and CTranslate2 for the benchmark's
# rows of the AR teacher as users deploy it.
for spec in "onnx==1.23.2" "onnxruntime==1.32.0" "ctranslate2==4.8.5"; do
  $PIP install -q "$spec" || echo "[setup] note: $spec did not install; its features are skipped"
done
"$VENV/bin/python" -c "import torch, fairseq, nar_refine; print('[setup] ok: torch', torch.__version__, 'fairseq', fairseq.__version__)"
echo "[setup] done. Activate with: source $VENV/bin/activate"
