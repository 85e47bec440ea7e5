#!/usr/bin/env bash
# The refine_nat ablation: the reference code's choices, one at a time, each trained from scratch
# on the same distilled data with the same seed, batch and number of updates, then measured by
# scripts/refine_diagnostic.py on the valid set (per step: BLEU, repeated words, tokens changed;
# injected errors at the gold length on the distilled valid set) and tabled by
# scripts/ablation_table.py.
#   full         the defaults: exact corruption count, post-norm, decoder 2's own matrix
#   old          nar_refine 0.2: independent corruption, pre-norm, one shared matrix
#   independent  full, but each position corrupted independently (clean inputs, no runs)
#   prenorm      full, but pre-norm decoders
#   shared       full, but decoder 2 reads and writes the shared matrix
#   teacher_encoder  full, the encoder started from the teacher's (--init-encoder-from)
#   shortening   teacher_encoder plus </s> in the target (--target-eos-slack 2): a too-long
#                output can end early instead of filling its extra positions
#   tokens_only  teacher_encoder, but decoder 2 reads the previous tokens only, not the previous
#                pass's hidden states (--refine-input tokens): are they what a step copies?
# Usage: ablate_refine_nat.sh [--smoke] [WORKDIR]   (runs are resumable; DONE files skip them)
# The diagnostic decodes with --refine-repeats keep, as the committed table (REFINE_REPEATS=mask:
# the decoding default).
# Env: UPDATES (default 800), VARIANTS (default "full old independent prenorm shared"; also
# teacher_encoder, shortening and tokens_only, which need the teacher; run two
# lists in parallel for two lanes), OUT (table, default WORK/ablation/refine_ablation.md).
source "$(dirname "$0")/common.sh"
if [ "$SMOKE" = 1 ]; then UPDATES=${UPDATES:-20}; else UPDATES=${UPDATES:-800}; fi
declare -A VARIANT_ARGS=(
  [full]=""
  [old]="--corruption-count independent --decoder-norm pre --refine-embedding shared"
  [independent]="--corruption-count independent"
  [prenorm]="--decoder-norm pre"
  [shared]="--refine-embedding shared"
  [teacher_encoder]="--init-encoder-from $WORK/checkpoints/teacher/checkpoint_best.pt"
  [shortening]="--init-encoder-from $WORK/checkpoints/teacher/checkpoint_best.pt --target-eos-slack 2"
  [tokens_only]="--init-encoder-from $WORK/checkpoints/teacher/checkpoint_best.pt --refine-input tokens"
)
declare -A NOTE=([full]="defaults" [old]="nar_refine 0.2 (all three off)"
  [independent]="independent corruption" [prenorm]="pre-norm" [shared]="shared matrix"
  [teacher_encoder]="encoder from the teacher"
  [shortening]="encoder from the teacher + shortening"
  [tokens_only]="encoder from the teacher, decoder 2 reads tokens only")
VALID_DISTIL="$WORK/data-bin-distil-valid"
if [ ! -s "$VALID_DISTIL/valid.$SRC-$TGT.$TGT.bin" ]; then
  log "distilling the valid set (the injected-error test needs targets the models can reach)"
  python "$REPO_DIR/scripts/distill.py" --data-bin "$BIN" --teacher "$WORK/checkpoints/teacher/checkpoint_best.pt" \
    --out "$VALID_DISTIL" --beam 5 --splits valid --user-dir "$USER_DIR" > "$WORK/logs/distil_valid.log" 2>&1 \
    || { tail -5 "$WORK/logs/distil_valid.log"; exit 1; }
fi
mkdir -p "$WORK/ablation"
for v in ${VARIANTS:-full old independent prenorm shared}; do
  [ -n "${VARIANT_ARGS[$v]+x}" ] || { echo "unknown variant $v" >&2; exit 2; }
  # shellcheck disable=SC2086
  NAME=ablation_refine_$v MAX_UPDATE=$UPDATES WARMUP=${WARMUP:-100} "$EXAMPLE_DIR/train_refine_nat.sh" \
    "$([ "$SMOKE" = 1 ] && echo --smoke)" "$WORK" -- --max-tokens 2048 ${VARIANT_ARGS[$v]} > /dev/null
  if [ ! -s "$WORK/ablation/$v.json" ]; then
    log "diagnostic: $v"
    python "$REPO_DIR/scripts/refine_diagnostic.py" --path "$WORK/checkpoints/ablation_refine_$v/checkpoint_last.pt" \
      --data-bin "$BIN" --gen-subset valid --ref "$WORK/raw/valid.de" --steps 10 \
      --inject-data "$VALID_DISTIL" --inject-subset valid --threads "$THREADS" \
      --refine-repeats "${REFINE_REPEATS:-keep}" \
      --out "$WORK/ablation/$v" > "$WORK/logs/diagnostic_$v.log" 2>&1 || { tail -5 "$WORK/logs/diagnostic_$v.log"; exit 1; }
  fi
done
diags=()
for v in full old independent prenorm shared teacher_encoder shortening tokens_only; do
  [ -s "$WORK/ablation/$v.json" ] && diags+=(--diag "$v=$WORK/ablation/$v.json=${NOTE[$v]}")
done
python "$REPO_DIR/scripts/ablation_table.py" "${diags[@]}" --out "${OUT:-$WORK/ablation/refine_ablation.md}" \
  --title "refine_nat ablation: what makes refinement repair" \
  --intro "Each variant trained from scratch for $UPDATES updates (distilled Multi30k, 2,048-token batches, seed 1, one thread), checkpoint_last; valid set, 10 forced refinement steps, sacreBLEU cased 13a. Command: \`examples/multi30k/ablate_refine_nat.sh\` (UPDATES=$UPDATES)."
