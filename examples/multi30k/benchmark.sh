#!/usr/bin/env bash
# Step 6: the speed/quality benchmark -- every system on test2016 in one process on this machine
# (scripts/benchmark.py): AR beam 1/5, CMLM 1/4/10 iterations, refine_nat (adaptive, fixed steps),
# LaNMT prior/delta/latent search, score (+ latent search) and energy inference.
# Usage: benchmark.sh [--smoke] [--gpu] [WORKDIR] [-- extra benchmark.py args]
#   reads   WORK/checkpoints/{teacher,cmlm,refine_nat,lanmt,score_net,energy_net}/checkpoint_best.pt
#           (a missing one gives a "missing checkpoint" row), WORK/data-bin, WORK/raw/test.de
#   writes  OUT/{results.md,results.json,*.png,hyps/}, OUT = WORK/benchmark (--gpu:
#           WORK/benchmark-gpu); the committed table only when asked: OUT=examples/multi30k/results
#           log in WORK/logs/benchmark.log
#           then the blind test sets (sources only, BLIND=../shared/data/multi30k-blind) translated
#           by every system: OUT/blind/SET/SYSTEM.de + OUT/blind/translations.{md,json}
#           (benchmark.py --translate-only; nothing scored, nothing tuned; BLIND=none skips it)
# Env: THREADS (torch threads, default 1), BLIND_THREADS (for the blind sets, default 2), OUT,
#      ONNX (systems that also run compiled, benchmark.py --onnx; ONNX= for none).
# The AR teacher also runs as CTranslate2 serves it (float32/int8, beam 1/5; converted into
# WORK/ct2/), rows skipped when ctranslate2 is not installed.
# Extra args e.g. -- --latency-sentences 100 --require-all --systems 'ar.*,score.*'
# Only the blind sets of some systems (e.g. a retrained model), keeping the others' entries:
#   python scripts/benchmark.py --translate-only --translate-dir ../shared/data/multi30k-blind \
#     --systems 'refine_nat.*' --threads 2 --out examples/multi30k/results
source "$(dirname "$0")/common.sh"
# the systems that also run compiled (twin rows KEY.onnx: passes exported to WORK/onnx/, ONNX Runtime)
ONNX=${ONNX-refine_nat.fixed0,refine_nat.adaptive*,lanmt.prior,lanmt.delta1,lanmt.delta4,lanmt.search10,score.*}
# a GPU run has its own folder, so it never mixes with (or overwrites) a CPU table
if [ "$GPU" = 1 ]; then OUT=${OUT:-$WORK/benchmark-gpu}; else OUT=${OUT:-$WORK/benchmark}; fi
ARGS=(--work "$WORK" --threads "$THREADS" --out "$OUT" --onnx "$ONNX")
[ "$SMOKE" = 1 ] && ARGS+=(--smoke)
[ "$CUDA" = 1 ] && ARGS+=(--cuda)
log "python scripts/benchmark.py ${ARGS[*]} ${EXTRA_ARGS[*]}"
python "$REPO_DIR/scripts/benchmark.py" "${ARGS[@]}" "${EXTRA_ARGS[@]}" 2>&1 | tee "$WORK/logs/benchmark.log"
rc=${PIPESTATUS[0]}
BLIND=${BLIND:-$REPO_DIR/../shared/data/multi30k-blind}
if [ "$BLIND" != none ] && [ -d "$BLIND" ]; then
  log "blind sets: python scripts/benchmark.py ${ARGS[*]} ${EXTRA_ARGS[*]} --translate-only --translate-dir $BLIND"
  python "$REPO_DIR/scripts/benchmark.py" "${ARGS[@]}" "${EXTRA_ARGS[@]}" --threads "${BLIND_THREADS:-2}" \
    --translate-only --translate-dir "$BLIND" 2>&1 | tee "$WORK/logs/benchmark_blind.log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
exit "$rc"
