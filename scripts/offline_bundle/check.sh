#!/usr/bin/env bash
# The GPU profile's first steps, right after an offline install (install.sh runs it).
# Usage: bash check.sh [--data MULTI30K_DIR]      (PYTHON as for install.sh; WORK to keep files)
#   with Multi30k (--data DIR or DATA=DIR): examples/multi30k/run_pipeline.sh --gpu --smoke,
#     i.e. the GPU profile's commands at smoke size: subwords, teacher, distillation, fairseq's
#     CMLM and the NAT_MODELS (default lanmt), each evaluated; no benchmark
#   without: tiny LaNMT and refine_nat models trained and decoded on generated toy data with
#     the profile's fairseq settings (--fp16 where CUDA is there) through the installed plugin
# Either way it fails (non-zero) if a step fails.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/nar_refine-src"
PY=${PYTHON:-python3}
DATA=${DATA:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift ;;
    *) echo "check.sh: unknown argument $1 (--data DIR)" >&2; exit 2 ;;
  esac
  shift
done
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/nar_refine_check.XXXXXX")}
mkdir -p "$WORK/bin"
# the installed console scripts (fairseq-train, ...) and `python` = this interpreter (a wrapper,
# not a link: a link to a venv's python would start the base interpreter)
printf '#!/bin/sh\nexec "%s" "$@"\n' "$("$PY" -c 'import sys; print(sys.executable)')" > "$WORK/bin/python"
chmod +x "$WORK/bin/python"
export PATH="$WORK/bin:$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
say() { echo "[check $(date -u +%H:%M:%S)] $*"; }
t0=$(date +%s)
CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$CUDA" = 1 ]; then
  say "GPU: $(python -c 'import torch; print(torch.cuda.get_device_name(0))')"
  FP16=(--fp16)
else
  say "no CUDA device: the commands run on the CPU without --fp16"
  FP16=()
fi

if [ -n "$DATA" ]; then
  say "run_pipeline.sh --gpu --smoke on $DATA (work: $WORK/pipeline)"
  DATA="$DATA" NAT_MODELS=${NAT_MODELS:-lanmt} BENCHMARK=0 \
    bash "$SRC/examples/multi30k/run_pipeline.sh" --gpu --smoke "$WORK/pipeline"
  cat "$WORK/pipeline/results/summary.tsv"
else
  USER_DIR=$(python -c "import nar_refine, os; print(os.path.dirname(nar_refine.__file__))")
  say "toy data, tiny models (work: $WORK; plugin: $USER_DIR)"
  python - "$SRC/tests" "$WORK/raw" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from helpers import write_toy_corpus  # the test suite's deterministic toy task
write_toy_corpus(sys.argv[2])
EOF
  fairseq-preprocess --source-lang src --target-lang tgt --trainpref "$WORK/raw/train" \
    --validpref "$WORK/raw/valid" --testpref "$WORK/raw/test" --destdir "$WORK/bin-data" \
    --joined-dictionary --workers 1 > "$WORK/preprocess.log" 2>&1
  for family in lanmt refine_nat; do
    if [ "$family" = lanmt ]; then ARGS=(--arch lanmt_tiny --criterion lanmt_elbo); DECODE=(--decoding delta)
    else ARGS=(--arch refine_nat_tiny --criterion refine_nat_loss); DECODE=(--iter-decode-max-iter 4); fi
    fairseq-train "$WORK/bin-data" --user-dir "$USER_DIR" --task nar_translation "${ARGS[@]}" \
      --share-all-embeddings --optimizer adam --lr 3e-3 --lr-scheduler inverse_sqrt \
      --warmup-updates 20 --max-tokens 4096 --max-update 40 --no-epoch-checkpoints \
      --disable-validation --num-workers 0 --log-format simple --log-interval 20 "${FP16[@]}" \
      --save-dir "$WORK/$family" > "$WORK/$family.train.log" 2>&1 \
      || { tail -30 "$WORK/$family.train.log"; exit 1; }
    fairseq-generate "$WORK/bin-data" --user-dir "$USER_DIR" --task nar_translation \
      --path "$WORK/$family/checkpoint_last.pt" --gen-subset test --max-tokens 4096 \
      "${DECODE[@]}" "${FP16[@]}" > "$WORK/$family.gen.out" 2>&1 \
      || { tail -30 "$WORK/$family.gen.out"; exit 1; }
    hyps=$(grep -c '^H-' "$WORK/$family.gen.out")
    [ "$hyps" = 60 ] || { echo "check.sh: $family: $hyps of 60 test sentences translated" >&2; exit 1; }
    say "$family: trained 40 updates, translated 60/60: $(grep -o 'BLEU4 = [0-9.]*' "$WORK/$family.gen.out")"
  done
fi
say "ok in $(( $(date +%s) - t0 )) s"
