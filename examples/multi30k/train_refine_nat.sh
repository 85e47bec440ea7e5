#!/usr/bin/env bash
# Step 4b (nar_refine): discrete iterative refinement NAT (Lee, Mansimov & Cho 2018).
#   WORK/data-bin-distil -> WORK/checkpoints/refine_nat/checkpoint_best.pt (best validation BLEU)
# Same size (refine_nat_small: 3 layers, d=256) and budget as the teacher and CMLM.
# Usage: train_refine_nat.sh [--smoke] [WORKDIR] [-- extra fairseq-train args, e.g. --refine-passes 4]
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT, STOP_HOURS, NAME.
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; ARCH=refine_nat_tiny; else MAX_UPDATE=${MAX_UPDATE:-500}; ARCH=refine_nat_small; NAT_MODEL_ARGS+=(--refine-layers $LAYERS); fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time budget in hours (0: none)
NAME=${NAME:-refine_nat}  # checkpoint directory under WORK/checkpoints (e.g. a variant of the recipe)

# Validation runs the decoder's own chain (alpha 1, no corrupted references, argmax) and logs
# its per-pass NLL and length accuracy; checkpoint_best.pt is chosen by validation BLEU of the
# adaptive decoder (EVAL_BLEU_ARGS, common.sh), as the reference selects its models. Without
# EVAL_BLEU_ARGS fairseq would select on the valid loss, the pure chain's loss (never the
# training mix, whose corrupted references leak the answer).
train "$WORK/checkpoints/$NAME" "$TRAIN_BIN" \
  --task nar_translation --arch $ARCH --share-all-embeddings "${NAT_MODEL_ARGS[@]}" \
  --criterion refine_nat_loss \
  --dropout $DROPOUT --weight-decay 0.01 \
  --optimizer adam --adam-betas '(0.9,0.98)' \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS \
  --no-epoch-checkpoints --seed 1 --num-workers 0 \
  "${EVAL_BLEU_ARGS[@]}" \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
