#!/usr/bin/env bash
# Step 3: sequence-level knowledge distillation with scripts/distill.py.
#   WORK/data-bin + WORK/checkpoints/teacher/checkpoint_best.pt
#   -> WORK/data-bin-distil  (train targets = teacher beam-5 output; valid/test = real references)
# Usage: distil.sh [--smoke] [WORKDIR] [-- extra fairseq-generate args]
source "$(dirname "$0")/common.sh"
TEACHER="$WORK/checkpoints/teacher/checkpoint_best.pt"
[ -f "$TEACHER" ] || { echo "no teacher at $TEACHER: run teacher.sh first" >&2; exit 1; }
if [ -f "$DISTIL_BIN/distill.json" ] && [ -s "$DISTIL_BIN/train.$SRC-$TGT.$TGT.bin" ]; then
  log "skip: $DISTIL_BIN exists"; cat "$DISTIL_BIN/distill.json"; echo; exit 0
fi
t0=$(date +%s)
python "$REPO_DIR/scripts/distill.py" --data-bin "$BIN" --teacher "$TEACHER" --out "$DISTIL_BIN" \
  --beam 5 --splits train --user-dir "$USER_DIR" -- "${GEN_ARGS[@]}" "${GEN_GPU_ARGS[@]}" "${EXTRA_ARGS[@]}" \
  2>&1 | tee -a "$WORK/logs/distil.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
log "distillation took $(( $(date +%s) - t0 )) s"
# How far are the distilled targets from the references? (BLEU of teacher output vs. references
# on the training set, subword level; a sanity check, not a test score.)
python -c "
import sacrebleu
h=[l.strip() for l in open('$DISTIL_BIN/text/train.$TGT')]; r=[l.strip() for l in open('$WORK/bpe/train.$TGT')]
print('distilled vs. reference train targets, subword BLEU: %.1f' % sacrebleu.corpus_bleu(h,[r],tokenize='none').score)
" | tee -a "$WORK/logs/distil.log"
