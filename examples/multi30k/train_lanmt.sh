#!/usr/bin/env bash
# Step 4c (nar_refine): LaNMT, latent-variable NAT trained with the ELBO (Shu et al. 2020).
#   WORK/data-bin-distil -> WORK/checkpoints/lanmt/checkpoint_best.pt (best validation BLEU)
# Same size (lanmt_small) and budget as the teacher and CMLM.
# Usage: train_lanmt.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT, STOP_HOURS, KL_HOLD, KL_ANNEAL, NAME (checkpoint
# folder under WORK/checkpoints, default lanmt).
#
# KL budget ("free bits", 1 nat per source position): held for KL_HOLD updates, then annealed
# to 0 over KL_ANNEAL updates. The schedule counts updates from the start and ignores
# --max-update and --stop-time-hours, so a resumed run continues the same schedule. Default:
# held throughout (KL_HOLD=1000000). The reference anneals the budget to 0 in the second half of
# training; on Multi30k at this size that lets the KL and z-usage collapse and delta inference
# stop correcting (results/ablation/lanmt_budget.md: annealed from update 3000 to 0 by 4500
# against held, from the same checkpoint). KL_HOLD=3000 KL_ANNEAL=1500 is that schedule. Anneal
# only once the decoder reads z (z_usage in the validation lines clearly above 0): annealed
# early, z carries nothing. --smoke holds it too.
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-500}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time budget in hours (0: none)
KL_HOLD=${KL_HOLD:-1000000}
KL_ANNEAL=${KL_ANNEAL:-1500}
if [ "$SMOKE" = 1 ]; then ARCH=lanmt_tiny; else ARCH=lanmt_small; fi

# lanmt_elbo's defaults are the reference's: label smoothing 0.1, length loss weight 1 per
# sentence; validation logs loss = NLL + KL + length (no budget) and z_usage, and
# checkpoint_best.pt is chosen by validation BLEU (EVAL_BLEU_ARGS, common.sh).
train "$WORK/checkpoints/${NAME:-lanmt}" "$TRAIN_BIN" \
  --task nar_translation --arch $ARCH --share-all-embeddings "${NAT_MODEL_ARGS[@]}" \
  --criterion lanmt_elbo --kl-budget-hold-updates $KL_HOLD --kl-budget-anneal-updates $KL_ANNEAL \
  --dropout $DROPOUT --weight-decay 0.01 \
  --optimizer adam --adam-betas '(0.9,0.98)' \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS \
  --no-epoch-checkpoints --seed 1 --num-workers 0 \
  "${EVAL_BLEU_ARGS[@]}" --eval-bleu-args '{"iter_decode_max_iter": 4}' \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
