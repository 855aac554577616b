#!/usr/bin/env bash
# Everything a GPU machine should run, in one call (shared/BENCHMARKS.md, "On a GPU machine"):
#
#   scripts/gpu_check.sh OUTDIR
#
#   env       nvidia-smi, versions of torch / CUDA / cuDNN / nvcc / gcc, the commit
#   build     in place, for THIS GPU's arch only (TORCH_CUDA_ARCH_LIST from
#             torch.cuda.get_device_capability), MAX_JOBS=16; then build_info() must say cuda
#   pytest    python -m pytest -m cuda -v tests  -> OUTDIR/junit-cuda.xml, OUTDIR/tests.json
#   memcheck  compute-sanitizer --tool memcheck  on scripts/sanitize_small.py
#   racecheck compute-sanitizer --tool racecheck on scripts/sanitize_small.py
#   bench     python benchmarks/run.py --device cuda --grid standard --out OUTDIR (if present)
#
# For a machine like the project's GPU hosts: torch with CUDA preinstalled, nvcc on PATH, no
# internet (nothing is downloaded). Every step writes OUTDIR/<step>.log and a line
# "<step> rc=<exit code> <seconds>s" to OUTDIR/steps.txt; the script goes on after a failed
# step (a step that needs the build is recorded as skipped when the build failed) and exits
# non-zero when any step failed. Environment: PYTHON (default python3), MAX_JOBS (default 16).
set -uo pipefail  # no -e: each step's failure is recorded, not fatal

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 1 ] || { echo "usage: scripts/gpu_check.sh OUTDIR" >&2; exit 2; }
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
PY="${PYTHON:-python3}"
STEPS="$OUT/steps.txt"
: > "$STEPS"
FAILED=()
cd "$ROOT" || exit 2

# step NAME CMD...: runs CMD with its output in OUTDIR/NAME.log (and on the console).
step() {
  local name="$1"; shift
  local start rc
  start=$(date +%s)
  echo "== $name: $*"
  "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "$name rc=$rc $(( $(date +%s) - start ))s" >> "$STEPS"
  if [ "$rc" -ne 0 ]; then
    FAILED+=("$name")
    echo "== $name FAILED (rc=$rc), log: $OUT/$name.log"
  fi
  return "$rc"
}

skip() {  # skip NAME REASON: recorded as a failure, since the step did not run
  echo "$1 rc=skipped ($2)" >> "$STEPS"
  FAILED+=("$1")
  echo "== $1 SKIPPED: $2"
}

toolkit_home() {  # the real toolkit behind the nvcc on PATH (which may be a wrapper)
  local top
  top="$(cd /tmp && nvcc --dryrun -c x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  if [ -n "$top" ]; then realpath "$top"; else dirname "$(dirname "$(command -v nvcc)")"; fi
}

env_report() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  git -C "$ROOT" status --short 2>/dev/null | sed 's/^/  changed: /'
  echo "host: $(hostname), $(nproc) cores"
  nvidia-smi || return 1
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  command -v nvcc && nvcc --version
  echo "CUDA_HOME (from nvcc): $CUDA_HOME"
  gcc --version | head -n 1
  "$PY" --version
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
assert torch.cuda.is_available(), "torch sees no GPU"
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "cudnn tf32",
      torch.backends.cudnn.allow_tf32)
EOF
}

build() {
  local arch
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" || return 1
  echo "TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16}"
  rm -f "$ROOT"/birnn_ext/_C*.so
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-16}" NVCC_THREADS="${NVCC_THREADS:-1}" \
    FORCE_CUDA=1 "$PY" setup.py build_ext --inplace || return 1
  "$PY" - <<'EOF'
import birnn_ext._C as C
info = C.build_info()
print("build_info", info)
assert info["cuda"], "the extension was built without CUDA"
EOF
}

pytest_cuda() {
  BIRNN_EXT_NO_JIT=1 "$PY" -m pytest -m cuda -v tests --junitxml "$OUT/junit-cuda.xml"
}

# OUTDIR/tests.json {command, passed, failed, skipped} from the junit file, for the benchmark
# record's "tests" block (benchmarks/run.py --tests-json).
tests_summary() {
  "$PY" - "$OUT/junit-cuda.xml" "$OUT/tests.json" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda key: sum(int(s.get(key, 0)) for s in suites)
failed = n("failures") + n("errors")
block = {"command": "pytest -m cuda", "passed": n("tests") - failed - n("skipped"),
         "failed": failed, "skipped": n("skipped")}
json.dump(block, open(sys.argv[2], "w"))
print(block)
EOF
}

sanitizer() {
  local tool="$1" cs
  cs="$(command -v compute-sanitizer || true)"
  for c in "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
    [ -z "$cs" ] && [ -x "$c" ] && cs="$c"
  done
  [ -n "$cs" ] || { echo "compute-sanitizer not found (PATH, $CUDA_HOME)"; return 1; }
  # Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees the
  # exact bounds of each buffer instead of a large pooled block.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool "$tool" --error-exitcode 97 \
    "$PY" scripts/sanitize_small.py
}

bench() {
  local extra=()
  [ -f "$OUT/tests.json" ] && grep -q -- "--tests-json" benchmarks/run.py &&
    extra=(--tests-json "$OUT/tests.json")
  "$PY" benchmarks/run.py --device cuda --grid standard --out "$OUT" "${extra[@]}"
}

CUDA_HOME="${CUDA_HOME:-$(toolkit_home)}"
export CUDA_HOME

step env env_report
if step build build; then
  step pytest pytest_cuda
  [ -f "$OUT/junit-cuda.xml" ] && step tests_summary tests_summary
  step memcheck sanitizer memcheck
  step racecheck sanitizer racecheck
  if [ -f benchmarks/run.py ]; then
    step bench bench
  else
    echo "bench rc=skipped (no benchmarks/run.py)" >> "$STEPS"
  fi
else
  for name in pytest memcheck racecheck bench; do skip "$name" "the build failed"; done
fi

echo
echo "== steps ($STEPS)"
cat "$STEPS"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: all steps passed; outputs in $OUT"
