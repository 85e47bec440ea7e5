#!/usr/bin/env bash
# Driver: runs every step in order (each is resumable, so re-running continues where it stopped).
# Usage: run_pipeline.sh [--smoke] [--bpe ...] [WORKDIR]
#   nohup examples/multi30k/run_pipeline.sh > examples/multi30k/work-pipeline.log 2>&1 &
# NAT_MODELS (default "refine_nat lanmt score_net energy_net") are trained after the CMLM baseline;
# the benchmark (scripts/benchmark.py) comes last. NAT_MODELS="" BENCHMARK=0 stops after the CMLM.
set -euo pipefail
D="$(cd "$(dirname "$0")" && pwd)"
NAT_STEPS=()
for m in ${NAT_MODELS-refine_nat lanmt score_net energy_net}; do NAT_STEPS+=("train_$m" "evaluate_$m"); done
for step in prepare teacher evaluate_teacher distil train_cmlm evaluate_cmlm "${NAT_STEPS[@]}" $([ "${BENCHMARK:-1}" = 1 ] && echo benchmark); do
  case "$step" in
    evaluate_*) cmd=("$D/evaluate.sh" "${step#evaluate_}") ;;
    *) cmd=("$D/$step.sh") ;;
  esac
  echo "=== [$(date -u +%H:%M:%S)] $step: ${cmd[*]} $*"
  t0=$(date +%s)
  "${cmd[@]}" "$@"
  echo "=== [$(date -u +%H:%M:%S)] $step finished in $(( $(date +%s) - t0 )) s"
done
