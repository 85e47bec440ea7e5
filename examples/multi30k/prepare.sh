#!/usr/bin/env bash
# Step 1: subword model + binarised data.
#   raw Multi30k -> WORK/raw/{train,valid,test}.{en,de}   (test = test_2016_flickr)
#   -> joint sentencepiece unigram (~8000, default) or fastBPE (10k merges on Moses tokens)
#   -> WORK/bpe/{train,valid,test}.{en,de} -> fairseq-preprocess --joined-dictionary -> WORK/data-bin
# Usage: prepare.sh [--smoke] [--bpe sentencepiece|fastbpe] [WORKDIR]
# Env: DICT=FILE binarises with this joined dictionary (e.g. examples/multi30k/models/dict.en.txt)
# instead of building one from the training data.
source "$(dirname "$0")/common.sh"

if [ -f "$WORK/bpe_type" ] && [ "$(cat "$WORK/bpe_type")" != "$BPE" ]; then
  echo "$WORK was prepared with --bpe $(cat "$WORK/bpe_type"); use another WORKDIR" >&2; exit 2
fi
echo "$BPE" > "$WORK/bpe_type"

# --- raw text (smoke: first $SMOKE_LINES train lines, 100 valid/test lines) ---------------
mkdir -p "$WORK/raw"
for pair in train:train valid:val test:test_2016_flickr; do
  split=${pair%%:*}; file=${pair#*:}
  for l in $SRC $TGT; do
    out="$WORK/raw/$split.$l"
    [ -s "$out" ] && continue
    # every line must be UTF-8: one line naming the first that is not, and exit 2
    python "$EXAMPLE_DIR/spm_tool.py" check "$DATA/$file.$l" || exit 2
    if [ "$SMOKE" = 1 ]; then
      n=$([ "$split" = train ] && echo "$SMOKE_LINES" || echo 100)
      head -n "$n" "$DATA/$file.$l" > "$out"
    else
      cp "$DATA/$file.$l" "$out"
    fi
  done
done
log "raw text: $(wc -l < "$WORK/raw/train.en") train, $(wc -l < "$WORK/raw/valid.en") valid, $(wc -l < "$WORK/raw/test.en") test"

mkdir -p "$WORK/bpe"
if [ "$BPE" = sentencepiece ]; then
  # --- joint sentencepiece unigram model ----------------------------------------------
  if [ ! -s "$WORK/spm/spm.model" ]; then
    mkdir -p "$WORK/spm"
    log "training sentencepiece (unigram, vocab $SPM_VOCAB) on train.en + train.de"
    python "$EXAMPLE_DIR/spm_tool.py" train --input "$WORK/raw/train.en,$WORK/raw/train.de" \
      --model-prefix "$WORK/spm/spm" --vocab-size "$SPM_VOCAB"
  fi
  for split in train valid test; do for l in $SRC $TGT; do
    [ -s "$WORK/bpe/$split.$l" ] && continue
    log "encoding $split.$l"
    python "$EXAMPLE_DIR/spm_tool.py" encode --model "$WORK/spm/spm.model" \
      < "$WORK/raw/$split.$l" > "$WORK/bpe/$split.$l.tmp"
    mv "$WORK/bpe/$split.$l.tmp" "$WORK/bpe/$split.$l"
  done; done
else
  # --- Moses tokenisation + joint fastBPE ---------------------------------------------
  python -c "import sacremoses" 2>/dev/null || { echo "--bpe fastbpe needs: pip install sacremoses" >&2; exit 2; }
  FAST="$WORK/fastbpe/fast"
  if [ ! -x "$FAST" ]; then
    # The fastbpe wheel has only the apply() binding; learning needs the C++ tool from its sdist.
    log "building the fastBPE command-line tool from the fastbpe sdist"
    mkdir -p "$WORK/fastbpe"
    python -m pip download --no-deps --no-binary :all: -d "$WORK/fastbpe" fastbpe==0.1.0 -q
    tar -xzf "$WORK/fastbpe"/fastBPE-0.1.0.tar.gz -C "$WORK/fastbpe"
    g++ -std=c++11 -pthread -O3 "$WORK/fastbpe/fastBPE-0.1.0/fastBPE/main.cc" \
      -I"$WORK/fastbpe/fastBPE-0.1.0/fastBPE" -o "$FAST"
  fi
  mkdir -p "$WORK/tok"
  for split in train valid test; do for l in $SRC $TGT; do
    [ -s "$WORK/tok/$split.$l" ] && continue
    log "moses-tokenising $split.$l"
    python -c "
import sys; from sacremoses import MosesTokenizer
t = MosesTokenizer(lang='$l')
for line in sys.stdin: print(t.tokenize(line.strip(), return_str=True, escape=False))
" < "$WORK/raw/$split.$l" > "$WORK/tok/$split.$l.tmp"
    mv "$WORK/tok/$split.$l.tmp" "$WORK/tok/$split.$l"
  done; done
  if [ ! -s "$WORK/fastbpe/codes" ]; then
    log "learning $BPE_MERGES joint BPE merges"
    # fastBPE's learnbpe repeats merges once a small corpus runs out of pairs, and applybpe then
    # aborts on the duplicate: keep each pair's first merge
    "$FAST" learnbpe "$BPE_MERGES" "$WORK/tok/train.en" "$WORK/tok/train.de" \
      | awk '!seen[$1 " " $2]++' > "$WORK/fastbpe/codes"
  fi
  for split in train valid test; do for l in $SRC $TGT; do
    [ -s "$WORK/bpe/$split.$l" ] && continue
    log "applying BPE to $split.$l"
    "$FAST" applybpe "$WORK/bpe/$split.$l" "$WORK/tok/$split.$l" "$WORK/fastbpe/codes" > /dev/null
  done; done
fi

# --- binarise ------------------------------------------------------------------------------
if [ ! -s "$BIN/dict.$TGT.txt" ] || [ ! -s "$BIN/test.$SRC-$TGT.$TGT.bin" ]; then
  log "fairseq-preprocess --joined-dictionary -> $BIN"
  # DICT=file: use this joined dictionary (e.g. the released models') instead of building one
  DICT_ARGS=()
  [ -n "${DICT:-}" ] && DICT_ARGS=(--srcdict "$DICT")
  fairseq-preprocess --source-lang $SRC --target-lang $TGT \
    --trainpref "$WORK/bpe/train" --validpref "$WORK/bpe/valid" --testpref "$WORK/bpe/test" \
    --destdir "$BIN" --joined-dictionary --workers 1 "${DICT_ARGS[@]}" \
    > "$WORK/logs/preprocess.log" 2>&1 || { tail -20 "$WORK/logs/preprocess.log"; exit 1; }
fi
log "prepare done: $BIN ($(wc -l < "$BIN/dict.$TGT.txt") joined dictionary entries)"
