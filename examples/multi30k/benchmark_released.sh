#!/usr/bin/env bash
# The results table from the released models (examples/multi30k/models/), no training: prepares
# the data (prepare.sh: raw copies, the released sentencepiece model's pieces, fairseq-preprocess
# with the released dictionaries; ~15 s), then runs scripts/benchmark.py on every released model:
# test2016 BLEU (the same hypotheses as the committed table), batch-1 latency and batched
# throughput on this machine, and the blind test sets translated by every system.
# Usage: benchmark_released.sh [WORKDIR] [-- extra benchmark.py args]
#   writes WORKDIR/benchmark-released/ (default WORKDIR examples/multi30k/work-released);
#   OUT=DIR writes elsewhere (the committed table: OUT=$PWD/examples/multi30k/results/released).
# Env: THREADS (default 1), MODELS (default examples/multi30k/models), BLIND (the blind sets'
# folder, default ../shared/data/multi30k-blind; none skips them).
set -euo pipefail
D="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$D/../.." && pwd)"
MODELS=${MODELS:-$D/models}
WORK_ARG=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in --) shift; EXTRA=("$@"); break ;; *) WORK_ARG="$1" ;; esac; shift
done
WORK=${WORK_ARG:-$D/work-released}
mkdir -p "$WORK/spm" "$WORK/logs"
# the released sentencepiece model and dictionary (prepare.sh's DICT=), so the data matches the
# models exactly
cp "$MODELS/spm.model" "$WORK/spm/spm.model"
if [ ! -s "$WORK/data-bin/test.en-de.de.bin" ]; then
  DICT="$MODELS/dict.en.txt" "$D/prepare.sh" "$WORK" > "$WORK/logs/prepare.out" 2>&1 \
    || { tail -5 "$WORK/logs/prepare.out"; exit 1; }
fi
ARGS=(--work "$WORK" --threads "${THREADS:-1}" --out "${OUT:-$WORK/benchmark-released}")
# only the systems of the released models (a family without a released model is left out, not
# looked for in WORK)
declare -A SYSTEMS=([teacher]="ar.*,ct2.*" [cmlm]="cmlm.*" [refine_nat]="refine_nat.*"
  [lanmt]="lanmt.*" [score_net]="score.*" [energy_net]="energy.*")
patterns=""
for m in teacher cmlm refine_nat lanmt score_net energy_net; do
  if [ -f "$MODELS/$m.pt" ]; then
    ARGS+=("--${m//_/-}" "$MODELS/$m.pt"); patterns="${patterns:+$patterns,}${SYSTEMS[$m]}"
  fi
done
[ -n "$patterns" ] || { echo "no released models in $MODELS" >&2; exit 1; }
ARGS+=(--systems "$patterns")
# latent search as tuned on the valid set for the released LaNMT (noise 1.0; m up to 40):
# results/ablation/decoding_sweeps.md
ARGS+=(--search-noise 1.0 --search-sizes 5,10,20,40)
cd "$REPO"
python scripts/benchmark.py "${ARGS[@]}" "${EXTRA[@]}"
BLIND=${BLIND:-$REPO/../shared/data/multi30k-blind}
if [ "$BLIND" != none ] && [ -d "$BLIND" ]; then
  python scripts/benchmark.py "${ARGS[@]}" "${EXTRA[@]}" --translate-only --translate-dir "$BLIND"
fi
