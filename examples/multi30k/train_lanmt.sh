#!/usr/bin/env bash
# Step 4c (nar_refine): LaNMT, latent-variable NAT trained with the ELBO (Shu et al. 2020).
#   WORK/data-bin-distil -> WORK/checkpoints/lanmt/checkpoint_best.pt
# Same size (lanmt_small) and budget as the teacher and CMLM.
# Usage: train_lanmt.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT.
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-500}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time budget in hours (0: none)
if [ "$SMOKE" = 1 ]; then ARCH=lanmt_tiny; else ARCH=lanmt_small; fi

train "$WORK/checkpoints/lanmt" "$TRAIN_BIN" \
  --task nar_translation --arch $ARCH --share-all-embeddings \
  --criterion lanmt_elbo \
  --dropout $DROPOUT --weight-decay 0.01 \
  --optimizer adam --adam-betas '(0.9,0.98)' \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS \
  --no-epoch-checkpoints --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
