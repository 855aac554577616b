"""The persistent kernels' plan on the CPU (no GPU, no CUDA toolkit): builds and runs
scripts/persistent_limits.cpp, which checks csrc/cuda/persistent_plan.h's invariants over
millions of layer shapes for an A100 and an H100 and prints the on-chip size limits."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "csrc")),
                    reason="needs the source checkout's csrc/ (CI's CUDA lane copies tests only)")
def test_plan_invariants_and_limits(tmp_path):
    exe = tmp_path / "persistent_limits"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror",
                    "-I" + os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "scripts", "persistent_limits.cpp"), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 invariant violations" in out.stdout
    # The fastrnns configuration (LSTM, H = 512, both directions) fits on both devices in
    # every dtype, forward and backward.
    rows = [line.split() for line in out.stdout.splitlines()
            if line.startswith(("A100 ", "H100 "))]
    lstm_bidir = [r for r in rows if r[1] == "LSTM" and r[3] == "2"]
    assert len(lstm_bidir) == 4
    assert all(int(r[4]) >= 512 and int(r[5]) >= 512 for r in lstm_bidir), lstm_bidir
