#!/usr/bin/env bash
# Compiles the persistent kernels (csrc/cuda/persistent_*.cu) for sm_80 and sm_90a with the
# flags the extension build uses, prints ptxas's resource report for every persistent kernel,
# and fails on anything that would make a launch fail or run from local memory:
#   - any spill store/load or stack frame (local memory) in a persistent kernel;
#   - more registers than kThreads threads of one block can have on an SM (65536 / 256);
#   - static shared memory (the plan gives every byte of the opt-in limit to dynamic memory);
#   - fewer kernels than the instantiation list promises (4 cells x 3 dtypes x {inference,
#     training} forward + 4 x 3 backward = 36 per arch).
# No GPU needed. Also builds and runs scripts/persistent_limits.cpp (the plan's arithmetic
# and invariants over a grid of shapes, and the on-chip size limits for A100 and H100).
#
#   scripts/check_persistent_build.sh [OUTDIR]
#
# Environment: PYTHON (a python whose torch is a CUDA build, for its headers; default: the
# first of .venv/bin/python and python3 that has torch; CI's CUDA lane passes its own), ARCHS
# (default "80 90a"), NVCC_THREADS (default 2). The toolkit is the one behind the nvcc on
# PATH (its TOP= line; the nvcc on PATH may be a wrapper), or CUDA_HOME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-${TMPDIR:-/tmp}/birnn-persistent-build}"
mkdir -p "$OUT"
ARCHS="${ARCHS:-80 90a}"
fail() { echo "check_persistent_build: $*" >&2; exit 1; }

if [ -z "${PYTHON:-}" ]; then
  for candidate in "$ROOT/.venv/bin/python" python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
[ -n "${PYTHON:-}" ] || fail "no python with torch found (set PYTHON)"

if [ -z "${CUDA_HOME:-}" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  command -v nvcc >/dev/null || fail "no nvcc on PATH and no CUDA_HOME"
  TOP="$(cd "$OUT" && nvcc --dryrun -c x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  if [ -n "$TOP" ]; then CUDA_HOME="$(realpath "$TOP")"; else
    CUDA_HOME="$(dirname "$(dirname "$(realpath "$(command -v nvcc)")")")"; fi
fi
NVCC="$CUDA_HOME/bin/nvcc"
[ -x "$NVCC" ] || fail "no nvcc at $NVCC"
echo "nvcc: $NVCC ($("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
echo "python: $PYTHON"

# Include folders and flags as torch.utils.cpp_extension gives them to the extension build
# (setup.py: -O3 -DWITH_CUDA and -isystem for the nvidia pip packages' headers).
mapfile -t FLAGS < <(CUDA_HOME="$CUDA_HOME" "$PYTHON" - <<'EOF'
import glob, os, sys
import torch
from torch.utils import cpp_extension as ce
flags = ["-std=c++20", "-O3", "-DWITH_CUDA", "--compiler-options", "-fPIC",
         "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
         "-D_GLIBCXX_USE_CXX11_ABI=%d" % int(torch._C._GLIBCXX_USE_CXX11_ABI)]
flags += list(ce.COMMON_NVCC_FLAGS)
for folder in ce.include_paths("cuda"):
    flags.append("-I" + folder)
for entry in sys.path:
    for folder in sorted(glob.glob(os.path.join(entry, "nvidia", "*", "include"))):
        flags += ["-isystem", folder]
print("\n".join(flags))
EOF
)
GENCODE=()
for arch in $ARCHS; do GENCODE+=("-gencode=arch=compute_${arch},code=sm_${arch}"); done

status=0
: > "$OUT/ptxas.log"
for src in "$ROOT"/csrc/cuda/persistent_*.cu; do
  name="$(basename "$src" .cu)"
  echo "== nvcc $name.cu (${ARCHS})"
  start=$SECONDS
  gencode=("${GENCODE[@]}")
  # Host code only (it instantiates no kernel): one arch is enough to compile it.
  [ "$name" = persistent_launch ] && gencode=("${GENCODE[0]}")
  if ! nice -n 19 "$NVCC" -c "$src" -o "$OUT/$name.o" "${FLAGS[@]}" "${gencode[@]}" \
      --threads "${NVCC_THREADS:-2}" -Xptxas -v > "$OUT/$name.log" 2>&1; then
    grep -v "Wc++20-extensions\|bit-fields only available" "$OUT/$name.log" | tail -n 40
    fail "$name.cu did not compile (log: $OUT/$name.log)"
  fi
  echo "   $((SECONDS - start)) s"
  cat "$OUT/$name.log" >> "$OUT/ptxas.log"
done

# One row per (kernel, arch) from ptxas -v; the checks above.
"$PYTHON" - "$OUT/ptxas.log" "$ARCHS" <<'EOF' || status=1
import re, subprocess, sys
log, archs = open(sys.argv[1]).read().splitlines(), sys.argv[2].split()
KTHREADS, REGS_PER_SM, EXPECTED = 256, 65536, 36
rows, current = [], None
for line in log:
    m = re.search(r"Compiling entry function '(\S+)' for 'sm_(\w+)'", line)
    if m:
        current = dict(mangled=m.group(1), arch=m.group(2), regs=None, stack=0, spill_st=0,
                       spill_ld=0, smem=0)
        rows.append(current)
        continue
    if current is None:
        continue
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m:
        current["stack"], current["spill_st"], current["spill_ld"] = map(int, m.groups())
    m = re.search(r"Used (\d+) registers", line)
    if m:
        current["regs"] = int(m.group(1))
        s = re.search(r"(\d+) bytes smem", line)
        current["smem"] = int(s.group(1)) if s else 0
rows = [r for r in rows if "persistent" in r["mangled"]]
names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows),
                       capture_output=True, text=True).stdout.splitlines()

def short(name):
    name = name.replace("birnn::persistent::", "").replace("birnn::", "")
    name = name.replace("RnnCell<(CellKind)0>", "RnnTanh").replace("RnnCell<(CellKind)1>", "RnnRelu")
    name = re.sub(r"\(.*\)$", "", name).replace("void ", "")
    name = name.replace("c10::BFloat16", "bf16").replace("c10::Half", "f16")
    return name.replace("float", "f32")

bad = []
print(f"{'kernel':58} {'arch':>5} {'regs':>5} {'stack':>6} {'spill st/ld':>12} {'smem':>5}")
for row, name in zip(rows, names or [r["mangled"] for r in rows]):
    row["name"] = short(name)
    print(f"{row['name']:58} {row['arch']:>5} {row['regs']:>5} {row['stack']:>6} "
          f"{row['spill_st']:>5}/{row['spill_ld']:<6} {row['smem']:>5}")
    if row["regs"] is None:
        bad.append(f"{row['name']} sm_{row['arch']}: no register report")
    elif row["regs"] * KTHREADS > REGS_PER_SM:
        bad.append(f"{row['name']} sm_{row['arch']}: {row['regs']} registers x {KTHREADS} threads")
    if row["spill_st"] or row["spill_ld"]:
        bad.append(f"{row['name']} sm_{row['arch']}: spills")
    if row["stack"]:
        bad.append(f"{row['name']} sm_{row['arch']}: {row['stack']} bytes of stack (local memory)")
    if row["smem"]:
        bad.append(f"{row['name']} sm_{row['arch']}: {row['smem']} bytes of static shared memory")
for arch in archs:
    n = sum(r["arch"] == arch for r in rows)
    if n != EXPECTED:
        bad.append(f"sm_{arch}: {n} persistent kernels compiled, expected {EXPECTED}")
for arch in archs:
    regs = [r["regs"] for r in rows if r["arch"] == arch and r["regs"] is not None]
    if regs:
        print(f"sm_{arch}: {len(regs)} kernels, registers {min(regs)}-{max(regs)}")
if bad:
    print("FAILED:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("ptxas report OK: no spills, no stack, no static shared memory, registers fit")
EOF

echo "== scripts/persistent_limits.cpp (plan arithmetic and invariants; size limits)"
nice -n 19 g++ -std=c++17 -O1 -Wall -Wextra -I"$ROOT/csrc" "$ROOT/scripts/persistent_limits.cpp" \
  -o "$OUT/persistent_limits" || fail "persistent_limits.cpp did not compile"
"$OUT/persistent_limits" || status=1

if [ "$status" -ne 0 ]; then
  echo "check_persistent_build: FAILED"
  exit 1
fi
echo "check_persistent_build: OK"
