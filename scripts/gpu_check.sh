#!/usr/bin/env bash
# Everything a GPU machine should run (shared/BENCHMARKS.md, "On a GPU machine"), in stages
# that each fit one device call (at most 10 minutes, at most 8 files back, only the last
# 12,000 characters of output seen):
#
#   scripts/gpu_check.sh [--dry-run] [--deadline S] [--max-seconds S] OUTDIR STAGE...
#
#   build     in place, for THIS GPU's arch only (SASS, from torch.cuda.get_device_capability),
#             MAX_JOBS = all cores; then build_info() must say cuda
#   test      pytest -m cuda tests (junit and tests.json kept for the bench stage's record)
#   sanitize  compute-sanitizer initcheck (no NaN poison, so an unwritten read shows) and
#             memcheck (no caching allocator, so every buffer has exact bounds) on
#             scripts/sanitize_small.py: both directions concurrent, a non-default stream
#   bench     scripts/gpu_probe.py (host time per step, direction overlap), then
#             benchmarks/run.py --grid standard with --max-seconds, which stops between rows
#             and writes its record (JSON, CSV) after every row
#   lengths   benchmarks/run.py --lengths-api (padded batch + lengths=, against torch.nn's
#             pack/unpack route, and birnn_ext's own packing route as a third side), the same
#             budget and incremental record; not part of `all`
#   all       build test sanitize bench
#
# `build test sanitize` is meant to fit one call on an H100; bench goes in a call of its own.
# Stages run in the order given; a stage after a failed build is skipped. The whole call
# keeps to --deadline (default 540 s): each stage runs under `timeout` with what is left, and
# bench's --max-seconds defaults to what is left less a margin for writing the record.
#
# OUTDIR gets at most 8 files: summary.txt (also the last thing printed), logs.tar.gz (every
# log of this call) and the benchmark record (.json, .csv, .png). Anything else written there is
# moved into the archive. State that later calls on the same machine need (tests.json for the
# record's "tests" block) lives in build/gpu_check/, which git ignores.
#
# --dry-run proves the plumbing on a machine without a GPU: the same stages, file limit,
# incremental record and summary, with every GPU-only command replaced by a stand-in that
# says so (no compile: the in-place CPU build is used; pytest -m cuda runs and skips; the
# sanitizer workload runs on the CPU; probe and benchmark run a tiny CPU grid).
#
# Environment: PYTHON (default python3), MAX_JOBS (default: all cores), CUDA_HOME (else
# /usr/local/cuda, else the nvcc on PATH; birnn_ext/_build.py finds it for setup.py as well).
set -uo pipefail  # no -e: each stage's failure is recorded, not fatal

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
DRY=0
DEADLINE=540
MAX_SECONDS=""
usage() { echo "usage: scripts/gpu_check.sh [--dry-run] [--deadline S] [--max-seconds S]" \
  "OUTDIR build|test|sanitize|bench|lengths|all..." >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --deadline) DEADLINE="$2"; shift 2 ;;
    --max-seconds) MAX_SECONDS="$2"; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || usage
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
shift
STAGES=()
for s in "$@"; do
  case "$s" in
    all) STAGES+=(build test sanitize bench) ;;
    build|test|sanitize|bench|lengths) STAGES+=("$s") ;;
    *) echo "gpu_check: unknown stage '$s'" >&2; usage ;;
  esac
done

export PYTHONUNBUFFERED=1
# The stages run in child shells (under `timeout`), which see only exported variables.
export ROOT PY DRY DEADLINE MAX_SECONDS OUT
START=$(date +%s)
STATE="$ROOT/build/gpu_check"
LOGS="$STATE/logs"
rm -rf "$LOGS" && mkdir -p "$LOGS" || exit 2
RESULTS="$LOGS/stages.tsv"   # stage <TAB> status <TAB> seconds <TAB> detail
: > "$RESULTS"
STAMP="$(date -u +%Y-%m-%d)"
export STATE LOGS STAMP
cd "$ROOT" || exit 2

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
note() { printf '%s\n' "$*" | tee -a "$LOGS/gpu_check.log"; }

# run_stage NAME FUNCTION: runs FUNCTION with its output in LOGS/NAME.log (and on screen),
# under `timeout` with the time left; the function prints its one-line detail last, to fd 3.
run_stage() {
  local name="$1" fn="$2" t0 rc status detail budget
  budget=$(left)
  if [ "$budget" -le 20 ]; then
    printf '%s\tskipped\t0\tno time left before the %ss deadline\n' "$name" "$DEADLINE" >> "$RESULTS"
    return 1
  fi
  t0=$(date +%s)
  note "== $name ($(( budget ))s left)"
  : > "$LOGS/$name.detail"
  STAGE_BUDGET=$budget timeout --kill-after=10 "$budget" bash -c "$(declare -f); $fn" \
    3> "$LOGS/$name.detail" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  detail="$(tail -n 1 "$LOGS/$name.detail")"
  case "$rc" in
    0) status=passed ;;
    124|137) status="timed out"; detail="stopped at the deadline; $detail" ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$detail" >> "$RESULTS"
  [ "$rc" -eq 0 ]
}

env_report() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  dry run: $DRY"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  git -C "$ROOT" status --short 2>/dev/null | sed 's/^/  changed: /'
  echo "host: $(hostname), $(nproc) cores"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv \
    || echo "nvidia-smi: not available"
  echo "CUDA toolkit: $("$PY" birnn_ext/_build.py cuda-home)"
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version(), "GPU available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
print("cudnn.rnn.fp32_precision", torch.backends.cudnn.rnn.fp32_precision,
      "cuda.matmul.fp32_precision", torch.backends.cuda.matmul.fp32_precision)
EOF
}

stage_build() {
  local home arch
  if [ "$DRY" = 1 ]; then
    arch="9.0"
    echo "dry run: would build with TORCH_CUDA_ARCH_LIST=$arch (this GPU's arch) FORCE_CUDA=1" \
      "MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY setup.py build_ext --inplace; checking the existing build"
  else
    home="$("$PY" birnn_ext/_build.py cuda-home)" \
      || { echo "gpu_check: $home"; echo "no CUDA toolkit: $home" >&3; return 1; }
    arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
      || { echo "torch sees no GPU" >&3; return 1; }
    echo "CUDA_HOME=$home TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-$(nproc)}"
    rm -f birnn_ext/_C*.so
    CUDA_HOME="$home" TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$(nproc)}" FORCE_CUDA=1 \
      "$PY" setup.py build_ext --inplace || { echo "setup.py failed" >&3; return 1; }
  fi
  "$PY" -c 'import birnn_ext._C as C; print("build_info", C.build_info())' || {
    echo "birnn_ext._C does not import" >&3; return 1; }
  BIRNN_EXT_NO_JIT=1 "$PY" -m birnn_ext.info
  if [ "$DRY" = 1 ]; then
    echo "existing build imports (dry run: nothing compiled)" >&3
  else
    "$PY" -c 'import birnn_ext._C as C; assert C.build_info()["cuda"], "built without CUDA"' \
      || { echo "built without CUDA" >&3; return 1; }
    echo "sm_${arch/./} build imports, cuda=True" >&3
  fi
}

stage_test() {
  local rc
  BIRNN_EXT_NO_JIT=1 "$PY" -m pytest -m cuda tests -q -rfEs -p no:cacheprovider \
    --junitxml "$LOGS/junit-cuda.xml"
  rc=$?
  # tests.json {command, passed, failed, skipped} for the record's "tests" block.
  "$PY" - "$LOGS/junit-cuda.xml" "$STATE/tests.json" "$DRY" >&3 <<'EOF' || return 1
import json, sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda key: sum(int(s.get(key, 0)) for s in suites)
failed = n("failures") + n("errors")
block = {"command": "pytest -m cuda", "passed": n("tests") - failed - n("skipped"),
         "failed": failed, "skipped": n("skipped")}
json.dump(block, open(sys.argv[2], "w"))
names = [f"{c.get('classname')}::{c.get('name')}" for s in suites for c in s.iter("testcase")
         if c.find("failure") is not None or c.find("error") is not None]
print(f"{block['passed']} passed, {failed} failed, {block['skipped']} skipped"
      + (" (dry run: no GPU, so every cuda test skips)" if sys.argv[3] == "1" else "")
      + ("; failed: " + ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else ""))
EOF
  cp "$STATE/tests.json" "$LOGS/"
  return $rc
}

sanitizer_path() {
  local home c
  command -v compute-sanitizer && return 0
  home="$("$PY" birnn_ext/_build.py cuda-home 2>/dev/null)" || return 1
  for c in "$home/bin/compute-sanitizer" "$home/compute-sanitizer/compute-sanitizer"; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

stage_sanitize() {
  local cs tool rc=0 summary=""
  if [ "$DRY" = 1 ]; then
    echo "dry run: compute-sanitizer not run; the workload alone, on the CPU"
    "$PY" scripts/sanitize_small.py --device cpu --quick || { echo "workload failed on the CPU" >&3; return 1; }
    echo "workload ran on the CPU (dry run: no sanitizer)" >&3
    return 0
  fi
  cs="$(sanitizer_path)" || { echo "compute-sanitizer not found (PATH, the CUDA toolkit)" >&3; return 1; }
  for tool in initcheck memcheck; do
    echo "== $tool"
    # No caching allocator: every tensor is its own fresh allocation, with exact bounds
    # (memcheck) and no earlier contents (initcheck). No NaN poison for initcheck: a poisoned
    # buffer counts as written, which would hide a read of an element no kernel wrote.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 BIRNN_EXT_POISON="$([ "$tool" = initcheck ] && echo 0 || echo 1)" \
      "$cs" --tool "$tool" --error-exitcode 97 "$PY" scripts/sanitize_small.py \
      2>&1 | tee "$LOGS/sanitize-$tool.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    summary+="$tool: $(grep -o 'ERROR SUMMARY: [0-9]* error[s]*' "$LOGS/sanitize-$tool.log" | tail -n 1)"
    summary+=" $(tail -n 1 "$LOGS/sanitize-$tool.log" | grep -o 'all results agree\|[0-9]* configuration(s) disagree' || true); "
  done
  echo "$summary" >&3
  return $rc
}

stage_lengths() { BENCH_LENGTHS=1 stage_bench; }

# The grid, or with BENCH_LENGTHS=1 its lengths-api rows (no probe then: the bench stage ran it).
stage_bench() {
  local device=cuda extra=() budget name
  [ "$DRY" = 1 ] && device=cpu
  if [ "${BENCH_LENGTHS:-0}" = 1 ]; then
    extra+=(--lengths-api)
  else
    "$PY" scripts/gpu_probe.py --device "$device" --json "$LOGS/probe.json" \
      $([ "$DRY" = 1 ] && echo --quick) || echo "gpu_probe failed (the grid still runs)"
  fi
  budget="${MAX_SECONDS:-$(( STAGE_BUDGET - ($(date +%s) - STAGE_T0) - 45 ))}"
  [ "$budget" -gt 10 ] || { echo "no time left for the grid" >&3; return 1; }
  [ -f "$STATE/tests.json" ] && extra+=(--tests-json "$STATE/tests.json")
  if grep -q -- "--max-seconds" benchmarks/run.py; then
    extra+=(--max-seconds "$budget")
  else
    echo "benchmarks/run.py has no --max-seconds: the grid runs without a budget"
  fi
  if [ "$DRY" = 1 ]; then
    name="dry-run-$STAMP-cpu"
    extra+=(--device cpu --grid quick --cell LSTM --mode infer --B 1 --H 64 --T 10)
  else
    name="$STAMP-$("$PY" -c 'import torch; print(torch.cuda.get_device_name().split()[1].lower())')"
    extra+=(--device cuda --grid standard)
  fi
  [ "${BENCH_LENGTHS:-0}" = 1 ] && name+="-lengths-api"
  "$PY" benchmarks/run.py --out "$OUT" --name "$name" "${extra[@]}"
  local rc=$?
  "$PY" - "$OUT/$name.json" "$LOGS/probe.json" >&3 <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["rows"]
    ok = sum(r.get("status") == "ok" for r in rows)
    text = f"{len(rows)} rows ({ok} ok) in {sys.argv[1].rsplit('/', 1)[-1]}"
except (OSError, ValueError, KeyError) as e:
    text = f"no record ({type(e).__name__})"
try:
    probe = json.load(open(sys.argv[2]))
    ratios = ", ".join(f"H{r['H']}B{r['B']} {r['ratio']}" for r in probe["overlap"])
    host = ", ".join(f"H{r['H']}B{r['B']} {r['mode']} "
                     + "+".join(str(v) for k, v in r.items() if k.endswith(("_forward", "_backward")))
                     for r in probe["host_us_per_step"])
    text += f"; overlap bi/uni {ratios}; host us/step {host}"
except (OSError, ValueError, KeyError):
    text += "; no probe"
print(text)
EOF
  return $rc
}

# --- the call ------------------------------------------------------------------------------
env_report > "$LOGS/env.log" 2>&1
note "gpu_check: stages ${STAGES[*]}, deadline ${DEADLINE}s$([ "$DRY" = 1 ] && echo ', DRY RUN')"
BUILD_OK=1
for stage in "${STAGES[@]}"; do
  if [ "$BUILD_OK" = 0 ] && [ "$stage" != build ]; then
    printf '%s\tskipped\t0\tthe build failed\n' "$stage" >> "$RESULTS"
    continue
  fi
  export STAGE_T0
  STAGE_T0=$(date +%s)
  run_stage "$stage" "stage_$stage" || { [ "$stage" = build ] && BUILD_OK=0; }
done

# --- OUTDIR: at most 8 files ------------------------------------------------------------
# Keep summary.txt, logs.tar.gz and up to 6 record files (newest first); the rest go in the
# archive.
kept=0
for f in $(ls -t "$OUT"); do
  case "$f" in
    summary.txt|logs.tar.gz) continue ;;
    *.json|*.csv|*.png) if [ -f "$OUT/$f" ] && [ $kept -lt 6 ]; then kept=$((kept + 1)); continue; fi ;;
  esac
  mv "$OUT/$f" "$LOGS/" && note "moved $f from OUTDIR into logs.tar.gz"
done
FAILED=$(awk -F'\t' '$2 != "passed"' "$RESULTS" | wc -l)
{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$DRY" = 1 ] && echo ' DRY RUN (no GPU: stand-ins)')"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null)$([ -n "$(git status --short 2>/dev/null)" ] && echo ' (working tree has changes)')"
  grep '^device\|^torch' "$LOGS/env.log"
  grep -m 1 '^CUDA toolkit' "$LOGS/env.log"
  printf '%-9s %-10s %5s  %s\n' stage status secs detail
  awk -F'\t' '{printf "%-9s %-10s %5s  %s\n", $1, $2, $3, $4}' "$RESULTS"
  echo "logs: logs.tar.gz ($(cd "$LOGS" && ls | tr '\n' ' '))"
  echo "OUTDIR: $(cd "$OUT" && ls | grep -v '^summary.txt$\|^logs.tar.gz$' | tr '\n' ' ')summary.txt logs.tar.gz"
  [ "$FAILED" -eq 0 ] && echo "gpu_check: ALL STAGES PASSED" || echo "gpu_check: $FAILED STAGE(S) NOT PASSED"
} > "$OUT/summary.txt"
cp "$OUT/summary.txt" "$LOGS/"
tar -czf "$OUT/logs.tar.gz" -C "$STATE" logs
echo
cat "$OUT/summary.txt"
[ "$(ls "$OUT" | wc -l)" -le 8 ] || echo "gpu_check: WARNING: more than 8 files in $OUT"
[ "$FAILED" -eq 0 ]
