#!/usr/bin/env bash
# Build `--features cuda` on a machine without a GPU or CUDA install: a CUDA 13.0 toolchain and the
# libraries candle links against, from PyPI, plus a stub libcuda.so for the link (the GPU machine's
# driver provides the real one at run time).
#
#     source tools/cuda_toolchain.sh [DIR]        # default DIR: /opt/cu13; installs once, then exports
#     cargo build --release --features cuda --test gpu --example bench
#
# Exports CUDA_HOME, PATH, CUDA_COMPUTE_CAP (90, the H100's and H200's; override before sourcing),
# LIBRARY_PATH and LD_LIBRARY_PATH. On the GPU machine, point LD_LIBRARY_PATH at its cuBLAS, cuRAND and
# NVRTC 13 (e.g. PyTorch's `site-packages/nvidia/cu13/lib`).

cuda_toolchain_main() {
    local dir="${1:-/opt/cu13}"
    local home="$dir/nvidia/cu13"
    if [ ! -x "$home/bin/nvcc" ]; then
        python3 -m pip install -q --target "$dir" \
            "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" \
            "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cublas==13.0.*" \
            "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand" || return 1
    fi
    local lib
    for lib in cublas cublasLt cudart nvrtc; do
        ln -sf "lib$lib.so.13" "$home/lib/lib$lib.so"
    done
    ln -sf libcurand.so.10 "$home/lib/libcurand.so"
    if [ ! -e "$dir/stub/libcuda.so" ]; then
        # Every driver function cudarc declares, as an empty function, under the driver's soname.
        local sys
        sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' | head -1)
        if [ -z "$sys" ]; then
            echo "cudarc's sources are not in the cargo registry yet: run 'cargo fetch' first" >&2
            return 1
        fi
        mkdir -p "$dir/stub"
        grep -ohE 'fn cu[A-Za-z0-9_]+\(' "$sys" | sed 's/fn //; s/(//' | sort -u |
            awk '{print "void " $1 "(void) {}"}' >"$dir/stub/stub.c"
        gcc -shared -fPIC -o "$dir/stub/libcuda.so" "$dir/stub/stub.c" -Wl,-soname,libcuda.so.1 || return 1
    fi
    export CUDA_HOME="$home"
    export PATH="$home/bin:$PATH"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export LIBRARY_PATH="$home/lib:$dir/stub${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$home/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

cuda_toolchain_main "$@"
