#!/bin/bash
# Issue 14's GPU checks, run ON the GPU machine from the pack scripts/gpu-pack.sh made here:
#   1. a solve: `ld3 sample` on the GPU against the same solve on its CPU (UniPC-3, 10 NFE);
#   2. an LD3 gradient (θ of DDIM at 6 NFE, batch 2, ld3-mnist-32) on the GPU against the CPU;
#   3. UNet2DModel forward and forward + backward on the GPU, both architectures, next to
#      PyTorch + diffusers on the same GPU;
#   4. one LD3 gradient on ddpm-cifar10-32's architecture, next to PyTorch's
#      (fixtures/gen/ld3_iteration.py), and one LD3 training run on the GPU (the README's);
#   5. `ld3 sample` on the GPU (1024 samples, DDIM 10 NFE) next to diffusers' loop.
# Prints a report (also written to $OUT/gpu-report.txt when OUT is set: the device tool's folder).
#
#   device tool: run(command="scripts/gpu-check.sh", carry=[".gpu"], timeout_s=480)
#
# About 3–5 minutes of device time after the machine's start. Nothing is built there (no cargo,
# no registry); the wheels for diffusers come in the pack.
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-.gpu}
report=${OUT:-/tmp}/gpu-report.txt
exec > >(tee "$report") 2>&1
[ -f "$PACK/ld3.xz" ] || { echo "error: no $PACK/ld3.xz: run scripts/gpu-pack.sh here first, carry $PACK"; exit 2; }
work=$(mktemp -d)
for b in ld3 grad_memory unet_throughput; do xz -dc "$PACK/$b.xz" > "$work/$b" && chmod +x "$work/$b"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" \
  "$PACK"/wheels/*.whl && export PYTHONPATH=$work/site
echo "pack of $(cat "$PACK/commit" 2>/dev/null), tree at $(git rev-parse --short HEAD 2>/dev/null), $(date -u)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
L=$work/ld3
# The CUDA libraries the builds link (cuBLAS, cuRAND, NVRTC, the runtime) come with the image's
# PyTorch as NVIDIA's wheels; the driver's libcuda is the system's.
for d in $(python3 -c "import nvidia; print(' '.join(nvidia.__path__))" 2> /dev/null); do
  for lib in "$d"/*/lib "$d"/cu13/lib; do
    [ -d "$lib" ] && export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  done
done
ldd "$L" | grep "not found" && echo "error: libraries missing (above)"
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-16}
TIMEFORMAT="whole %R s"
D=${GPU_DEVICE:-cuda}   # GPU_DEVICE=cpu: the same script on the CPU (a smoke test of the script)
BATCHES=${GPU_BATCHES:-1,8,32,128} MANY=${GPU_SAMPLES:-1024}   # smaller for the smoke test

echo; echo "== 1. a solve, GPU against CPU (UniPC-3 bh2, 10 NFE, 64 samples, ld3-mnist-32)"
for d in cpu $D; do
  (cd "$work" && "$L" sample --device $d --solver unipc --order 3 --nfe 10 --num-samples 64 \
    --batch-size 64 --out "solve-$d.safetensors" 2>&1 | tail -1)
done
python3 - "$work" "$D" <<'PY'
import sys
from safetensors.numpy import load_file
a = load_file(f"{sys.argv[1]}/solve-cpu.safetensors")["samples"].astype("float64")
b = load_file(f"{sys.argv[1]}/solve-{sys.argv[2]}.safetensors")["samples"].astype("float64")
d = abs(a - b)
print(f"max |cpu - {sys.argv[2]}| {d.max():.3e}, RMS {((a - b) ** 2).mean() ** 0.5:.3e} (samples RMS {(a ** 2).mean() ** 0.5:.3f})")
PY

echo; echo "== 2. an LD3 gradient, GPU against CPU (DDIM 6 NFE, batch 2, ld3-mnist-32)"
for d in cpu $D; do DEVICE=$d "$work/grad_memory" 6 full ld3-mnist-32 ddim > "$work/grad-$d.txt" 2>&1; tail -2 "$work/grad-$d.txt"; done
python3 - "$work" "$D" <<'PY'
import re, sys
def grad(dev):
    text = open(f"{sys.argv[1]}/grad-{dev}.txt").read()
    return [float(v) for v in re.search(r"dθ = \[(.*)\]", text).group(1).split(",")]
a, b = grad("cpu"), grad(sys.argv[2])
scale = max(abs(v) for v in a)
print(f"max |dθ_cpu - dθ_{sys.argv[2]}| / max |dθ_cpu| = {max(abs(x - y) for x, y in zip(a, b)) / scale:.3e}")
PY

echo; echo "== 3. UNet2DModel on the GPU: candle, then PyTorch + diffusers"
DEVICE=$D BATCHES=$BATCHES "$work/unet_throughput"
python3 fixtures/gen/unet_throughput.py --device $D --batches "$BATCHES" --threads "$RAYON_NUM_THREADS"

echo; echo "== 4. one LD3 gradient on ddpm-cifar10-32 (DDIM 6 NFE, batch 2): candle, then PyTorch"
WARM=5 DEVICE=$D "$work/grad_memory" 6 full ddpm-cifar10-32 ddim | grep -v "^dθ"
python3 fixtures/gen/ld3_iteration.py --device $D --model ddpm-cifar10-32 --nfe 6 --warm 5 --threads "$RAYON_NUM_THREADS"
echo "-- ld3 train on the GPU (the README's command)"
(cd "$work" && time "$L" train --device $D --solver ipndm --order 3 --nfe 4 \
  --train-samples 10 --valid-samples 10 --heldout-samples 8 --init best-hand-made --pairs split \
  --out readme.json 2>&1 | tail -4)

echo; echo "== 5. sampling $MANY images (DDIM 10 NFE, one batch): ld3, then diffusers"
(cd "$work" && time "$L" sample --device $D --solver ddim --nfe 10 \
  --num-samples "$MANY" --batch-size "$MANY" --out many.safetensors 2>&1 | tail -2)
time python3 fixtures/gen/sample_throughput.py --device $D --samples "$MANY" --threads "$RAYON_NUM_THREADS"
echo; echo "report: $report"
