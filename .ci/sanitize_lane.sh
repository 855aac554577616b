#!/usr/bin/env bash
# CI's sanitizer lane: the CPU kernels under AddressSanitizer (with LeakSanitizer) and
# UndefinedBehaviorSanitizer. Any report fails the lane.
#
#   1. a copy of the source (tracked files and new ones git does not ignore) in $WORK/src,
#      so the checkout's own build stays as it is
#   2. birnn_ext._C built there with -fsanitize=address,undefined -fno-omit-frame-pointer
#      (CPU only), with the .venv that scripts/setup.sh made (run first if it is missing)
#   3. the CPU parity, kernel, error, non-finite, op, bad-input and size-limit tests, a short
#      fuzzing run and the 4-thread test on the compiled backend, three times: on this CPU's
#      default path (AVX-512 where it has it), with BIRNN_EXT_CPU_SIMD=avx2 and with =0
#
# The ASan runtime has to be the first library of the process, but Python is not built with
# it, so it is preloaded (LD_PRELOAD, the very libasan the built module links). A report
# stops the process (halt_on_error) with a non-zero exit; LeakSanitizer reports at exit, with
# .ci/lsan.supp holding the suppressions for leaks inside torch and Python themselves.
#
# Environment: SANITIZE_LANE_DIR (work folder; default $TMPDIR/birnn-sanitize-lane, kept
# between runs so that ninja rebuilds only what changed), MAX_JOBS (default: all cores),
# SANITIZE_FUZZ_EXAMPLES (default 60 per path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${SANITIZE_LANE_DIR:-${TMPDIR:-/tmp}/birnn-sanitize-lane}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
START=$(date +%s)

step() { echo; echo "== [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "sanitize_lane: $*" >&2; exit 1; }

PY="$ROOT/.venv/bin/python"
if [ ! -x "$PY" ]; then
  step "no .venv yet: scripts/setup.sh"
  bash "$ROOT/scripts/setup.sh"
fi

step "copy of the source in $WORK/src"
SRC="$WORK/src"
mkdir -p "$SRC"
rm -rf "$SRC/birnn_ext" "$SRC/csrc" "$SRC/tests"
# cp -p keeps modification times, so ninja rebuilds only the files that changed.
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- \
    setup.py pyproject.toml pytest.ini birnn_ext csrc tests .ci/lsan.supp) |
  (cd "$ROOT" && xargs -0 cp -p --parents -t "$SRC" --)
find "$SRC/birnn_ext" -name '*.so' -delete

step "build with -fsanitize=address,undefined (MAX_JOBS=$MAX_JOBS)"
# setuptools adds CFLAGS to every compile and LDFLAGS to the link of the module, so the .so
# is instrumented and records libasan and libubsan as its dependencies. The compiler's
# output goes to a log (ATen's headers warn at length), shown on failure.
SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer"
(cd "$SRC" && BIRNN_EXT_NO_CUDA=1 CFLAGS="$SANITIZE -g" LDFLAGS="$SANITIZE" \
  "$PY" setup.py -q build_ext --inplace) > "$WORK/build.log" 2>&1 ||
  { tail -n 60 "$WORK/build.log"; fail "the sanitizer build failed (log: $WORK/build.log)"; }
SO="$(ls "$SRC"/birnn_ext/_C*.so)"
# ldd's output is read once into a variable: `ldd | grep -q` under pipefail fails at random
# (grep -q exits at its first match, ldd dies of SIGPIPE on its next write), which is how
# CI once reported an instrumented module as "not instrumented".
SO_LIBS="$(ldd "$SO")"
LIBASAN="$(awk '/libasan/ {print $3}' <<<"$SO_LIBS")"
[ -n "$LIBASAN" ] && [ -f "$LIBASAN" ] || fail "$SO does not link libasan: not instrumented"
grep libubsan <<<"$SO_LIBS" >/dev/null || fail "$SO does not link libubsan: not instrumented"
# libstdc++ is preloaded too: Python itself is C, so otherwise libstdc++ comes in with torch,
# after ASan started, and ASan's __cxa_throw interceptor finds no real __cxa_throw ("CHECK
# failed: asan_interceptors.cpp ... real___cxa_throw") at the first C++ exception.
LIBSTDCXX="$(awk '/libstdc\+\+/ {print $3}' <<<"$SO_LIBS")"
[ -f "$LIBSTDCXX" ] || fail "cannot find the libstdc++ that $SO links"
PRELOAD="$LIBASAN $LIBSTDCXX"
echo "$SO links $LIBASAN; preloading $PRELOAD"

# PYTHONMALLOC=malloc: Python's small objects otherwise live in arenas it maps itself, which
# LeakSanitizer does not scan, so every tensor held only by a Python object at exit looked
# leaked (measured: 12 TensorImpls) and could not be told apart from a real leak.
# detect_leaks: LeakSanitizer at exit. halt_on_error / abort_on_error=0: the first report
# ends the process with exit code 1 (ASan) or 23 (leaks). ODR checking is off: libtorch's
# own libraries define some globals twice, which is theirs to answer for and not ours.
ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_odr_violation=0"
LSAN_OPTIONS="suppressions=$SRC/.ci/lsan.supp:print_suppressions=0"
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

# --capture=sys: pytest captures Python's streams only, so a sanitizer's report, written to
# file descriptor 2 just before it ends the process, reaches the log.
# The compiled backend only: the Python fallback runs no C++ of ours. test_other_cpu_paths
# starts the other CPU paths in subprocesses, which this lane runs itself.
TESTS=(tests/test_parity.py tests/test_cpu_kernels.py tests/test_errors.py
       tests/test_nonfinite.py tests/test_ops.py tests/test_fuzz.py tests/test_threads.py
       tests/test_bad_input.py tests/test_sizes.py)
SELECT="not python and not other_cpu_paths and not fuzz_other and (not test_threads or four_threads)"

# Whether a failed run's log ($1) is LeakSanitizer's own crash at exit and nothing else: its
# tracer thread, which stops every thread to scan their stacks, can die of a signal while an
# OpenMP worker is exiting ("Tracer caught signal 11 ... LeakSanitizer has encountered a fatal
# error"; seen once in four CI runs, after every test had passed). That is no finding, so
# the path runs once more; any report (ASan, UBSan, a leak) or a failed test still fails.
lsan_crashed_only() {
  grep -q "LeakSanitizer has encountered a fatal error" "$1" &&
    ! grep -q -E "ERROR: (AddressSanitizer|LeakSanitizer: detected)|runtime error:" "$1" &&
    grep -q -E "^[0-9]+ passed" "$1" && ! grep -q -E "[0-9]+ (failed|error)" "$1"
}

for simd in default avx2 0; do
  step "tests under the sanitizers, CPU path: $simd"
  simd_env=()
  [ "$simd" != default ] && simd_env=(BIRNN_EXT_CPU_SIMD="$simd")
  log="$WORK/tests-$simd.log"
  for attempt in 1 2; do
    set +e
    (cd "$SRC" && env "${simd_env[@]}" BIRNN_EXT_BACKEND=cpp BIRNN_EXT_NO_JIT=1 \
      BIRNN_EXT_FUZZ_EXAMPLES="${SANITIZE_FUZZ_EXAMPLES:-60}" \
      ASAN_OPTIONS="$ASAN_OPTIONS" LSAN_OPTIONS="$LSAN_OPTIONS" UBSAN_OPTIONS="$UBSAN_OPTIONS" \
      PYTHONMALLOC=malloc LD_PRELOAD="$PRELOAD" \
      "$PY" -m pytest -q -p no:cacheprovider --capture=sys "${TESTS[@]}" -k "$SELECT") 2>&1 |
      tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    [ "$rc" -eq 0 ] && break
    if [ "$attempt" = 1 ] && lsan_crashed_only "$log"; then
      echo "sanitize_lane: LeakSanitizer itself crashed at exit (no report, every test passed):" \
        "CPU path $simd runs once more"
      continue
    fi
    fail "tests failed or a sanitizer reported on CPU path $simd (see above)"
  done
  (cd "$SRC" && env "${simd_env[@]}" BIRNN_EXT_NO_JIT=1 LD_PRELOAD="$PRELOAD" \
    ASAN_OPTIONS="$ASAN_OPTIONS" LSAN_OPTIONS="$LSAN_OPTIONS" \
    "$PY" -c 'import birnn_ext; print("path:", birnn_ext.kernel_path("cpu"))')
done

step "done: sanitizer lane passed in $(( $(date +%s) - START ))s"
