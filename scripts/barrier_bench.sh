#!/usr/bin/env bash
# Builds and runs scripts/barrier_bench.cu: the cost of one step of the persistent kernels'
# barrier (csrc/cuda/persistent_sync.h) on this GPU, against cooperative groups' grid.sync()
# and a bare kernel launch. Needs a GPU; about a minute.
#
#   scripts/barrier_bench.sh [OUTDIR] [STEPS]
#
# Environment: ARCH (default: native, i.e. this machine's GPU), CUDA_HOME (default: the
# toolkit behind nvcc on PATH, or /usr/local/cuda). Writes OUTDIR/barrier_bench.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-${TMPDIR:-/tmp}/birnn-barrier-bench}"
STEPS="${2:-2000}"
mkdir -p "$OUT"
if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  if command -v nvcc >/dev/null; then
    TOP="$(cd "$OUT" && nvcc --dryrun -c x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
    CUDA_HOME="$(realpath "${TOP:-$(dirname "$(dirname "$(command -v nvcc)")")}")"
  else
    CUDA_HOME=/usr/local/cuda
  fi
fi
NVCC="$CUDA_HOME/bin/nvcc"
[ -x "$NVCC" ] || { echo "barrier_bench: no nvcc (set CUDA_HOME)" >&2; exit 1; }
"$NVCC" -O3 -std=c++17 -arch="${ARCH:-native}" -I"$ROOT/csrc" "$ROOT/scripts/barrier_bench.cu" \
  -o "$OUT/barrier_bench"
"$OUT/barrier_bench" "$STEPS" | tee "$OUT/barrier_bench.txt"
