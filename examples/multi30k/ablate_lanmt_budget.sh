#!/usr/bin/env bash
# LaNMT's KL-budget schedule, ablated from one start: the main run (train_lanmt.sh, budget held
# for KL_HOLD updates, then annealed to 0 over KL_ANNEAL, then 0) against a copy of its
# checkpoint at update KL_HOLD trained on with the budget held (the nar_refine 0.2 recipe), both
# for the same number of updates with the same data order; then scripts/refine_diagnostic.py on
# both (delta steps: BLEU, repeated words, tokens changed; KL and z-usage) and one table.
# Usage: ablate_lanmt_budget.sh [--smoke] [WORKDIR]
#   step 1 (once the main run, trained with this schedule (KL_HOLD=3000 KL_ANNEAL=1500
#          train_lanmt.sh; the recipe's default holds), has stopped at KL_HOLD, MAX_UPDATE=3000):
#          copies WORK/checkpoints/lanmt/checkpoint_last.pt to WORK/checkpoints/ablation_lanmt_held/
#   step 2 trains the held copy to END (default KL_HOLD + KL_ANNEAL); the main run must reach END
#          too (MAX_UPDATE=END train_lanmt.sh), then the diagnostics and the table.
# Env: KL_HOLD (3000), KL_ANNEAL (1500), END, OUT (table; default WORK/ablation/lanmt_budget.md),
#   MAIN_CKPT (the main run's checkpoint at END, default its checkpoint_last.pt; keep a copy when
#   the main run goes on past END).
source "$(dirname "$0")/common.sh"
KL_HOLD=${KL_HOLD:-3000}; KL_ANNEAL=${KL_ANNEAL:-1500}
END=${END:-$((KL_HOLD + KL_ANNEAL))}
MAIN="$WORK/checkpoints/lanmt"; HELD="$WORK/checkpoints/ablation_lanmt_held"
updates() { python -c "import torch,sys; print(torch.load(sys.argv[1],map_location='cpu',weights_only=False)['optimizer_history'][-1]['num_updates'])" "$1"; }
mkdir -p "$HELD" "$WORK/ablation"
if [ ! -f "$HELD/checkpoint_last.pt" ]; then
  n=$(updates "$MAIN/checkpoint_last.pt")
  [ "$n" = "$KL_HOLD" ] || { echo "the main run is at update $n, not $KL_HOLD: stop it there first (MAX_UPDATE=$KL_HOLD)" >&2; exit 2; }
  cp "$MAIN/checkpoint_last.pt" "$HELD/checkpoint_last.pt"
  cp "$MAIN/checkpoint_best.pt" "$HELD/checkpoint_best.pt" 2>/dev/null || true
  log "copied the main run's update-$KL_HOLD checkpoint to $HELD"
fi
NAME=ablation_lanmt_held MAX_UPDATE=$END KL_HOLD=1000000 "$EXAMPLE_DIR/train_lanmt.sh" \
  "$([ "$SMOKE" = 1 ] && echo --smoke)" "$WORK" -- --max-tokens 2048 "${EXTRA_ARGS[@]}" > /dev/null
MAIN_CKPT=${MAIN_CKPT:-$MAIN/checkpoint_last.pt}
n=$(updates "$MAIN_CKPT")
[ "$n" = "$END" ] || { log "$MAIN_CKPT is at update $n: give the main run's checkpoint at $END (MAIN_CKPT=), then rerun this script"; exit 0; }
for v in main held; do
  ckpt=$MAIN_CKPT; [ $v = held ] && ckpt=$HELD/checkpoint_last.pt
  [ -s "$WORK/ablation/lanmt_$v.json" ] && continue
  python "$REPO_DIR/scripts/refine_diagnostic.py" --path "$ckpt" --data-bin "$BIN" \
    --gen-subset valid --ref "$WORK/raw/valid.de" --decoding delta --steps 4 --threads "$THREADS" \
    --out "$WORK/ablation/lanmt_$v" > "$WORK/logs/diagnostic_lanmt_$v.log" 2>&1 || { tail -5 "$WORK/logs/diagnostic_lanmt_$v.log"; exit 1; }
done
python "$REPO_DIR/scripts/ablation_table.py" \
  --diag "annealed=$WORK/ablation/lanmt_main.json=budget 1 to update $KL_HOLD, 0 by $((KL_HOLD + KL_ANNEAL))" \
  --diag "held=$WORK/ablation/lanmt_held.json=budget 1 throughout (nar_refine 0.2)" \
  --out "${OUT:-$WORK/ablation/lanmt_budget.md}" --title "LaNMT: the KL budget annealed or held" \
  --intro "Both from the main run's checkpoint at update $KL_HOLD, trained to update $END on the distilled data (2,048-token batches, one thread); checkpoint_last; valid set, 4 forced delta steps (step 0: the prior mean), sacreBLEU cased 13a. Command: \`examples/multi30k/ablate_lanmt_budget.sh\`."
