"""The persistent kernels without a GPU: csrc/cuda/persistent_kernels.h, compiled from its own
source as plain C++, runs every emulated GPU thread as a fiber with real block barriers and
real cross-block waits (tests/persistent_emulation/emulation.h), through the same parameter
wiring as the CUDA launchers (csrc/cuda/persistent_params.h). Its results must equal
birnn_ext's CPU ops (float64) on the same inputs: outputs, h_n, c_n and the reserve forward;
dgates (through dx, dW_ih, db_ih, db_hh), dh0 and dc0 backward.

What this catches: index arithmetic, the lengths rules, the division of units among blocks and
of the batch into chunks, the reserve layout, a missing barrier (the fibers run in a shuffled
order), a deadlock in the step protocol (the emulation fails instead of hanging), an
unwritten output (outputs start as NaN). What it cannot: the memory model, timing, the
device compiler."""

import os

import pytest
import torch

import birnn_ext
from birnn_ext import _backend, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "persistent_emulation", "harness.cpp")
GATES = ops.GATES
# Values per row of the compiled ops' reserve, in units of H (csrc/cells.h's registry).
RESERVE = {c["name"]: c["reserve"] for c in _backend.build_info().get("cells", [])}
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}  # ||err|| / ||ref||


@pytest.fixture(scope="module")
def emu():
    """The harness built from the kernels' own source: a build error is a failure (it is the
    persistent kernels' code that did not compile), not a reason to skip."""
    from torch.utils.cpp_extension import load

    if not os.path.isdir(os.path.join(ROOT, "csrc")):
        pytest.skip("needs the source checkout's csrc/ (CI's CUDA lane copies tests only)")
    return load(name="birnn_persistent_emulation", sources=[HARNESS],
                extra_include_paths=[os.path.join(ROOT, "csrc")],
                extra_cflags=["-O1", "-fno-strict-aliasing"], verbose=False)


@pytest.fixture(scope="module")
def cpu_ops():
    if birnn_ext.set_backend("cpp") != "cpp":
        pytest.skip("needs birnn_ext's compiled CPU ops as the oracle")
    return torch.ops.birnn_ext


def _layer(cell, dirs, steps, batch, hidden, inputs, lengths, bias, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5

    gh = GATES[cell] * hidden
    return dict(
        x=rand(steps, batch, inputs),
        lengths=torch.tensor(lengths, dtype=torch.int64) if lengths is not None else None,
        hx=rand(dirs, batch, hidden), cx=rand(dirs, batch, hidden) if cell == "lstm" else None,
        w_ih=rand(dirs, gh, inputs), w_hh=rand(dirs, gh, hidden),
        b_ih=rand(dirs, gh) if bias else None, b_hh=rand(dirs, gh) if bias else None,
        grad_output=rand(steps, batch, dirs * hidden), grad_h_n=rand(dirs, batch, hidden),
        grad_c_n=rand(dirs, batch, hidden) if cell == "lstm" else None)


def _rel(actual, expected):
    assert torch.isfinite(actual).all(), "non-finite values (unwritten output?)"
    expected = expected.to(torch.float64)
    return ((actual.to(torch.float64) - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def _nan(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


# (cell, dtype, dirs, steps, batch, hidden, lengths, bias, blocks, smem): blocks per direction
# and the shared memory per block the plan may use. smem 32768 forces several batch chunks.
CASES = []
for _cell in GATES:
    CASES += [(_cell, torch.float32, 2, 5, 3, 6, (5, 1, 3), True, 2, 232448),
              (_cell, torch.float32, 2, 4, 4, 10, (0, 4, 2, 1), True, 4, 232448),
              (_cell, torch.bfloat16, 2, 4, 3, 8, None, True, 3, 232448)]
for _cell in ("lstm", "gru"):
    CASES += [(_cell, torch.float32, 1, 6, 2, 5, (6, 3), False, 1, 232448),
              (_cell, torch.float32, 2, 4, 100, 64, None, True, 4, 32768),
              (_cell, torch.float16, 2, 3, 37, 64, (3, 2) * 18 + (1,), True, 4, 32768)]
CASE_IDS = [f"{c}-{str(dt)[6:]}-D{d}-T{t}-B{b}-H{h}-{'len' if ln else 'full'}-"
            f"{'bias' if bias else 'nobias'}-blocks{nb}-smem{sm}"
            for c, dt, d, t, b, h, ln, bias, nb, sm in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_emulated_kernels_match_cpu_ops(emu, cpu_ops, case):
    cell, dtype, dirs, steps, batch, hidden, lengths, bias, blocks, smem = case
    inputs = 3
    L = _layer(cell, dirs, steps, batch, hidden, inputs, lengths, bias, seed=len(CASE_IDS))
    gh = GATES[cell] * hidden
    fwd = getattr(cpu_ops, f"{cell}_forward")
    bwd = getattr(cpu_ops, f"{cell}_backward")
    out, h_n, c_n, reserve = fwd(L["x"], L["lengths"], L["hx"], L["cx"], L["w_ih"], L["w_hh"],
                                 L["b_ih"], L["b_hh"], None, True)
    grads = bwd(L["grad_output"], L["grad_h_n"], L["grad_c_n"], L["x"], L["lengths"], L["hx"],
                L["cx"], L["w_ih"], L["w_hh"], L["b_ih"], L["b_hh"], None, out, reserve)
    grad_input, grad_hx, grad_cx, grad_w_ih, _, grad_b_ih, grad_b_hh, _ = grads

    def cast(t):
        return t.to(dtype).contiguous() if t is not None else None

    # Forward, training and inference: gates_x as the op computes it, in the storage dtype.
    gates_x = torch.einsum("tbi,dgi->tbdg", L["x"], L["w_ih"])
    if bias:
        gates_x = gates_x + L["b_ih"]
    for training in (True, False):
        output = _nan(steps, batch, dirs, hidden, dtype=dtype)
        h, c = cast(L["hx"]).clone(), cast(L["cx"]).clone() if cell == "lstm" else None
        res = _nan(steps, batch, dirs, RESERVE[cell] * hidden, dtype=dtype) if training else None
        emu.forward(cell, cast(gates_x), cast(L["w_hh"]), cast(L["b_hh"]), L["lengths"], h, c,
                    output, res, blocks, smem, 7)
        tol = TOL[dtype]
        assert _rel(output.view(steps, batch, -1), out) <= tol, "output"
        assert _rel(h, h_n) <= tol, "h_n"
        if cell == "lstm":
            assert _rel(c, c_n) <= tol, "c_n"
        if training and RESERVE[cell]:
            assert _rel(res, reserve) <= tol, "reserve"

    # Backward, from the oracle's forward results.
    dgates_x = _nan(steps, batch, dirs, gh, dtype=dtype)
    dgates_h = _nan(steps, batch, dirs, gh, dtype=dtype) if cell == "gru" else dgates_x
    dh = cast(L["grad_h_n"]).clone()
    dc = cast(L["grad_c_n"]).clone() if cell == "lstm" else None
    emu.backward(cell, cast(L["grad_output"]).view(steps, batch, dirs, hidden), L["lengths"],
                 cast(L["w_hh"]), cast(out).view(steps, batch, dirs, hidden), cast(L["hx"]),
                 cast(L["cx"]), cast(reserve), dh, dc, dgates_x, dgates_h, blocks, smem, 11)
    dgx, dgh = dgates_x.to(torch.float64), dgates_h.to(torch.float64)
    tol = TOL[dtype]
    assert _rel(torch.einsum("tbdg,dgi->tbi", dgx, L["w_ih"]), grad_input) <= tol, "grad_input"
    assert _rel(torch.einsum("tbdg,tbi->dgi", dgx, L["x"]), grad_w_ih) <= tol, "grad_w_ih"
    if bias:
        assert _rel(dgx.sum((0, 1)), grad_b_ih) <= tol, "grad_b_ih"
        assert _rel(dgh.sum((0, 1)), grad_b_hh) <= tol, "grad_b_hh"
    assert _rel(dh, grad_hx) <= tol, "grad_hx"
    if cell == "lstm":
        assert _rel(dc, grad_cx) <= tol, "grad_cx"
