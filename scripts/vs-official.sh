#!/bin/bash
# LD3 here against the official code, on the mixtures of fixtures/official-ld3/: for every
# schedule the official code learned there, trains ours with the same solver, order, NFE and seed
# (defaults otherwise) and scores both, and the best hand-made schedule, on 1000 fresh noises
# against a 2000-NFE reference. Prints RMS/median relative errors. About 5 s per case.
#   scripts/vs-official.sh [FILTER]   (FILTER: a substring of the file names, e.g. dpm_solver++-3-6)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gmm-eval-lib.sh
gmm_eval_build
for f in fixtures/official-ld3/*${1:-}*.json; do
  read -r dir solver order nfe seed variant < <(python3 - "$f" <<'PY'
import json, os, sys
d = json.load(open(sys.argv[1]))
name = {"dpm_solver++": "dpm-solver++", "uni_pc": "unipc", "ipndm": "ipndm"}[d["solver"]]
variant = {"dpm-solver++": "reference", "unipc": d.get("unipc_variant") or "bh2"}.get(name, "-")
for root in ("fixtures/gmm", "fixtures/gmm-other"):
    if os.path.isdir(os.path.join(root, d["fixture"])):
        print(os.path.join(root, d["fixture"]), name, d["order"], d["nfe"], d["seed"], variant)
PY
)
  out=$( (if [ "$variant" != - ]; then export VARIANT=$variant; fi
          OFFICIAL=$f HELDOUT=1000 "$E" "$dir" "$solver" "$order" "$nfe" "$seed" 2>&1) || true)
  ours=$(gmm_eval_ld3 <<< "$out" | tr ' ' /)
  official=$(sed -n '/held-out:/,$p' <<< "$out" | awk '/official \(file\)/{print $5"/"$7}')
  best=$(gmm_eval_best <<< "$out" | sed 's| |/|')
  echo "$(basename "$f" .json) ours=$ours official=$official best_hand_made=$best"
done
