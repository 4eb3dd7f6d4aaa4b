#!/bin/bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that reaches no registry (issue 14): the
# `--features cuda` builds of `ld3` and the `grad_memory` and `unet_throughput` benchmarks (built
# here with the PyPI CUDA toolkit, scripts/cuda-toolkit-from-pypi.sh; stripped, xz-compressed),
# and the pure-Python wheels diffusers needs beside the PyTorch already there, into .gpu/
# (ignored by git; carried by the device tool: `carry: [".gpu"]`).
#
#   scripts/gpu-pack.sh          (a cuda build takes ~10 min on 2 cores from an empty target)
#
# Environment: CUDA_DIR (toolkit folder, default ~/.cache/ld3-rs/cuda), CARGO_TARGET_DIR_CUDA
# (default ~/.cache/ld3-rs/target-cuda: apart from the CPU build's folder, so neither rebuilds
# the other), CUDA_PYPI (13.0 or latest, see the toolkit script).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
# shellcheck source=/dev/null
source scripts/cuda-toolkit-from-pypi.sh "${CUDA_DIR:-$HOME/.cache/ld3-rs/cuda}"
set -euo pipefail
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/ld3-rs/target-cuda}
cargo build --release -p ld3-cli --features cuda --bin ld3
cargo build --release -p ld3-train --features cuda --example grad_memory
cargo build --release -p ld3-models --features cuda --example unet_throughput
rm -rf .gpu && mkdir -p .gpu/wheels
for b in ld3 examples/grad_memory examples/unet_throughput; do
  strip -o ".gpu/$(basename $b)" "$CARGO_TARGET_DIR/release/$b"
done
xz -T0 -6 .gpu/ld3 .gpu/grad_memory .gpu/unet_throughput
# diffusers and what it needs that the GPU image lacks (its image has torch, numpy, safetensors,
# huggingface-hub, regex, requests, filelock, pillow; diffusers is pure Python).
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/wheels diffusers==0.42.1 \
  importlib-metadata
git describe --always --dirty --abbrev=12 > .gpu/commit
du -sh .gpu
size=$(du -sb .gpu | cut -f1)
[ "$size" -lt $((60 << 20)) ] || { echo "error: .gpu is $size bytes, over the device tool's 64 MiB with the tree" >&2; exit 1; }
echo "packed .gpu for $(cat .gpu/commit); on the GPU machine: scripts/gpu-check.sh"
