#!/usr/bin/env bash
# Step 4a: fairseq's own CMLM (Mask-Predict) on the distilled data: the peer NAT baseline.
#   WORK/data-bin-distil -> WORK/checkpoints/cmlm/checkpoint_best.pt
# Same size and training budget as the teacher (3+3 layers, d=256, ~30 min on one thread).
# Usage: train_cmlm.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT, STOP_HOURS, TRAIN_BIN (training data),
# CKPT_NAME (checkpoint folder under WORK/checkpoints, default cmlm; e.g. CKPT_NAME=cmlm_distil for a variant).
# Budget: 500 updates or STOP_HOURS (default 0.5) of cumulative training wall time, whichever
# comes first (fairseq --stop-time-hours; the shared machine is slower when others use it).
# checkpoint_best.pt is selected by validation loss, not BLEU: EVAL_BLEU_ARGS (common.sh) does
# not apply here, since fairseq 0.12's translation_lev task never decodes in validation (its
# valid_step only computes the loss), so --eval-bleu logs no bleu and
# --best-checkpoint-metric bleu stops with KeyError: 'bleu' (checked on the toy data).
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-500}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
if [ "$SMOKE" = 1 ]; then STOP_HOURS=${STOP_HOURS:-0}; else STOP_HOURS=${STOP_HOURS:-0.5}; fi
DROPOUT=${DROPOUT:-0.1}

train "$WORK/checkpoints/${CKPT_NAME:-cmlm}" "$TRAIN_BIN" \
  --task translation_lev --noise random_mask \
  --arch cmlm_transformer --share-all-embeddings "${MODEL_ARGS[@]}" \
  --encoder-learned-pos --decoder-learned-pos --apply-bert-init \
  --dropout $DROPOUT --weight-decay 0.01 \
  --criterion nat_loss --label-smoothing 0.1 \
  --optimizer adam --adam-betas '(0.9,0.98)' \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS --fixed-validation-seed 7 \
  --ddp-backend legacy_ddp --no-epoch-checkpoints --seed 1 --num-workers 0 \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
