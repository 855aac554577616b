#!/usr/bin/env bash
# Sets up a fresh checkout: a virtual environment in .venv with torch and the tools, and
# birnn_ext built in place (editable) with torch.utils.cpp_extension and ninja.
# Re-running it is cheap: pip skips what is installed and ninja rebuilds only what changed.
# Environment: PYTHON (default python3), VENV (default .venv), MAX_JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -r requirements.txt
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -m birnn_ext.info
