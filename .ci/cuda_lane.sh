#!/usr/bin/env bash
# CI's CUDA lane: build the CUDA wheel of birnn_ext on a machine WITHOUT a GPU and prove it
# is whole. Needs: python3 with venv, an nvcc on PATH (a wrapper script is fine), network
# access to the package registry.
#
#   1. its own venv with the CUDA build of torch (default 2.13.0) + ninja pybind11 pytest
#      hypothesis numpy
#   2. CUDA_HOME = the real toolkit behind nvcc (the TOP= line of `nvcc --dryrun`)
#   3. `pip wheel` of a clean copy of the source (the checkout's build/ stays untouched)
#   4. cuobjdump on the wheel's _C: one cubin per arch, and PTX for each arch marked +PTX
#      (the archs setup.py builds for: TORCH_CUDA_ARCH_LIST, default birnn_ext/_build.py's)
#   5. install the wheel, import birnn_ext._C from outside the source tree, print build_info()
#   6. the CPU test suite (pytest -m "not cuda") against the INSTALLED wheel
#
# Environment: CUDA_LANE_DIR (work folder; default $TMPDIR/birnn-cuda-lane, reused between runs
# so the venv and pip's cache are downloaded once), TORCH_VERSION, TORCH_CUDA_ARCH_LIST
# (default: what setup.py ships, "8.0;9.0+PTX"), MAX_JOBS (default: all cores), PYTHON
# (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${CUDA_LANE_DIR:-${TMPDIR:-/tmp}/birnn-cuda-lane}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
# The archs the wheel must hold: what setup.py builds for (it reads the same variable).
ARCHS="$("${PYTHON:-python3}" "$ROOT/birnn_ext/_build.py" archs)"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
START=$(date +%s)

step() { echo; echo "== [$(( $(date +%s) - START ))s] $*"; }
fail() { echo "cuda_lane: $*" >&2; exit 1; }

mkdir -p "$WORK"
VENV="$WORK/venv"
PY="$VENV/bin/python"

step "venv $VENV with torch==$TORCH_VERSION (CUDA build) from the registry"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
# The registry's default torch wheel for Linux is the CUDA build; a local pip configuration
# (find-links to CPU wheels) must not substitute another one. The rest is requirements.txt's
# list (the tests run against the wheel import its packages: tqdm, matplotlib, ...).
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$PY" -m pip install --quiet --upgrade pip
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$PY" -m pip install --quiet \
  "torch==$TORCH_VERSION" setuptools wheel \
  $(grep -vE '^\s*(#|$|torch\b)' "$ROOT/requirements.txt")
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "built for CUDA", torch.version.cuda)
assert torch.version.cuda, "the venv's torch is not a CUDA build"
EOF

step "CUDA_HOME from nvcc"
command -v nvcc >/dev/null || fail "no nvcc on PATH"
TOP="$(cd "$WORK" && nvcc --dryrun -c x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
[ -n "$TOP" ] || fail "nvcc --dryrun printed no TOP= line"
CUDA_HOME="$(realpath "$TOP")"
export CUDA_HOME
[ -x "$CUDA_HOME/bin/nvcc" ] || fail "CUDA_HOME=$CUDA_HOME has no bin/nvcc"
echo "CUDA_HOME=$CUDA_HOME"
"$CUDA_HOME/bin/nvcc" --version | tail -n 2

step "clean copy of the source"
SRC="$WORK/src"
rm -rf "$SRC" "$WORK/dist"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Tracked files plus new files git does not ignore: what a commit of this tree would hold
  # (less tracked files deleted in the working tree).
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
    while IFS= read -r -d '' f; do if [ -e "$ROOT/$f" ]; then printf '%s\0' "$f"; fi; done |
    (cd "$ROOT" && xargs -0 cp --parents -t "$SRC" --)
else
  (cd "$ROOT" && tar --exclude=./build --exclude=./dist --exclude='*.so' -cf - .) |
    tar -xf - -C "$SRC"
fi
find "$SRC" -name '*.so' -delete

step "wheel (CUDA archs $ARCHS, MAX_JOBS=$MAX_JOBS)"
(cd "$SRC" && FORCE_CUDA=1 "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WORK/dist" .)
WHEEL="$(ls "$WORK"/dist/birnn_ext-*.whl)"
echo "$WHEEL"

step "cuobjdump: the wheel's _C holds code for every arch"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
CUOBJDUMP="$(find "$SITE" -name cuobjdump -type f -print -quit)"
[ -n "$CUOBJDUMP" ] || fail "no cuobjdump under $SITE (it ships in triton's package)"
chmod +x "$CUOBJDUMP"
SO_DIR="$WORK/wheel_so"
rm -rf "$SO_DIR"
"$PY" - "$WHEEL" "$SO_DIR" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("birnn_ext/_C") and n.endswith(".so")]
    assert len(names) == 1, f"expected one birnn_ext/_C*.so in the wheel, found {names}"
    z.extract(names[0], out)
EOF
SO="$(ls "$SO_DIR"/birnn_ext/_C*.so)"
"$CUOBJDUMP" --list-elf "$SO" | tee "$WORK/cuobjdump.txt"
"$CUOBJDUMP" --list-ptx "$SO" | tee "$WORK/cuobjdump-ptx.txt"
for arch in ${ARCHS//;/ }; do
  num="${arch%%+*}"
  num="${num//./}"
  grep -q "\.sm_${num}\.cubin" "$WORK/cuobjdump.txt" || fail "no sm_$num cubin in $SO"
  echo "ok: sm_$num cubin"
  if [ "$arch" != "${arch%+PTX}" ]; then
    grep -q "\.sm_${num}\.ptx" "$WORK/cuobjdump-ptx.txt" || fail "no compute_$num PTX in $SO"
    echo "ok: compute_$num PTX"
  fi
done

step "persistent kernels: ptxas's registers, shared memory and spills (fails on any spill)"
PYTHON="$PY" bash "$SRC/scripts/check_persistent_build.sh" "$WORK/persistent-build"

step "install the wheel and import it from outside the source tree"
"$PY" -m pip install --quiet --no-deps --force-reinstall "$WHEEL"
RUN="$WORK/run"
rm -rf "$RUN"
mkdir -p "$RUN"
# PYTHONSAFEPATH keeps the current folder off sys.path; BIRNN_EXT_NO_JIT stops a silent
# fallback to a just-in-time build if the wheel's module failed to load.
export PYTHONSAFEPATH=1 BIRNN_EXT_NO_JIT=1
(cd "$RUN" && "$PY" - "$SITE" <<'EOF'
import os, sys
site = os.path.realpath(sys.argv[1])
import torch
import birnn_ext
import birnn_ext._C as C
print("birnn_ext from", birnn_ext.__file__)
print("build_info", C.build_info())
assert os.path.realpath(birnn_ext.__file__).startswith(site), "not the installed birnn_ext"
info = C.build_info()
assert info["cuda"], "the wheel was built without CUDA"
print("ops:", sorted(n for n in dir(torch.ops.birnn_ext) if n.endswith("_forward")))
EOF
)

step "CPU test suite against the installed wheel"
if [ -d "$SRC/tests" ]; then
  # A copy of tests/ (and pytest.ini, whose `pythonpath = .` then names this folder, which
  # holds no birnn_ext), so `import birnn_ext` can only find the installed wheel; with the
  # benchmark and script folders some tests run (they hold no birnn_ext either).
  cp -r "$SRC/tests" "$RUN/tests"
  for folder in benchmarks scripts; do
    [ -d "$SRC/$folder" ] && cp -r "$SRC/$folder" "$RUN/$folder"
  done
  [ -f "$SRC/pytest.ini" ] && cp "$SRC/pytest.ini" "$RUN/"
  (cd "$RUN" && "$PY" -c 'import birnn_ext; print("tests import birnn_ext from", birnn_ext.__file__)')
  (cd "$RUN" && "$PY" -m pytest -q tests -m "not cuda" -p no:cacheprovider)
else
  echo "no tests/ in this checkout: nothing to run"
fi

step "done: CUDA lane passed in $(( $(date +%s) - START ))s"
