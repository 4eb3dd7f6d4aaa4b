#!/bin/bash
# LD3 on a real network (issue 15's study): for each setting, learn a schedule on the embedded
# ld3-mnist-32 DDPM for each seed, then score the learned schedules and every hand-made one on
# fresh noises against a near-exact solve (solved once, kept for every setting), and print a
# Markdown table (RMS distance per sample: mean and median).
#
#   scripts/mnist-study.sh [LD3]        (LD3: the ld3 binary; default: built here, release)
#
# Environment (defaults are the study's protocol; the full run is many CPU-hours, minutes on a GPU):
#   SETTINGS  "solver:order:variant:nfe ..."  [ipndm:3::4 dpm-solver++:3:reference:6 unipc:2:bh2:5
#             ipndm:3::8 dpm-solver++:3:reference:8 unipc:2:bh2:8 ipndm:3::10
#             dpm-solver++:3:reference:10 unipc:2:bh2:10]
#   SEEDS "0 1 2"  TRAIN 50  VALID 50  HELDOUT 256 (scored noises)  REF_NFE 500 (UniPC-3 reference)
#   LOSS l2 (the official code's, the table's so far; rms: `ld3 train`'s default for images without
#        LPIPS; learned schedules and evaluations of another loss are named with it: ...-seed0-rms.json,
#        ...-eval-rms.json; `scripts/mnist-study-table.py OUT rms` tables them)
#   DEVICE cpu (or cuda, with a cuda build)  OUT (folder kept for the schedules; default: temporary)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then LD3=$1; else
  cargo build --release --quiet -p ld3-cli
  LD3=${CARGO_TARGET_DIR:-target}/release/ld3
fi
SETTINGS=${SETTINGS:-"ipndm:3::4 dpm-solver++:3:reference:6 unipc:2:bh2:5 ipndm:3::8 dpm-solver++:3:reference:8 unipc:2:bh2:8 ipndm:3::10 dpm-solver++:3:reference:10 unipc:2:bh2:10"}
SEEDS=${SEEDS:-"0 1 2"}
TRAIN=${TRAIN:-50}
VALID=${VALID:-50}
HELDOUT=${HELDOUT:-256}
REF_NFE=${REF_NFE:-500}
LOSS=${LOSS:-l2}
sfx=""; [ "$LOSS" = l2 ] || sfx="-$LOSS"
DEVICE=${DEVICE:-cpu}
if [ -n "${OUT:-}" ]; then work=$OUT; mkdir -p "$work"; else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
echo "| setting | schedule | mean | median |"
echo "|---|---|---|---|"
for setting in $SETTINGS; do
  IFS=: read -r solver order variant nfe <<< "$setting"
  flags=(--solver "$solver" --order "$order" --nfe "$nfe")
  [ -n "$variant" ] && flags+=(--variant "$variant")
  tag="$solver-$order${variant:+-$variant}-$nfe"
  files=()
  for seed in $SEEDS; do
    out="$work/$tag-seed$seed$sfx.json"
    [ -f "$out" ] || "$LD3" train --model ld3-mnist-32 "${flags[@]}" --train-samples "$TRAIN" \
      --valid-samples "$VALID" --loss "$LOSS" --seed "$seed" --device "$DEVICE" --quiet --out "$out" \
      > "$work/$tag-seed$seed$sfx.log" 2>&1
    files+=(--schedule-file "$out")
  done
  for s in time-uniform time-quadratic logsnr edm time-edm gits; do
    "$LD3" schedule --model ld3-mnist-32 "${flags[@]}" --schedule "$s" \
      --out "$work/$tag-$s.json" 2>/dev/null
    files+=(--schedule-file "$work/$tag-$s.json")
  done
  "$LD3" eval samples --model ld3-mnist-32 "${files[@]}" --num-samples "$HELDOUT" \
    --teacher-solver unipc --teacher-order 3 --teacher-nfe "$REF_NFE" --device "$DEVICE" \
    --teacher-cache "$work/reference-$REF_NFE-$HELDOUT-$DEVICE.safetensors" \
    --quiet --json "$work/$tag-eval$sfx.json" > /dev/null 2>&1
  python3 - "$work/$tag-eval$sfx.json" "$tag" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    name = r["schedule"].rsplit("/", 1)[-1][:-5].replace(sys.argv[2] + "-", "")
    print(f"| {sys.argv[2]} | {name} | {r['l2_rms_mean']:.4f} | {r['l2_rms_median']:.4f} |")
PY
done
