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
# --max-update and --stop-time-hours, so a resumed run continues the same schedule. Anneal only
# once the decoder reads z: watch z_usage in the validation lines (NLL at z = prior mean minus
# NLL at z = posterior mean, nats per token); with the budget annealed before it is clearly
# above 0 the KL collapses and z carries nothing (the first Multi30k run: KL 0.006 bits/token
# after annealing from update 400 to 800). Defaults: held for 3000 updates (the decoder reads z
# clearly by then: z_usage about 0.5 nats/token at update 2,340 of the 2026-11-29 run), annealed
# to 0 by update 4500, then budget 0 for the rest of training, as the reference's second half
# and fine-tune: while the budget holds, q(z|x,y) can copy y into z and a delta step
# y -> z -> y is nearly the identity; at budget 0 the posterior becomes a correction. For the
# paper's regime (GPU, 100k+ updates) set e.g. KL_HOLD=50000 KL_ANNEAL=50000. --smoke holds it.
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; else MAX_UPDATE=${MAX_UPDATE:-500}; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time budget in hours (0: none)
if [ "$SMOKE" = 1 ]; then KL_HOLD=${KL_HOLD:-100000}; else KL_HOLD=${KL_HOLD:-3000}; fi
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
