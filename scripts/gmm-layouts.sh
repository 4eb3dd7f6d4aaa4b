#!/bin/bash
# The λ and t layouts on the VP Gaussian-mixture fixtures, start by start: for every setting and
# seed, four single-start runs of gmm_fixture_eval (uniform θ and the best hand-made schedule, each
# in λ and in t), scored on 1000 fresh noises against a 2000-NFE reference. One line per run:
#   SETTING SEED START LAYOUT PAIRS_LOSS LD3_RMS LD3_MEDIAN BEST_HAND_MADE_RMS
# scripts/gmm-layouts-table.py then picks, as `ld3 train --init both` does, the start with the
# lower loss on the teacher pairs for every combination of starts and layouts. About 2 s per run.
#   scripts/gmm-layouts.sh > layouts.txt; python3 scripts/gmm-layouts-table.py layouts.txt
# Environment: SEEDS ["0 1 2 3 4 5"], SETTINGS ["mixture:solver:order:nfe ...", the nine VP ones].
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gmm-eval-lib.sh
gmm_eval_build
SEEDS=${SEEDS:-"0 1 2 3 4 5"}
SETTINGS=${SETTINGS:-"gmm/vp-public:ipndm:3:4 gmm/vp-public:dpm-solver++:3:6 gmm/vp-public:unipc:2:5 gmm-other/vp-a:ipndm:3:4 gmm-other/vp-a:dpm-solver++:3:6 gmm-other/vp-a:unipc:2:5 gmm-other/vp-b:ipndm:3:4 gmm-other/vp-b:dpm-solver++:3:6 gmm-other/vp-b:unipc:2:5"}
for seed in $SEEDS; do
  for setting in $SETTINGS; do
    IFS=: read -r mixture solver order nfe <<< "$setting"
    # The official code's DPM-Solver++ form, UniPC as bh2; iPNDM has no variant.
    variant=($(gmm_eval_variant "$solver"))
    for start in INIT_UNIFORM INIT_HAND_MADE; do
      for layout in lambda time; do
        out=$(env "${variant[@]}" "$start=1" MODE=$layout HELDOUT=1000 "$E" "fixtures/$mixture" \
          "$solver" "$order" "$nfe" "$seed" 2>&1) || true  # a failed run prints fewer fields
        pairs=$(sed -n 's/.*pairs loss \([0-9.e-]*\).*/\1/p' <<< "$out")
        ld3=$(gmm_eval_ld3 <<< "$out")
        best=$(gmm_eval_best <<< "$out" | cut -d' ' -f1)
        echo "$mixture:$solver-$order@$nfe $seed ${start#INIT_} $layout $pairs $ld3 $best"
      done
    done
  done
done
