# The GPUs of the --gpu profile. Sourced (by common.sh and run_pipeline.sh), not run.
# fairseq-train trains on every GPU it can see, one process each (N-way data parallel, N times
# the batch per update), so the profile shows the processes only GPUS of them (default 1):
# the first GPUS entries of CUDA_VISIBLE_DEVICES when it is set, else GPUs 0..GPUS-1. The
# training steps then pass --distributed-world-size GPUS (common.sh). Idempotent.
pin_gpus() {
  local n=${GPUS:-1} ids=()
  case "$n" in
    '' | *[!0-9]* | 0*) echo "GPUS=$n: give the number of GPUs to train on (1, 2, ...)" >&2; return 2 ;;
  esac
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    IFS=, read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    if [ "${#ids[@]}" -lt "$n" ]; then
      echo "GPUS=$n, but CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' names ${#ids[@]} GPU(s)" >&2
      return 2
    fi
    ids=("${ids[@]:0:$n}")
  else
    for ((i = 0; i < n; i++)); do ids+=("$i"); done
  fi
  CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${ids[*]}")
  GPUS=$n
  export CUDA_VISIBLE_DEVICES GPUS
}
