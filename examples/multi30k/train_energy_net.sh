#!/usr/bin/env bash
# Energy inference network E(z;x) on the frozen LaNMT: train_score_net.sh with KIND=energy
# (same recipe: 4-step delta targets from starts mu + u * sigma * eps, u ~ U(0,1) per batch).
KIND=energy exec "$(dirname "$0")/train_score_net.sh" "$@"
