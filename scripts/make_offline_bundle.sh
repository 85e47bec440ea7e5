#!/usr/bin/env bash
# Builds, on a machine with network, a bundle that installs fairseq and nar_refine on a GPU node
# without network that already has a CUDA torch (README, "Offline install on a GPU node").
# Usage: scripts/make_offline_bundle.sh [--python-version 3.12] [--out DIR] [--ref REF]
#                                      [--no-numpy] [--with-plots] [--with-models] [--max-mb 64]
#   --python-version  the node's Python (binary wheels are for it; default: 3.12)
#   --out             where the bundle goes (default: dist/, ignored by git)
#   --ref             the commit of nar_refine to bundle (default: HEAD; uncommitted changes
#                     are not in it)
#   --no-numpy        leave numpy out (16 MB; the node's Python must have it)
#   --with-plots      add matplotlib (25 MB; scripts/benchmark.py's plots), e.g. with --no-numpy
#   --with-models     keep the released Multi30k models (examples/multi30k/models/*.pt, 28 MB) in
#                     nar_refine-src.tar.gz; left out by default (the node trains its own)
#   --max-mb          refuse a bundle larger than this (default 64)
# Writes OUT/nar_refine-offline-pyXY/ and the same as one file, OUT/nar_refine-offline-pyXY.tar:
#   install.sh, check.sh          what to run on the node (see install.sh's header)
#   fairseq_fixed-0.12.3.1+lazyimports.tar.gz
#                                 fairseq-fixed's source, scikit-learn and scipy made optional
#                                 (scripts/offline_bundle/fairseq_sdist.py)
#   nar_refine-VERSION-py3-none-any.whl, nar_refine-src.tar.gz (the repository at REF)
#   wheels/                       the packages of scripts/offline_bundle/requirements.txt and
#                                 their dependencies, for the target Python on manylinux x86_64
#   requirements.txt, TARGET, MANIFEST.txt (files, sizes, sha256, commit)
# Needs: git, and a Python with pip, torch, cython and numpy (the repository's .venv; PYTHON=
# another) to prepare fairseq's source distribution.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TARGET=3.12; OUT="$REPO/dist"; REF=HEAD; NUMPY=1; PLOTS=0; MODELS=0; MAX_MB=64
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) TARGET="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --ref) REF="$2"; shift ;;
    --no-numpy) NUMPY=0 ;;
    --with-plots) PLOTS=1 ;;
    --with-models) MODELS=1 ;;
    --max-mb) MAX_MB="$2"; shift ;;
    *) echo "make_offline_bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$TARGET" in 3.[0-9]|3.[0-9][0-9]) ;; *) echo "--python-version X.Y, not $TARGET" >&2; exit 2 ;; esac
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
XY=${TARGET/./}
NAME=nar_refine-offline-py$XY
mkdir -p "$OUT"; OUT="$(cd "$OUT" && pwd)"
B="$OUT/$NAME"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
rm -rf "$B" "$OUT/$NAME.tar"; mkdir -p "$B/wheels"
say() { echo "[bundle $(date -u +%H:%M:%S)] $*"; }
PIP=("$PY" -m pip --disable-pip-version-check)

commit=$(git -C "$REPO" rev-parse "$REF")
say "nar_refine at $commit"
PATHS=(.); if [ "$MODELS" = 0 ]; then PATHS+=(':(exclude)examples/multi30k/models/*.pt'); fi
git -C "$REPO" archive --format=tar.gz --prefix=nar_refine-src/ -o "$B/nar_refine-src.tar.gz" "$commit" -- "${PATHS[@]}"
tar xzf "$B/nar_refine-src.tar.gz" -C "$TMP"
"${PIP[@]}" wheel -q --no-deps --no-build-isolation --no-index -w "$B" "$TMP/nar_refine-src"

say "fairseq-fixed 0.12.3.1 source, scikit-learn and scipy made optional"
"${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: "fairseq-fixed==0.12.3.1" -d "$TMP"
"$PY" "$REPO/scripts/offline_bundle/fairseq_sdist.py" "$TMP/fairseq_fixed-0.12.3.1.tar.gz" "$B" > /dev/null

say "wheels for Python $TARGET"
grep -v '^#' "$REPO/scripts/offline_bundle/requirements.txt" > "$B/requirements.txt"
if [ "$PLOTS" = 1 ]; then echo matplotlib >> "$B/requirements.txt"; fi
# hydra-core needs antlr4-python3-runtime 4.9, published as a source distribution only: a
# pure-Python wheel of it, built here, serves every Python version
"${PIP[@]}" wheel -q --no-deps -w "$B/wheels" "antlr4-python3-runtime==4.9.3"
"${PIP[@]}" download -q --only-binary=:all: --python-version "$TARGET" --implementation cp \
  --abi "cp$XY" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --find-links "$B/wheels" -d "$B/wheels" -r "$B/requirements.txt"
if [ "$NUMPY" = 0 ]; then
  rm -f "$B"/wheels/numpy-*.whl
  sed -i '/^numpy/d' "$B/requirements.txt"
fi
cp "$REPO/scripts/offline_bundle/install.sh" "$REPO/scripts/offline_bundle/check.sh" "$B/"
echo "$TARGET" > "$B/TARGET"
{
  echo "nar_refine offline bundle for Python $TARGET (manylinux x86_64), made $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nar_refine commit $commit; torch not included (the node's own)"
  echo "options: numpy=$NUMPY plots=$PLOTS models=$MODELS"
  echo
  (cd "$B" && find . -type f ! -name MANIFEST.txt | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-64)" "${f#./}"
  done)
} > "$B/MANIFEST.txt"
tar -cf "$OUT/$NAME.tar" -C "$OUT" "$NAME"
bytes=$(stat -c %s "$OUT/$NAME.tar")
mb=$(( (bytes + 1048575) / 1048576 ))
say "$OUT/$NAME.tar: $mb MB ($bytes bytes), $(ls "$B/wheels" | wc -l) wheels"
if [ "$mb" -gt "$MAX_MB" ]; then
  echo "make_offline_bundle.sh: the bundle is $mb MB, over --max-mb $MAX_MB (--no-numpy saves 16 MB; --with-models adds 28 MB)" >&2
  exit 1
fi
echo "On the node: tar xf $NAME.tar && PYTHON=python3 bash $NAME/install.sh"
