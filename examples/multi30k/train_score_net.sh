#!/usr/bin/env bash
# Step 4d (nar_refine): score network for continuous-space refinement (Lee, Shu & Cho 2020),
# trained on a frozen LaNMT (run train_lanmt.sh first).
#   WORK/data-bin-distil + WORK/checkpoints/lanmt/checkpoint_best.pt
#   -> WORK/checkpoints/score_net/checkpoint_best.pt
# Usage: train_score_net.sh [--smoke] [WORKDIR] [-- extra fairseq-train args]
# Env overrides: MAX_UPDATE, LR, WARMUP, DROPOUT, LANMT (checkpoint path),
#   NAME (checkpoint folder under WORK/checkpoints; default score_net or energy_net),
#   DELTA_STEPS (k of the target z_k - z, default 4) and NOISE_DRAW (uniform: start points
#   mu + u * sigma * eps with u ~ U(0,1) per batch; fixed: u = 1), the reference's recipe
#   (zomux/lanmt-ebm); DELTA_STEPS=1 NOISE_DRAW=fixed is nar_refine 0.1's recipe.
# Validation starts at the prior mean (where inference starts); checkpoint_best is selected on
# the score-matching loss there.
source "$(dirname "$0")/common.sh"
[ -s "$TRAIN_BIN/train.$SRC-$TGT.$TGT.bin" ] || { echo "no $TRAIN_BIN: run distil.sh first (or set TRAIN_BIN)" >&2; exit 1; }
LANMT=${LANMT:-$WORK/checkpoints/lanmt/checkpoint_best.pt}
[ -f "$LANMT" ] || { echo "no LaNMT checkpoint $LANMT: run train_lanmt.sh first" >&2; exit 1; }
KIND=${KIND:-score}  # score or energy (KIND=energy: energy_net, in checkpoints/energy_net)
if [ "$SMOKE" = 1 ]; then MAX_UPDATE=${MAX_UPDATE:-100}; ARCH=${KIND}_net_tiny; else MAX_UPDATE=${MAX_UPDATE:-500}; ARCH=${KIND}_net_small; fi
if [ "$SMOKE" = 1 ]; then WARMUP=${WARMUP:-10}; else WARMUP=${WARMUP:-200}; fi
LR=${LR:-1e-3}
DROPOUT=${DROPOUT:-0.1}
DELTA_STEPS=${DELTA_STEPS:-4}
NOISE_DRAW=${NOISE_DRAW:-uniform}
STOP_HOURS=${STOP_HOURS:-0}  # wall-time budget in hours (0: none)

train "$WORK/checkpoints/${NAME:-${KIND}_net}" "$TRAIN_BIN" \
  --task nar_translation --arch $ARCH --lanmt-path "$LANMT" \
  --criterion score_matching --delta-steps $DELTA_STEPS --noise-scale-draw $NOISE_DRAW \
  --inference-dropout $DROPOUT \
  --optimizer adam --adam-betas '(0.9,0.98)' \
  --lr $LR --lr-scheduler inverse_sqrt --warmup-updates $WARMUP --warmup-init-lr 1e-07 \
  --max-tokens $MAX_TOKENS --max-update $MAX_UPDATE --stop-time-hours $STOP_HOURS \
  --no-epoch-checkpoints --seed 1 --num-workers 0 \
  "${EVAL_BLEU_ARGS[@]}" \
  --log-format simple --log-interval 50 "${EXTRA_ARGS[@]}"
