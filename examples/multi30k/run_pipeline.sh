#!/usr/bin/env bash
# Driver: runs every step in order (each is resumable, so re-running continues where it stopped).
# Usage: run_pipeline.sh [--smoke] [--gpu] [--bpe ...] [WORKDIR]
#   nohup examples/multi30k/run_pipeline.sh > examples/multi30k/work-pipeline.log 2>&1 &
# --gpu: the one-GPU profile (common.sh: --fp16, batches of 16384 tokens, benchmark --cuda into
#   WORK/benchmark-gpu, beside the CPU table of WORK/benchmark) with
#   wall-time budgets sized for the whole pipeline to finish in about 10 minutes on one H200-class
#   GPU: teacher <= 2.4 min (or patience), CMLM / refine_nat / LaNMT 1.2 min each, score / energy
#   networks 0.6 min each (GPU_BUDGETS_MIN overrides: "teacher=2.4 cmlm=1.2 ..."). The NAT models
#   then stop on their budget, not on updates. Not yet run on a GPU (no GPU was lent to this
#   project so far); without CUDA the same commands run on the CPU without --fp16, and
#   "--smoke --gpu" is the tested plumbing check (tests/test_examples.py). It trains on one GPU
#   (CUDA_VISIBLE_DEVICES pinned to the first one, or to the first of those already set);
#   GPUS=N trains on N (--distributed-world-size N: N-way data parallel, N x 16384 tokens per
#   update, in the same wall-time budgets).
# NAT_MODELS (default "refine_nat lanmt score_net energy_net") are trained after the CMLM baseline;
# the benchmark (scripts/benchmark.py) comes last. NAT_MODELS="" BENCHMARK=0 stops after the CMLM.
# DRY_RUN=1 prints every step's command (and the --gpu budgets) without running it.
set -euo pipefail
D="$(cd "$(dirname "$0")" && pwd)"
GPU=0; SMOKE=0
for a in "$@"; do case "$a" in --gpu) GPU=1 ;; --smoke) SMOKE=1 ;; esac; done
if [ "$GPU" = 1 ]; then  # one GPU unless GPUS=N (gpus.sh); every step inherits the pin
  # shellcheck source=examples/multi30k/gpus.sh
  source "$D/gpus.sh"
  pin_gpus || exit 2
  echo "[--gpu] GPUS=$GPUS CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
fi
declare -A BUDGET_MIN=([teacher]=2.4 [cmlm]=1.2 [refine_nat]=1.2 [lanmt]=1.2 [score_net]=0.6 [energy_net]=0.6)
for kv in ${GPU_BUDGETS_MIN:-}; do BUDGET_MIN[${kv%%=*}]=${kv#*=}; done
step_env() {  # env of a training step: the --gpu profile's wall-time budget (not in smoke mode)
  local name=${1#train_}
  if [ "$GPU" = 1 ] && [ "$SMOKE" = 0 ] && [ -n "${BUDGET_MIN[$name]:-}" ]; then
    local hours; hours=$(python3 -c "print(${BUDGET_MIN[$name]} / 60)")
    if [ "$name" = teacher ]; then echo "STOP_HOURS=$hours MAX_UPDATE=${MAX_UPDATE:-3000}"
    else echo "STOP_HOURS=$hours MAX_UPDATE=${MAX_UPDATE:-100000}"; fi
  fi
}
NAT_STEPS=()
for m in ${NAT_MODELS-refine_nat lanmt score_net energy_net}; do NAT_STEPS+=("train_$m" "evaluate_$m"); done
for step in prepare teacher evaluate_teacher distil train_cmlm evaluate_cmlm "${NAT_STEPS[@]}" $([ "${BENCHMARK:-1}" = 1 ] && echo benchmark); do
  case "$step" in
    evaluate_*) cmd=("$D/evaluate.sh" "${step#evaluate_}") ;;
    *) cmd=("$D/$step.sh") ;;
  esac
  envs=$(step_env "$step")
  echo "=== [$(date -u +%H:%M:%S)] $step: ${envs:+$envs }${cmd[*]} $*"
  [ "${DRY_RUN:-0}" = 1 ] && continue  # DRY_RUN=1: print the steps only
  t0=$(date +%s)
  # shellcheck disable=SC2086
  env $envs "${cmd[@]}" "$@"
  echo "=== [$(date -u +%H:%M:%S)] $step finished in $(( $(date +%s) - t0 )) s"
done
