#!/usr/bin/env bash
# A CUDA toolkit for `cargo build --features cuda` from PyPI alone (no root, no NVIDIA apt
# repository): nvcc and headers, and the libraries candle links (nvrtc, curand, cublas, cudart),
# with the unversioned `libX.so` names the linker wants in one folder. Where no NVIDIA driver is
# installed (a build machine without a GPU), it also writes a link-time stub `libcuda.so` — the
# role of the toolkit's own lib64/stubs; the real driver library is used at run time.
#
#   source scripts/cuda-toolkit-from-pypi.sh [DIR]      # DIR defaults to ~/.cache/ld3-rs/cuda
#   cargo build --release -p ld3-cli --features cuda
#
# Measured in docs/gpu.md. Needs python3 with pip, gcc, nm.
set -eu
dir="${1:-$HOME/.cache/ld3-rs/cuda}"
mkdir -p "$dir/lib"
python3 -m pip install --quiet --target "$dir/site" \
    nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-nvrtc nvidia-curand \
    nvidia-cublas
root="$dir/site/nvidia/cu13"
for f in "$root"/lib/*.so.*; do
    base=$(basename "$f")
    ln -sf "$f" "$dir/lib/$base"
    ln -sf "$f" "$dir/lib/${base%%.so*}.so"
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    # Every driver-API function cudarc calls, as an empty function: enough to link, never run.
    # The names come from cudarc's bindings in the cargo registry.
    bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null | tail -1)
    grep -rhoE 'fn cu[A-Z][A-Za-z0-9_]*' "$bindings" | sed 's/^fn //' | sort -u |
        awk '{print "void " $1 "(void) {}"}' > "$dir/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/lib/libcuda.so" "$dir/cuda_stub.c"
fi
export CUDA_ROOT="$root" CUDA_PATH="$root" PATH="$root/bin:$PATH"
export RUSTFLAGS="${RUSTFLAGS:-} -L $dir/lib"
# The GPU's compute capability (H100/H200: 90) where the build machine has none to ask, and the
# newest CUDA version cudarc 0.19 knows (the 13.5 headers work with it).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
echo "CUDA toolkit in $root; link libraries in $dir/lib"
