#!/usr/bin/env bash
# Energy inference network E(z;x) on the frozen LaNMT: train_score_net.sh with KIND=energy.
KIND=energy exec "$(dirname "$0")/train_score_net.sh" "$@"
