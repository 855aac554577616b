"""scripts/demo.py, the README's main job, on a tiny model: it runs, names the machine and the
kernel path, reports the load it saw, and warns exactly when that load passed the threshold."""

import os
import re
import subprocess
import sys

import torch

import birnn_ext
from birnn_ext import info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import timing  # noqa: E402


def test_demo_reports_machine_match_and_load():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--device", "cpu",
         "--batch", "1", "--steps", "3", "--hidden", "8"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=os.environ | {"PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"kernel path {birnn_ext.kernel_path('cpu')}" in out
    assert info.cpu_model() in out and f"torch {torch.backends.cpu.get_cpu_capability()}" in out
    gaps = [float(g) for g in re.findall(r"max \|\w+ difference\| (\S+?),?\s", out + " ")]
    assert len(gaps) == 3 and max(gaps) < 1e-4   # float32 output and gradients, float64 output

    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(infer|train)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)\s+(\S+)$", out, re.M)}
    assert set(rows) == {"infer", "train"}, out
    for *_, runs, busy in rows.values():
        assert int(runs) >= timing.PROTOCOL["cpu"]["min_reps"]   # interleaved, medians
    busy = [float(b) / 100 for *_, b in rows.values() if b != "-"]
    assert ("WARNING: the machine was busy" in result.stderr) == \
        (bool(busy) and max(busy) > timing.BUSY)
