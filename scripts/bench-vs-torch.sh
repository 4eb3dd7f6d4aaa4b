#!/bin/bash
# candle against PyTorch, side by side in one run on this machine (issue 14's benchmark): the same
# networks, shapes and threads on both sides — UNet2DModel forward and forward + backward (the
# embedded ld3-mnist-32 and google/ddpm-cifar10-32's architecture, batches 1/8/32), one LD3
# gradient (DDIM, 6 NFE, batch 2), LPIPS pairs (VGG16, AlexNet; 64×64, batch 32), FID's
# Inception-v3 (batch 32) and the whole `ld3 sample` process against diffusers' DDIM loop — and
# prints one Markdown table with the ratios (candle / PyTorch: below 1 is faster).
#
#   scripts/bench-vs-torch.sh            (about 5 minutes on 2 cores; run it on an idle machine)
#
# Environment: PYTHON (default python3) with torch, diffusers, lpips, torch-fidelity, pytorch-fid
# installed (`pip install torch diffusers lpips torch-fidelity pytorch-fid`); without them only
# candle's column is filled. THREADS (default 2) on both sides. LD3_MALLOC (see
# ld3_models::allocator) passes through to the Rust binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS
cargo build --release --quiet -p ld3-cli -p ld3-models -p ld3-metrics -p ld3-train \
  --bin ld3 --example unet_throughput --example lpips_throughput \
  --example inception_throughput --example grad_memory
bin=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
torch=1
"$PYTHON" -c "import torch, diffusers, lpips, torch_fidelity, pytorch_fid" 2> /dev/null || {
  torch=0
  echo "($PYTHON lacks torch, diffusers, lpips, torch-fidelity or pytorch-fid: candle only)" >&2
}
py() { # py NAME SCRIPT ARGS...: a PyTorch side, its output kept, a failure noted
  local name=$1; shift
  [ $torch = 1 ] || return 0
  "$PYTHON" "$@" > "$out/$name.torch" 2> "$out/$name.torch.err" || echo "($name: PyTorch side failed, $out/$name.torch.err)" >&2
}
gen=fixtures/gen
"$bin/examples/unet_throughput" > "$out/unet.candle"
py unet $gen/unet_throughput.py --threads "$THREADS"
for model in ld3-mnist-32 ddpm-cifar10-32; do
  WARM=3 "$bin/examples/grad_memory" 6 full $model ddim > "$out/ld3-$model.candle"
  py ld3-$model $gen/ld3_iteration.py --model $model --nfe 6 --threads "$THREADS"
done
"$bin/examples/lpips_throughput" 64 32 > "$out/lpips.candle"
py lpips $gen/lpips_throughput.py --size 64 --batch 32 --threads "$THREADS"
"$bin/examples/inception_throughput" 32 > "$out/inception.candle"
py inception $gen/inception_throughput.py --batch 32 --threads "$THREADS"
(cd "$out" && "$bin/ld3" sample --solver ddim --nfe 10 --num-samples 64 --batch-size 64 \
  --out x.safetensors > sample.candle 2> sample.candle.err)
py sample $gen/sample_throughput.py --threads "$THREADS"
echo "$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $THREADS threads each side, $(date -u +%F)"
python3 - "$out" <<'PY'
import os, re, sys
out = sys.argv[1]

def read(name, side):
    path = os.path.join(out, f"{name}.{side}")
    return open(path).read() if os.path.exists(path) else ""

def rows(text):
    return [[c.strip() for c in l.strip().strip("|").split("|")]
            for l in text.splitlines() if l.startswith("|") and not l.startswith("|---")][1:]

def num(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None

table = []  # (what, candle ms, torch ms)
torch_unet = {(r[0], r[1]): r for r in rows(read("unet", "torch"))}
for r in rows(read("unet", "candle")):
    t = torch_unet.get((r[0], r[1]))
    table.append((f"{r[0]} forward, batch {r[1]}", float(r[2]), t and float(t[2])))
    table.append((f"{r[0]} forward + backward, batch {r[1]}", float(r[4]), t and float(t[4])))
for model in ["ld3-mnist-32", "ddpm-cifar10-32"]:
    pat = r"warm: median of \d+ more gradients ([\d.]+) ms"
    table.append((f"{model}: one LD3 gradient (DDIM, 6 NFE, batch 2)",
                  num(pat, read(f"ld3-{model}", "candle")), num(pat, read(f"ld3-{model}", "torch"))))
torch_lpips = {r[0]: r for r in rows(read("lpips", "torch"))}
for r in rows(read("lpips", "candle")):
    t = torch_lpips.get(r[0])
    table.append((f"LPIPS({r[0]}) forward, {r[1]} pairs of {r[2]}²", float(r[3]), t and float(t[3])))
    table.append((f"LPIPS({r[0]}) forward + backward, {r[1]} pairs of {r[2]}²", float(r[5]), t and float(t[5])))
torch_inc = rows(read("inception", "torch"))
for i, r in enumerate(rows(read("inception", "candle"))):
    t = torch_inc[i] if i < len(torch_inc) else None
    table.append((f"Inception-v3: {r[0]}, batch {r[1]}", float(r[2]), t and float(t[2])))
loop = num(r"wall time: ([\d.]+) s", read("sample", "candle"))
table.append(("ld3 sample: DDIM 10 NFE, 64 samples, sampling loop",
              loop and loop * 1e3, (num(r"sampling loop ([\d.]+) s", read("sample", "torch")) or 0) * 1e3 or None))
print("| what | candle ms | PyTorch ms | candle / PyTorch |")
print("|---|---|---|---|")
for what, c, t in table:
    ratio = f"{c / t:.2f}×" if c and t else "—"
    print(f"| {what} | {c:.1f} | {f'{t:.1f}' if t else '—'} | {ratio} |" if c else f"| {what} | — | — | — |")
PY
