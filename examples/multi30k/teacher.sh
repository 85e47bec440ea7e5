#!/usr/bin/env bash
# Step 2: autoregressive Transformer teacher (also the AR baseline for speed/BLEU).
#   WORK/data-bin -> WORK/checkpoints/teacher/checkpoint_best.pt (+ checkpoint_last.pt, DONE)
# Usage: teacher.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# A fixed number of updates (MAX_UPDATE, default 3000; validation every epoch of ~136 updates of
# 4096 tokens), so that a rerun re-creates the same teacher; checkpoint_best.pt has the lowest
# valid loss. PATIENCE=N stops after N epochs without a better valid loss instead (default -1:
# off). Recipe: 4+4 layers d=128, lr 2e-3, warm-up 300, dropout 0.2, seed 1.
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT, PATIENCE, THREADS.
source "$(dirname "$0")/common.sh"
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-3000}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-300}; fi
LR=${LR:-2e-3}
DROPOUT=${DROPOUT:-0.2}
PATIENCE=${PATIENCE:--1}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time cap in hours (0: none; run_pipeline.sh --gpu sets one)

train "$WORK/checkpoints/teacher" "$BIN" \
  --arch transformer --share-all-embeddings "${MODEL_ARGS[@]}" \
  --dropout $DROPOUT --weight-decay 0.0001 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 0.0 \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS \
  --no-epoch-checkpoints --patience $PATIENCE --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
