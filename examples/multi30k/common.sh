# Shared settings for the Multi30k En->De step scripts. Sourced, not run.
# Every step accepts:  [--smoke] [--gpu] [--bpe sentencepiece|fastbpe] [WORKDIR]
#   --smoke   first 500 training sentences, tiny models, a few dozen updates (CI; minutes)
#   --gpu     the one-GPU profile (run_pipeline.sh --gpu): --fp16 training and decoding, batches of
#             16384 tokens, CUDA-timed benchmark; wall-time budgets are run_pipeline.sh's. Without a
#             CUDA device it runs the same commands on the CPU without --fp16 (a plumbing check).
#             One GPU (CUDA_VISIBLE_DEVICES pinned to the first); GPUS=N trains on N of them
#             (--distributed-world-size N, N x 16384 tokens per update), see gpus.sh.
#   --bpe     subword model: sentencepiece (default, joint unigram ~8000) or fastbpe
#             (joint BPE, 10k merges, on Moses-tokenised text)
#   WORKDIR   default examples/multi30k/work (smoke: examples/multi30k/work-smoke)
# Environment overrides: DATA (raw Multi30k dir), MAX_UPDATE, USER_DIR, THREADS, SPM_VOCAB,
# BPE_MERGES.
set -euo pipefail

EXAMPLE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$EXAMPLE_DIR/../.." && pwd)"
# Multi30k: the shared/ folder beside the checkout (../shared/data/multi30k), or DATA=
DATA=${DATA:-$REPO_DIR/../shared/data/multi30k}
[ -d "$DATA" ] || { echo "Multi30k not found at $DATA: put shared/ beside the checkout or set DATA=" >&2; exit 1; }
# use the repository's virtual environment (scripts/setup.sh) when none is active
if ! command -v fairseq-train > /dev/null && [ -x "$REPO_DIR/.venv/bin/fairseq-train" ]; then
  export PATH="$REPO_DIR/.venv/bin:$PATH"
fi
command -v fairseq-train > /dev/null || { echo "fairseq-train not found: run scripts/setup.sh and 'source .venv/bin/activate'" >&2; exit 1; }
USER_DIR=${USER_DIR:-$REPO_DIR/nar_refine}   # patches torch.load for fairseq (torch>=2.6)
SMOKE=0
GPU=0
BPE=sentencepiece
WORK=""
EXTRA_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --gpu) GPU=1 ;;
    --bpe) BPE="$2"; shift ;;
    --bpe=*) BPE="${1#--bpe=}" ;;
    --) shift; EXTRA_ARGS+=("$@"); break ;;
    -*) EXTRA_ARGS+=("$1") ;;
    *) WORK="$1" ;;
  esac
  shift
done
case "$BPE" in sentencepiece|fastbpe) ;; *) echo "unknown --bpe $BPE" >&2; exit 2 ;; esac
if [ -z "$WORK" ]; then
  if [ "$SMOKE" = 1 ]; then WORK="$EXAMPLE_DIR/work-smoke"; else WORK="$EXAMPLE_DIR/work"; fi
fi
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"

# One thread by default: the machine is shared and small; results are timed on one core.
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

SRC=en
TGT=de
BIN="$WORK/data-bin"            # real references
DISTIL_BIN="$WORK/data-bin-distil"   # teacher's beam-5 output as targets
# The NAT models train on TRAIN_BIN: the distilled data by default; TRAIN_BIN="$BIN" trains on
# the references instead (run_results.sh does, see its header).
TRAIN_BIN=${TRAIN_BIN:-$DISTIL_BIN}
# fairseq-generate post-processing matching the subword model
if [ "$BPE" = sentencepiece ]; then POST=sentencepiece; else POST=subword_nmt; fi

# Model sizes: same for teacher and all NAT models (fair comparison), tiny for --smoke.
if [ "$SMOKE" = 1 ]; then
  LAYERS=1; DIM=64; FFN=128; HEADS=2; MAX_TOKENS=1024
  SMOKE_LINES=500; SPM_VOCAB=${SPM_VOCAB:-1000}; BPE_MERGES=${BPE_MERGES:-1000}
else
  # 4+4 layers, d=128, FFN 256: the data README's reference size, and a better teacher than
  # 3+3 d=256 FFN-1024 in the same CPU time (examples/multi30k/README.md, "Conventions")
  LAYERS=4; DIM=128; FFN=256; HEADS=4; MAX_TOKENS=4096
  SMOKE_LINES=0; SPM_VOCAB=${SPM_VOCAB:-8000}; BPE_MERGES=${BPE_MERGES:-10000}
fi
# --gpu: fp16 where CUDA is there, larger batches (the models are the same), on GPUS GPUs
# (default 1; gpus.sh pins CUDA_VISIBLE_DEVICES, or fairseq-train would use every GPU it sees)
CUDA=0
if [ "$GPU" = 1 ]; then
  # shellcheck source=examples/multi30k/gpus.sh
  source "$EXAMPLE_DIR/gpus.sh"
  pin_gpus || exit 2
  CUDA_COUNT=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
  if [ "$CUDA_COUNT" -gt 0 ]; then CUDA=1; fi
  if [ "$CUDA" = 1 ] && [ "$CUDA_COUNT" -lt "$GPUS" ]; then
    echo "GPUS=$GPUS, but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES shows $CUDA_COUNT GPU(s)" >&2; exit 2
  fi
fi
TRAIN_GPU_ARGS=(); GEN_GPU_ARGS=()
if [ "$CUDA" = 1 ]; then
  TRAIN_GPU_ARGS=(--fp16 --distributed-world-size "$GPUS"); GEN_GPU_ARGS=(--fp16)
fi
if [ "$GPU" = 1 ] && [ "$SMOKE" = 0 ]; then MAX_TOKENS=16384; fi
if [ "$GPU" = 1 ] && [ "$CUDA" = 0 ]; then
  echo "[--gpu] no CUDA device here: the GPU profile runs on the CPU without --fp16 (plumbing check)" >&2
fi
if [ "$CUDA" = 1 ]; then
  echo "[--gpu] training on $GPUS GPU(s): CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES (GPUS=N for more)" >&2
fi
# Generation length limit: the smoke models are barely trained and would babble to 200 tokens.
if [ "$SMOKE" = 1 ]; then GEN_ARGS=(--max-len-a 1.2 --max-len-b 10); else GEN_ARGS=(); fi
# Checkpoint selection by validation BLEU, as the reference codes select their models
# (fairseq-train --task nar_translation only). Each validation decodes the valid set with the
# model's own generator (--decoding auto, fairseq-generate's defaults; a script may append
# e.g. --eval-bleu-args '{"iter_decode_max_iter": 4}', keys: fairseq-train --help of the task)
# and scores it as evaluate.py's first score: subwords joined back into text (sentencepiece;
# fastBPE: "@@ " removed, then Moses-detokenised), cased sacreBLEU with tokenize 13a. The
# references are the binarised valid targets, the real ones (distil.sh distils train only).
# checkpoint_best.pt then holds the best valid BLEU. Not for train_cmlm.sh: fairseq 0.12's
# translation_lev task never decodes in validation (its valid_step only runs the loss), so it
# logs no bleu and --best-checkpoint-metric bleu fails.
if [ "$BPE" = sentencepiece ]; then
  EVAL_BLEU_ARGS=(--eval-bleu --eval-bleu-remove-bpe sentencepiece)
else
  EVAL_BLEU_ARGS=(--eval-bleu --eval-bleu-remove-bpe subword_nmt
    --eval-bleu-detok moses --eval-bleu-detok-args "{\"target_lang\": \"$TGT\"}")
fi
EVAL_BLEU_ARGS+=(--best-checkpoint-metric bleu --maximize-best-checkpoint-metric)
MODEL_ARGS=(--encoder-layers $LAYERS --decoder-layers $LAYERS
  --encoder-embed-dim $DIM --decoder-embed-dim $DIM
  --encoder-ffn-embed-dim $FFN --decoder-ffn-embed-dim $FFN
  --encoder-attention-heads $HEADS --decoder-attention-heads $HEADS)

# The nar_refine models: the same sizes as the teacher and CMLM (their *_small archs' other
# settings, e.g. LaNMT's 3 prior and 3 posterior layers, stay); --smoke keeps the *_tiny archs.
if [ "$SMOKE" = 1 ]; then NAT_MODEL_ARGS=(); else NAT_MODEL_ARGS=("${MODEL_ARGS[@]}"); fi

log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# One JSON line per training start/end in $1/history.jsonl: event, UTC time, threads, the
# checkpoint's cumulative updates and training seconds (fairseq's own clock), and the command;
# what a released model's manifest reports (scripts/release_models.py).
history_record() {
  python - "$1" "$2" "$3" "$THREADS" <<'PY' || true
import json, os, sys, time
d, event, cmd, threads = sys.argv[1:5]
rec = {"event": event, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": int(threads)}
ckpt = os.path.join(d, "checkpoint_last.pt")
if os.path.exists(ckpt):
    import torch
    s = torch.load(ckpt, map_location="cpu", weights_only=False)
    rec["updates"] = s["optimizer_history"][-1]["num_updates"]
    rec["train_seconds"] = round((s.get("extra_state") or {}).get("previous_training_time", 0.0), 1)
if cmd:
    rec["command"] = cmd
with open(os.path.join(d, "history.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
PY
}

# Run fairseq-train into $1 (checkpoint dir) and write a timing/summary file next to it.
# Resumes from checkpoint_last.pt by itself; skipped when $1/DONE exists.
train() {
  local dir="$1"; shift
  if [ -f "$dir/DONE" ]; then log "skip: $dir/DONE exists"; cat "$dir/DONE"; return 0; fi
  mkdir -p "$dir"
  local name; name=$(basename "$dir")
  log "fairseq-train -> $dir (log: $WORK/logs/$name.log)"
  echo "fairseq-train $*" > "$dir/command.txt"
  local t0; t0=$(date +%s)
  history_record "$dir" start "fairseq-train $*"
  fairseq-train "$@" "${TRAIN_GPU_ARGS[@]}" --save-dir "$dir" --user-dir "$USER_DIR" \
    2>&1 | tee -a "$WORK/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  history_record "$dir" "end rc=$rc" ""
  [ "$rc" = 0 ] || { log "fairseq-train failed (rc=$rc)"; return "$rc"; }
  local t1; t1=$(date +%s)
  {
    echo "command: fairseq-train $*"
    echo "wall_seconds_this_run: $((t1 - t0))"
    grep -E "\| valid on 'valid' subset" "$WORK/logs/$name.log" | tail -1 | sed 's/^.*| valid/last valid:/'
    grep -E "done training in" "$WORK/logs/$name.log" | tail -1 | sed 's/^.*| done/done/'
  } > "$dir/DONE"
  cat "$dir/DONE"
}
