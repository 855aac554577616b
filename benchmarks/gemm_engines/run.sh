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
# The wheels are unpacked, not installed: their shared libraries sit in *.data/data/lib
# folders, which `pip install --target` leaves out. oneDNN's wheel needs Intel's runtimes
# (TBB, SYCL, compiler libraries), which pip downloads as its dependencies.
if [ ! -d "$WORK/ext" ]; then
  "$PYTHON" -m pip download -q onednn scipy-openblas32 -d "$WORK/wheels"
  for wheel in "$WORK"/wheels/*.whl; do unzip -q -o "$wheel" -d "$WORK/ext"; done
fi
TORCH_DIR="$("$PYTHON" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
LIBDNNL="$(find "$WORK/ext" -name 'libdnnl.so' -print -quit)"
LIBOPENBLAS="$(find "$WORK/ext" -name 'libscipy_openblas*.so' -print -quit)"
LIB_DIRS="$(find "$WORK/ext" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
export LD_LIBRARY_PATH="$LIB_DIRS:$TORCH_DIR/lib:${LD_LIBRARY_PATH:-}"
g++ -O3 -std=c++17 -I"$TORCH_DIR/include" \
  "$ROOT/benchmarks/gemm_engines/gemm_engines.cpp" "$ROOT/csrc/cpu/gemm_avx512.cpp" \
  "$ROOT/csrc/cpu/gemm_avx2.cpp" -L"$TORCH_DIR/lib" -lc10 -ldl -o "$WORK/gemm_engines"
# One thread everywhere: each engine is measured as one direction's thread would run it.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 DNNL_NUM_THREADS=1
field() { grep -m1 -E "^$1\s+:" /proc/cpuinfo | cut -d: -f2- | xargs; }
echo "CPU: $(field 'model name') (family $(field 'cpu family') model $(field model))"
# Pinned to one CPU: oneDNN's TBB runtime ignores the thread variables and takes every CPU
# its affinity mask allows.
PIN="taskset -c 0"
for isa in "${@:-avx512 avx2}"; do
  for one in $isa; do
    if [ "$one" = avx2 ]; then
      env ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
        $PIN "$WORK/gemm_engines" avx2 "$TORCH_DIR/lib/libtorch_cpu.so" "$LIBDNNL" "$LIBOPENBLAS"
    else
      $PIN "$WORK/gemm_engines" avx512 "$TORCH_DIR/lib/libtorch_cpu.so" "$LIBDNNL" "$LIBOPENBLAS"
    fi
  done
done
