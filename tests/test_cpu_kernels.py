"""The CPU path's own kernels at shapes that reach every branch of their blocking.

The float32 path on a CPU with AVX2 or AVX-512 runs its GEMMs on birnn_ext's own kernel
(csrc/cpu/gemm_kernel.h; the backward's large ones on ATen's where that is faster, and here on
both): panels of 16 (8) columns with a masked last panel, register tiles of 1-8 (1-6) rows, K
in blocks of 384 when it exceeds 512, N in blocks of panels, and a left operand read across
its storage (the weight gradients). These tests compare against torch.nn in float64 (the
exact answer for float32 rounding), at sizes chosen to cross each block edge, with a
direction's units in one slice or split over several threads (csrc/cpu/step_team.h), and
run the other CPU paths (`BIRNN_EXT_CPU_SIMD=avx2` and `0`) in subprocesses, since the path
is chosen once per process.
"""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import birnn_ext
from helpers import Case, check_parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (batch, hidden, input, steps): partial panels and a single row; then K = input > 512
# (projection K-blocks of 384), G*H > 256 columns (several N-blocks) and T*B > 512 (K-blocks
# of the weight gradients); then 17 rows (two full row tiles and one of 1).
SHAPES = [(1, 37, 23, 5), (13, 200, 600, 40), (17, 24, 16, 3)]


def run_float32_against_float64(cell, batch, hidden, input_size, steps, seed=0,
                                bidirectional=True):
    """Max abs error over outputs and every gradient of a packed layer in float32 against
    the same layer in float64, each relative to that tensor's max."""
    torch.manual_seed(seed)
    cls = {"lstm": birnn_ext.LSTM, "gru": birnn_ext.GRU, "rnn": birnn_ext.RNN}[cell]
    ref_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    ref = ref_cls(input_size, hidden, bidirectional=bidirectional, dtype=torch.float64)
    ours = cls(input_size, hidden, bidirectional=bidirectional, dtype=torch.float32)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    lengths = torch.randint(1, steps + 1, (batch,))
    lengths[0] = steps
    results = []
    for model, dtype in ((ref, torch.float64), (ours, torch.float32)):
        xi = x.to(dtype).detach().clone().requires_grad_()
        out, _ = model(pack_padded_sequence(xi, lengths, enforce_sorted=False))
        gen = torch.Generator().manual_seed(1)
        (out.data * torch.randn(out.data.shape, generator=gen).to(dtype)).sum().backward()
        tensors = [out.data, xi.grad] + [p.grad for p in model.parameters()]
        results.append([t.double() for t in tensors])
    return max(((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
               for e, a in zip(*results))


@pytest.mark.parametrize("engine", ["own", "aten"])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-H{}-I{}-T{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float32_gemm_block_edges(cell, shape, engine, monkeypatch):
    """Both engines of the backward's dx and weight gradients (BIRNN_EXT_CPU_BACKWARD_GEMMS):
    the driver's own GEMMs, and ATen's after the recurrence."""
    monkeypatch.setenv("BIRNN_EXT_CPU_BACKWARD_GEMMS", engine)
    assert run_float32_against_float64(cell, *shape) < 1e-5


def _compiled():
    if birnn_ext.get_backend() == "python":
        pytest.skip("the Python reference has no CPU GEMM choice")
    from birnn_ext import _backend
    return _backend.compiled_module()


def test_backward_gemm_choice(monkeypatch):
    """auto takes ATen's GEMMs (MKL) only on an Intel CPU, from T*B = 256 rows (where it
    measured faster, benchmarks/NOTES.md); own and aten force either; the benchmark records'
    kernel path says which a training row ran."""
    module = _compiled()
    monkeypatch.delenv("BIRNN_EXT_CPU_BACKWARD_GEMMS", raising=False)
    with open("/proc/cpuinfo") as f:
        intel = "GenuineIntel" in f.read()
    mkl_fast = intel and torch.backends.mkl.is_available()
    assert module.cpu_backward_gemms(255) == "own"
    assert module.cpu_backward_gemms(256) == ("aten" if mkl_fast else "own")
    large = birnn_ext.kernel_path("cpu", T=100, B=64, training=True)
    simd = module.cpu_simd()  # the scalar path runs ATen's GEMMs whatever the switch says
    assert large == f"cpu-{simd}" + ("+aten-bwd" if mkl_fast and simd != "scalar" else "")
    assert birnn_ext.kernel_path("cpu", T=100, B=64) == f"cpu-{module.cpu_simd()}"
    assert birnn_ext.kernel_path("cpu", T=100, B=64, training=True,
                                 dtype=torch.float64) == f"cpu-{module.cpu_simd()}"
    for engine in ("own", "aten"):
        monkeypatch.setenv("BIRNN_EXT_CPU_BACKWARD_GEMMS", engine)
        assert module.cpu_backward_gemms(1) == module.cpu_backward_gemms(1 << 30) == engine


def test_bad_backward_gemms_value(monkeypatch):
    """A bad BIRNN_EXT_CPU_BACKWARD_GEMMS fails a float32 backward with a message naming the
    valid values (the forward, which does not read it, still runs)."""
    _compiled()
    if birnn_ext.kernel_path("cpu") == "cpu-scalar":
        pytest.skip("the scalar path always runs ATen's GEMMs and never reads the switch")
    monkeypatch.setenv("BIRNN_EXT_CPU_BACKWARD_GEMMS", "mkl")
    layer = birnn_ext.LSTM(3, 8, bidirectional=True)
    out, _ = layer(torch.randn(4, 2, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="BIRNN_EXT_CPU_BACKWARD_GEMMS=mkl is not one of"):
        out.sum().backward()


# A direction's units in 1, 2 or 3 slices (step_team.h). 50 units are 4 vectors of 16, so the
# slices are uneven and the last one ends in a partial vector.
SLICES = ["1", "2", "3"]


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "uni"])
@pytest.mark.parametrize("slices", SLICES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_split_directions(cell, slices, bidirectional, monkeypatch):
    """Every schedule of the recurrence gives the float64 answer: a direction split over
    several threads (with the barrier per step and the double-buffered h), or not."""
    monkeypatch.setenv("BIRNN_EXT_CPU_SLICES", slices)
    assert run_float32_against_float64(cell, 5, 50, 20, 9, bidirectional=bidirectional) < 1e-5


@pytest.mark.parametrize("slices", SLICES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_split_directions_float64_exact(cell, slices, monkeypatch):
    """In float64 the split schedule is torch.nn to rounding: outputs, states and gradients
    with padded sequences, h0 and c0."""
    monkeypatch.setenv("BIRNN_EXT_CPU_SLICES", slices)
    case = Case(cell=cell, mode="packed", bidirectional=True, h0=True, hidden_size=50)
    check_parity(case)


def test_bad_slices_value(monkeypatch):
    monkeypatch.setenv("BIRNN_EXT_CPU_SLICES", "many")
    with pytest.raises(RuntimeError, match="BIRNN_EXT_CPU_SLICES"):
        birnn_ext.GRU(3, 40)(torch.randn(2, 1, 3))


@pytest.mark.parametrize("simd", ["avx2", "0"])
def test_other_cpu_paths(simd):
    """The paths this machine does not take by default: their float32 results are as good,
    with a direction in one slice or in two."""
    script = (
        "import os, sys; sys.path.insert(0, 'tests'); import test_cpu_kernels as t, birnn_ext;"
        "print(birnn_ext.kernel_path('cpu'));"
        "print(max(t.run_float32_against_float64(c, *s) for c in ('lstm', 'gru') "
        "for s in t.SHAPES[:2] + [(5, 50, 20, 9)]))")
    env = dict(os.environ, BIRNN_EXT_CPU_SIMD=simd, BIRNN_EXT_CPU_SLICES="2")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    path, error = done.stdout.split()
    assert path == ("cpu-avx2" if simd == "avx2" else "cpu-scalar") or \
        birnn_ext.get_backend() == "python"
    assert float(error) < 1e-5
