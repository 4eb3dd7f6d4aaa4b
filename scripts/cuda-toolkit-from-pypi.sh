#!/usr/bin/env bash
# A CUDA toolkit for `cargo build --features cuda` from PyPI alone (no root, no NVIDIA apt
# repository): nvcc and headers, and the libraries candle links (nvrtc, curand, cublas, cudart),
# with the unversioned `libX.so` names the linker wants in one folder. Where no NVIDIA driver is
# installed (a build machine without a GPU), it also writes a link-time stub `libcuda.so` — the
# role of the toolkit's own lib64/stubs; the real driver library is used at run time.
#
#   source scripts/cuda-toolkit-from-pypi.sh [DIR]      # DIR defaults to ~/.cache/ld3-rs/cuda
#   (CUDA_PYPI=13.0, the default, or latest: which CUDA release; see below)
#   cargo build --release -p ld3-cli --features cuda
#
# Measured in docs/gpu.md. Needs python3 with pip, gcc, nm.
set -eu
dir="${1:-$HOME/.cache/ld3-rs/cuda}"
mkdir -p "$dir/lib"
# CUDA_PYPI=13.0 (the default): the CUDA 13.0 release, what the lent H200 machines' driver (580)
# runs — a driver JIT-compiles candle's PTX only up to its own CUDA version, so a newer nvcc's
# kernels would not load there. CUDA_PYPI=latest takes the newest wheels.
case "${CUDA_PYPI:-13.0}" in
    13.0) pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
                nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
                nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14)
          cudarc_version=13000 ;;
    latest) pins=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-nvrtc
                  nvidia-curand nvidia-cublas)
            cudarc_version=13040 ;;
    *) echo "CUDA_PYPI=${CUDA_PYPI}: expected 13.0 or latest" >&2; return 2 2>/dev/null || exit 2 ;;
esac
python3 -m pip install --quiet --upgrade --target "$dir/site" "${pins[@]}"
root="$dir/site/nvidia/cu13"
for f in "$root"/lib/*.so.*; do
    base=$(basename "$f")
    ln -sf "$f" "$dir/lib/$base"
    ln -sf "$f" "$dir/lib/${base%%.so*}.so"
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
    # Every driver-API function cudarc calls, as an empty function: enough to link, never run.
    # The names come from cudarc's bindings in the cargo registry.
    # (`cargo fetch` first where no build has unpacked cudarc yet: it is in Cargo.lock.)
    ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys > /dev/null 2>&1 ||
        cargo fetch --quiet
    bindings=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys 2>/dev/null | tail -1)
    grep -rhoE 'fn cu[A-Z][A-Za-z0-9_]*' "$bindings" | sed 's/^fn //' | sort -u |
        awk '{print "void " $1 "(void) {}"}' > "$dir/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/lib/libcuda.so" "$dir/cuda_stub.c"
fi
export CUDA_ROOT="$root" CUDA_PATH="$root" PATH="$root/bin:$PATH"
export RUSTFLAGS="${RUSTFLAGS:-} -L $dir/lib"
# The GPU's compute capability (H100/H200: 90) where the build machine has none to ask, and the
# CUDA version cudarc 0.19 binds (13.4 is the newest it knows; the 13.5 headers work with it).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-$cudarc_version}"
echo "CUDA toolkit in $root; link libraries in $dir/lib"
