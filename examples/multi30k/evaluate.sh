#!/usr/bin/env bash
# Step 5: translate test2016 with a trained model and score it with evaluate.py.
# Usage: evaluate.sh MODEL [--smoke] [WORKDIR]
#   MODEL: teacher (beam 5 and beam 1) | cmlm (10 mask-predict iterations, length beam 1 and 5)
#          | refine_nat | lanmt | score_net | energy_net (nar_refine models; need their training steps)
# Writes WORK/results/MODEL.SETTING.{gen.txt,hyp.txt,json}; appends WORK/results/summary.tsv.
MODEL="$1"; shift
source "$(dirname "$0")/common.sh"
# CKPT_NAME (env): checkpoint folder and result prefix, default MODEL (e.g. CKPT_NAME=cmlm_distil evaluate.sh cmlm)
NAME=${CKPT_NAME:-$MODEL}
CKPT="$WORK/checkpoints/$NAME/checkpoint_best.pt"
[ -f "$CKPT" ] || { echo "no checkpoint $CKPT" >&2; exit 1; }
mkdir -p "$WORK/results"
BS=${BATCH_SIZE:-100}
case "$MODEL" in
  teacher) SETTINGS=(
      "beam5|--task translation --beam 5 ${GEN_ARGS[*]}"
      "beam1|--task translation --beam 1 ${GEN_ARGS[*]}") ;;
  cmlm) SETTINGS=(
      "iter10|--task translation_lev --iter-decode-max-iter 10 --iter-decode-eos-penalty 0 --beam 1"
      "iter10_lenbeam5|--task translation_lev --iter-decode-max-iter 10 --iter-decode-eos-penalty 0 --iter-decode-with-beam 5 --beam 1") ;;
  refine_nat) SETTINGS=(
      "refine_adaptive|--task nar_translation --decoding refine --iter-decode-max-iter 10 --beam 1") ;;
  lanmt) SETTINGS=(
      "delta|--task nar_translation --decoding delta --iter-decode-max-iter 4 --beam 1") ;;
  score_net) SETTINGS=(
      "score1|--task nar_translation --decoding score --score-steps 1 --beam 1") ;;
  energy_net) SETTINGS=(
      "energy1|--task nar_translation --decoding energy --score-steps 1 --beam 1") ;;
  *) echo "unknown model $MODEL" >&2; exit 2 ;;
esac
for s in "${SETTINGS[@]}"; do
  name=${s%%|*}; flags=${s#*|}
  out="$WORK/results/$NAME.$name"
  if [ -s "$out.json" ]; then log "skip: $out.json exists"; continue; fi
  # shellcheck disable=SC2086
  cmd="fairseq-generate $BIN --path $CKPT --user-dir $USER_DIR --gen-subset test $flags --batch-size $BS --num-workers 0 ${GEN_GPU_ARGS[*]}"
  log "$NAME/$name: $cmd"
  echo "$cmd" > "$out.command.txt"
  $cmd > "$out.gen.txt" 2> "$out.gen.log" || { tail -20 "$out.gen.log"; exit 1; }
  python "$EXAMPLE_DIR/evaluate.py" "$out.gen.txt" --ref "$WORK/raw/test.$TGT" --bpe "$BPE" \
    --lang $TGT --gen-log "$out.gen.log" --name "$NAME/$name" --out-hyp "$out.hyp.txt" --json "$out.json"
  python -c "
import json; d=json.load(open('$out.json'))
print('\t'.join(['$NAME','$name',str(d['sacrebleu_cased_13a']),str(d['papers_lowercased_dedup_13a']),str(d['generate_speed'])]))
" >> "$WORK/results/summary.tsv"
done
