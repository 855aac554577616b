#!/usr/bin/env bash
# Builds and runs gemm_engines.cpp (see its header) against the checkout's csrc/cpu GEMM, the
# MKL inside the venv's torch, and oneDNN + OpenBLAS from PyPI (installed into a scratch
# folder, never into the venv), for AVX-512 and for AVX2 (each library capped at AVX2 by its
# own switch, which on an AVX-512 CPU is how an AVX2-only one is emulated).
#
#   bash benchmarks/gemm_engines/run.sh [avx512] [avx2]      (default: both)
# Environment: PYTHON (default .venv/bin/python), WORK (default /tmp/birnn-gemm-engines).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="${WORK:-/tmp/birnn-gemm-engines}"
mkdir -p "$WORK"
if [ ! -d "$WORK/site/scipy_openblas32" ]; then
  "$PYTHON" -m pip install -q --target "$WORK/site" onednn scipy-openblas32 tbb intel-sycl-rt \
    intel-cmplr-lib-rt
fi
TORCH_DIR="$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
LIBDNNL="$(find "$WORK/site" -name 'libdnnl.so*' | head -n 1)"
LIBOPENBLAS="$(find "$WORK/site" -name 'libscipy_openblas*.so' | head -n 1)"
export LD_LIBRARY_PATH="$(dirname "$LIBDNNL"):$WORK/site/lib:$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}"
g++ -O3 -std=c++17 -I"$TORCH_DIR/include" \
  "$ROOT/benchmarks/gemm_engines/gemm_engines.cpp" "$ROOT/csrc/cpu/gemm_avx512.cpp" \
  "$ROOT/csrc/cpu/gemm_avx2.cpp" -L"$TORCH_DIR/lib" -lc10 -ldl -o "$WORK/gemm_engines"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
for isa in "${@:-avx512 avx2}"; do
  for one in $isa; do
    if [ "$one" = avx2 ]; then
      env ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        "$WORK/gemm_engines" avx2 "$TORCH_DIR/lib/libtorch_cpu.so" "$LIBDNNL" "$LIBOPENBLAS"
    else
      "$WORK/gemm_engines" avx512 "$TORCH_DIR/lib/libtorch_cpu.so" "$LIBDNNL" "$LIBOPENBLAS"
    fi
  done
done
