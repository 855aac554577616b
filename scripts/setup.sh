#!/usr/bin/env bash
# Sets up a checkout: a virtual environment in .venv with torch and the tools, birnn_ext's C++
# module built in place, and the checkout put on the environment's import path.
#
# Re-running it with nothing changed takes seconds. The build is `setup.py build_ext --inplace`,
# whose ninja objects stay in build/temp.*: ninja recompiles a file only when it, a header it
# includes (gcc depfiles) or its compile command (which names torch's version and include
# folders) changed, and relinks. `pip install -e .` cannot do this: setuptools' editable build
# compiles in a fresh temporary folder every time, so every run recompiled every file.
# Instead of pip's editable install, a .pth file puts the checkout on the venv's sys.path (what
# pytest.ini's `pythonpath = .` does for the tests), so edits to birnn_ext/ take effect at once.
#
# Environment: PYTHON (default python3), VENV (default .venv), MAX_JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip setuptools wheel
fi
"$PY" -m pip install -q -r requirements.txt

# The compiler's output (thousands of lines, warnings from torch's headers included) goes to a
# log; its tail is shown if the build fails, and one line says what ninja did.
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# The venv's ninja (requirements.txt), never another one on PATH: ninja versions rewrite each
# other's build log from scratch, and without a ninja torch falls back to a serial build.
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
mkdir -p build
log=build/setup-build.log
if ! "$PY" setup.py build_ext --inplace >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "setup.sh: building birnn_ext._C failed; the whole log is $log" >&2
  exit 1
fi
compiled=$(grep -cE '^\[[0-9]+/[0-9]+\] ' "$log" || true)
echo "birnn_ext._C built in place: $compiled file(s) compiled, the rest up to date (log: $log)"

"$PY" - "$PWD" <<'EOF'
import os, sys, sysconfig
pth = os.path.join(sysconfig.get_paths()["purelib"], "birnn_ext_checkout.pth")
with open(pth, "w") as f:
    f.write(sys.argv[1] + "\n")
EOF
# One line that proves the import works; `python -m birnn_ext.info` tells the whole story.
"$PY" -c 'import birnn_ext as b; print(f"birnn_ext {b.__version__} ready: backend", b.get_backend(),
          "| CPU kernel path", b.kernel_path("cpu"), "| details: python -m birnn_ext.info")'
