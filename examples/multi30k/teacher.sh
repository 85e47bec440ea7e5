#!/usr/bin/env bash
# Step 2: autoregressive Transformer teacher (also the AR baseline for speed/BLEU).
#   WORK/data-bin -> WORK/checkpoints/teacher/checkpoint_best.pt (+ checkpoint_last.pt, DONE)
# Usage: teacher.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# Budget: about 30 min on ONE CPU thread. Measured on the shared 2-core machine: ~3.7 s per
# update (max-tokens 4096, ~3400 target tokens per batch, ~900 tokens/s), so 500 updates
# (~3.7 epochs). With so few updates, warmup 1000 / lr 5e-4 / dropout 0.3 never reach a useful
# learning rate and underfit: defaults are warmup 200, peak lr 1e-3, dropout 0.1.
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT (e.g. MAX_UPDATE=20000 LR=5e-4 WARMUP=1000
# DROPOUT=0.3 for a longer, better run on a bigger machine).
source "$(dirname "$0")/common.sh"
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-500}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}

train "$WORK/checkpoints/teacher" "$BIN" \
  --arch transformer --share-all-embeddings "${MODEL_ARGS[@]}" \
  --dropout $DROPOUT --weight-decay 0.0001 \
  --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --optimizer adam --adam-betas '(0.9,0.98)' --clip-norm 0.0 \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE \
  --no-epoch-checkpoints --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
