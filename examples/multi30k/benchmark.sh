#!/usr/bin/env bash
# Step 6: the speed/quality benchmark -- every system on test2016 in one process on this machine
# (scripts/benchmark.py): AR beam 1/5, CMLM 1/4/10 iterations, refine_nat (adaptive, fixed steps),
# LaNMT prior/delta/latent search, score (+ latent search) and energy inference.
# Usage: benchmark.sh [--smoke] [WORKDIR] [-- extra benchmark.py args]
#   reads   WORK/checkpoints/{teacher,cmlm,refine_nat,lanmt,score_net,energy_net}/checkpoint_best.pt
#           (a missing one gives a "missing checkpoint" row), WORK/data-bin, WORK/raw/test.de
#   writes  examples/multi30k/results/{results.md,results.json,*.png,hyps/} (smoke: WORK/benchmark/)
#           log in WORK/logs/benchmark.log
# Env: THREADS (torch threads, default 1), OUT (output dir).
# Extra args e.g. -- --latency-sentences 100 --require-all --systems 'ar.*,score.*'
source "$(dirname "$0")/common.sh"
ARGS=(--work "$WORK" --threads "$THREADS")
[ "$SMOKE" = 1 ] && ARGS+=(--smoke)
[ -n "${OUT:-}" ] && ARGS+=(--out "$OUT")
log "python scripts/benchmark.py ${ARGS[*]} ${EXTRA_ARGS[*]}"
python "$REPO_DIR/scripts/benchmark.py" "${ARGS[@]}" "${EXTRA_ARGS[@]}" 2>&1 | tee "$WORK/logs/benchmark.log"
exit "${PIPESTATUS[0]}"
