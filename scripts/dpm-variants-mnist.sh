#!/bin/bash
# DPM-Solver++-3's two variants with hand-made schedules on the embedded MNIST network: RMS
# distance to a 200-NFE UniPC-3 solve on 64 noises (docs/solvers.md). About 6 minutes on 2 cores.
#   scripts/dpm-variants-mnist.sh [LD3]   (LD3: the ld3 binary; default: built here, release)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then LD3=$1; else
  cargo build --release --quiet -p ld3-cli
  LD3=${CARGO_TARGET_DIR:-target}/release/ld3
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
files=()
for v in taylor reference; do
  for n in 4 6 8 10; do
    for s in time-quadratic logsnr edm gits; do
      "$LD3" schedule --solver dpm-solver++ --order 3 --variant $v --nfe $n --schedule $s \
        --out "$work/$v-$n-$s.json" 2>/dev/null
      files+=(--schedule-file "$work/$v-$n-$s.json")
    done
  done
done
"$LD3" eval samples --model ld3-mnist-32 "${files[@]}" --num-samples 64 --teacher-solver unipc \
  --teacher-order 3 --teacher-nfe 200 --batch-size 64 --quiet --json "$work/eval.json" >/dev/null
python3 - "$work/eval.json" <<'PY'
import json, sys
rows = {}
for r in json.load(open(sys.argv[1]))["rows"]:
    v, n, s = r["schedule"].rsplit("/", 1)[-1][:-5].split("-", 2)
    rows[(int(n), s, v)] = r["l2_rms_mean"]
names = ["time-quadratic", "logsnr", "edm", "gits"]
print("| NFE | " + " | ".join(f"{s} taylor / reference" for s in names) + " |")
for n in [4, 6, 8, 10]:
    print(f"| {n} | " + " | ".join(
        f"{rows[(n, s, 'taylor')]:.3f} / {rows[(n, s, 'reference')]:.3f}" for s in names) + " |")
PY
