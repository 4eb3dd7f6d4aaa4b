#!/bin/bash
# LD3's choices on the Gaussian-mixture fixtures over independent seeds: for every setting, seed
# and configuration, trains with gmm_fixture_eval and scores the learned schedule and the best
# hand-made one on 1000 fresh noises against a 2000-NFE reference. One line per run:
#   CONFIG MIXTURE SETTING SEED LD3_RMS LD3_MEDIAN BEST_RMS BEST_MEDIAN BEST_NAME
# (relative errors). About 7 s per run on 2 cores.
#   scripts/gmm-choices.sh > runs.txt; python3 scripts/gmm-choices-table.py runs.txt
# Environment:
#   SEEDS    "0 1 2"
#   CONFIGS  "name:ENV=1 ..." pairs, ENV the example's switches (SPLIT, INIT_UNIFORM, TRIMMED, ...)
#            [default: "default: t-layout-for-VP:MODE=official split:SPLIT=1 uniform:INIT_UNIFORM=1
#            official:SPLIT=1,INIT_UNIFORM=1,MODE=official"]
#   SETTINGS "mixture:solver:order:nfe ..." (mixture: a folder under fixtures/)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gmm-eval-lib.sh
gmm_eval_build
SEEDS=${SEEDS:-"0 1 2"}
CONFIGS=${CONFIGS:-"default: t-layout-for-VP:MODE=official split:SPLIT=1 uniform:INIT_UNIFORM=1 official:SPLIT=1,INIT_UNIFORM=1,MODE=official"}
SETTINGS=${SETTINGS:-"gmm/edm-public:ipndm:3:4 gmm/edm-public:dpm-solver++:3:6 gmm/vp-public:unipc:2:5 gmm-other/vp-a:dpm-solver++:3:6 gmm-other/vp-b:dpm-solver++:3:6 gmm-other/edm-a:dpm-solver++:3:6 gmm-other/vp-b:unipc:2:5"}
for seed in $SEEDS; do
  for cfg in $CONFIGS; do
    name=${cfg%%:*}
    for setting in $SETTINGS; do
      IFS=: read -r mixture solver order nfe <<< "$setting"
      IFS=, read -r -a envs <<< "${cfg#*:}"
      envs+=($(gmm_eval_variant "$solver"))
      out=$(env "${envs[@]}" HELDOUT=1000 "$E" "fixtures/$mixture" "$solver" "$order" "$nfe" \
        "$seed" 2>&1) || true  # a failed run prints fewer fields
      ld3=$(gmm_eval_ld3 <<< "$out")
      best=$(gmm_eval_best <<< "$out")
      echo "$name $mixture $solver-$order@$nfe $seed $ld3 $best"
    done
  done
done
