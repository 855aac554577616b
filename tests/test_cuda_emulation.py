"""The CUDA standard path without a GPU, compared with the CPU ops.

csrc/cuda/'s common.cu, standard.cu and lengths.cu, their own source, are compiled as plain C++
against the installed torch under BIRNN_CUDA_EMULATION (tests/cuda_emulation/cuda_mock.h:
every kernel runs thread by thread in a shuffled order, cuBLAS is a reference GEMM that
enforces cuBLAS's argument rules). tests/cuda_emulation/harness.cpp runs them behind
csrc/layer.h's op bodies as a CUDA build does (the same checks, input projection and
weight-gradient GEMMs), and each case hands the emulated ops and birnn_ext's CPU ops the same
arguments, forward (training and inference) and backward.

float64 and float32 must equal the CPU ops within tolerance. float16/bfloat16, whose CUDA path
carries its state in float32, must be no further from a float64 run than 1.5x the CPU ops'
error. Every buffer the driver writes starts as NaN (BIRNN_EXT_POISON, tests/conftest.py), so
an element it never writes comes out non-finite, in the backward through the weight
gradients, which consume every element of dgates and dh_total.

What this catches: index arithmetic; the GEMMs' shapes, leading dimensions and types; the
lengths rules (padding zeroed, state carried through it, the reverse direction starting at
each sequence's own end, steps past the longest sequence never visited: the GEMM count); the
float32 carries; a thread that reads another thread's result in the same launch; lengths
copied to the device in several chunks; the fork/join protocol (its event count, no work on
a direction stream outside it, two pool streams per thread, a cuBLAS workspace set after the
stream); the refusal of a first call during graph capture. What it cannot: concurrency between
streams (emulated streams finish each call before it returns), cuBLAS itself, the device
compiler, real graph capture, and dispatch.cpp's choice of path (the harness runs the standard
path directly).

By default a covering set of cases runs (_cases: every cell, LSTM with proj_size too, with
both direction counts and every lengths pattern, and every pair of factors with every dtype,
bias and shape). BIRNN_EXT_EMULATION_FULL=1 runs the full product (about 20 times as many).
"""

import itertools
import math
import os
import shutil
import threading

import pytest
import torch

from helpers import CELLS, GATES, covering

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "tests", "cuda_emulation")
# The harness, csrc/cuda/'s three sources (each included by a *_cu.cpp after the mock), and
# what the op bodies need besides (layer.cpp's driver buffers ask memory.cpp for huge pages).
SOURCES = [os.path.join(HERE, name) for name in
           ("harness.cpp", "common_cu.cpp", "standard_cu.cpp", "lengths_cu.cpp")]
SOURCES += [os.path.join(ROOT, "csrc", path) for path in ("layer.cpp", "cpu/memory.cpp")]

# Relative max error against the CPU ops.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
FORWARD = ("output", "h_n", "c_n", "reserve")
BACKWARD = ("grad_input", "grad_hx", "grad_cx", "grad_w_ih", "grad_w_hh", "grad_b_ih",
            "grad_b_hh", "grad_w_hr")

VARIANTS = [(cell, 0) for cell in CELLS] + [("lstm", 2)]  # (cell, proj_size)
# (T, B, H). B * H = 333 > 256 threads: a launch of two blocks; B = 450: the lengths reach the
# device in two launches (csrc/cuda/lengths.cu passes at most 448 per launch).
SHAPES = [(5, 4, 3), (7, 9, 37), (3, 450, 2)]
INPUT_SIZE = 3
PATTERNS = ("none", "full", "mixed", "with_zero", "short", "all_zero")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def lengths_pattern(name, T, B):
    """None (every sequence is T long) or a list of B lengths."""
    mixed = [T if b % 3 == 0 else T - 1 - (3 * b) % T for b in range(B)]  # T and below
    patterns = {
        "none": None,
        "full": [T] * B,
        "mixed": mixed,
        "with_zero": mixed[:1] + [0] + mixed[2:],
        "short": [max(0, T - 2 - b % 3) for b in range(B)],  # every sequence shorter than T
        "all_zero": [0] * B,
    }
    return patterns[name]


def _cases():
    """Every (cell variant, direction count, lengths pattern), the index arithmetic's own
    axes, each with the dtype, bias and shape chosen so that every pair of values of any two
    factors appears. all_zero runs no step at all, so it gets rows of its own: a pair covered
    only there would go untested."""
    key = {"variant": VARIANTS, "directions": (1, 2)}
    others = {"dtype": DTYPES, "bias": (True, False), "shape": SHAPES}
    if os.environ.get("BIRNN_EXT_EMULATION_FULL") == "1":
        factors = key | {"lengths": PATTERNS} | others
        rows = [dict(zip(factors, combo)) for combo in itertools.product(*factors.values())]
    else:
        running = tuple(p for p in PATTERNS if p != "all_zero")
        rows = (covering(key | {"lengths": running}, others)
                + covering(key | {"lengths": ("all_zero",)}, others))
    return [(r["variant"][0], r["variant"][1], r["directions"], r["shape"], r["bias"],
             r["lengths"], r["dtype"]) for r in rows]


CASES = _cases()
CASE_IDS = [f"{cell}{'-proj' if proj else ''}-D{d}-T{t}B{b}H{h}-{'bias' if bias else 'nobias'}"
            f"-len_{lengths}-{str(dtype).replace('torch.', '')}"
            for cell, proj, d, (t, b, h), bias, lengths, dtype in CASES]


@pytest.fixture(scope="module")
def emu():
    """torch.ops.birnn_cuda_emulation, built in the checkout's build/cuda_emulation (ninja
    recompiles only what changed; one folder per checkout, so checkouts that share a machine
    never build into, or load from, each other's)."""
    from torch.utils.cpp_extension import is_ninja_available, load

    if not all(os.path.isfile(p) for p in SOURCES):
        # .ci/cuda_lane.sh runs a copy of tests/ against an installed wheel, without csrc/.
        pytest.skip("csrc/ is not next to tests/: no CUDA sources to emulate")
    if not is_ninja_available() or shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("needs a C++ compiler and ninja")
    # A compile error fails here, as it should: it means the emulation hooks broke.
    folder = os.path.join(ROOT, "build", "cuda_emulation")
    os.makedirs(folder, exist_ok=True)
    load(name="birnn_cuda_emulation", sources=SOURCES, extra_cflags=["-O1"],
         build_directory=folder, is_python_module=False, verbose=False)
    return torch.ops.birnn_cuda_emulation


@pytest.fixture(scope="module")
def cpu_ops():
    import birnn_ext

    if birnn_ext.set_backend("cpp") != "cpp":
        pytest.skip("needs birnn_ext's compiled CPU ops as the oracle")
    return torch.ops.birnn_ext


_pool_streams = [0]  # streams the emulated driver drew from the pool in this process


def take_counters(emu):
    """(GEMMs, event records, event waits) since the last call. Every emulated call runs on
    this thread, which draws its two direction streams from the pool once, ever."""
    gemms, records, blocks, pool = emu.take_counters()
    _pool_streams[0] += pool
    assert _pool_streams[0] <= 2, f"{_pool_streams[0]} pool streams drawn by one thread"
    return gemms, records, blocks


def check_issued(emu, directions, proj, max_length):
    """What one emulated forward or backward call issued: per step and direction one
    recurrent GEMM, and one more with a projection; steps past max_length none; the
    direction streams forked (one record, a wait per direction) and joined (a record and a
    wait per direction), unless no step runs at all."""
    gemms, records, blocks = take_counters(emu)
    assert gemms == directions * max_length * (2 if proj else 1), f"{gemms} GEMMs"
    forked = (1 + directions, 2 * directions) if max_length > 0 else (0, 0)
    assert (records, blocks) == forked, f"{records} event records, {blocks} waits"


def layer_arguments(cell, proj, directions, T, B, H, bias, lengths, gen):
    """The op arguments in float64, weights scaled as torch.nn initialises them (so a relu
    RNN stays finite in float16): (forward args without `training`, backward extras)."""
    G, Hout, D = GATES[cell], proj or H, directions

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    lstm = cell == "lstm"
    forward = dict(
        input=rand(T, B, INPUT_SIZE),
        lengths=None if lengths is None else torch.tensor(lengths, dtype=torch.int64),
        hx=rand(D, B, Hout, scale=0.5), cx=rand(D, B, H, scale=0.5) if lstm else None,
        w_ih=rand(D, G * H, INPUT_SIZE, scale=INPUT_SIZE ** -0.5),
        w_hh=rand(D, G * H, Hout, scale=Hout ** -0.5),
        b_ih=rand(D, G * H, scale=0.5) if bias else None,
        b_hh=rand(D, G * H, scale=0.5) if bias else None,
        w_hr=rand(D, Hout, H, scale=H ** -0.5) if proj else None)
    grads = dict(grad_output=rand(T, B, D * Hout), grad_h_n=rand(D, B, Hout),
                 grad_c_n=rand(D, B, H) if lstm else None)
    return forward, grads


def cast(arguments, dtype):
    return {k: v.to(dtype) if v is not None and v.is_floating_point() else v
            for k, v in arguments.items()}


def call_forward(ops, cell, args, training):
    a = args
    return getattr(ops, f"{cell}_forward")(a["input"], a["lengths"], a["hx"], a["cx"], a["w_ih"],
                                           a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], training)


def call_backward(ops, cell, args, grads, output, reserve):
    a, g = args, grads
    return getattr(ops, f"{cell}_backward")(g["grad_output"], g["grad_h_n"], g["grad_c_n"],
                                            a["input"], a["lengths"], a["hx"], a["cx"],
                                            a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                            a["w_hr"], output, reserve)


def compare(name, ref, got):
    """float64/float32: got within TOL of the CPU ops' ref, relative to ref's largest value."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, name
    if ref.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element never written?)"
    err = ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1.0))
    assert err.item() <= TOL[ref.dtype], f"{name}: relative error {err.item():.3g}"


def compare_to_truth(name, ref, got, truth):
    """float16/bfloat16: got's error against a float64 run at most 1.5x the CPU ops', plus
    two bfloat16 ulps at the truth's scale (both may round an exact value the same way)."""
    assert got.shape == ref.shape == truth.shape and got.dtype == ref.dtype, name
    if ref.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{name}: non-finite values (an element never written?)"
    scale = truth.abs().max().clamp_min(1.0).item()
    err_cpu = (ref.double() - truth).abs().max().item() / scale
    err_emu = (got.double() - truth).abs().max().item() / scale
    assert err_emu <= 1.5 * err_cpu + 2 * 2 ** -8, \
        f"{name}: emulated CUDA error {err_emu:.3g} > 1.5 x the CPU ops' {err_cpu:.3g}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_standard_path_matches_cpu_ops(emu, cpu_ops, case):
    cell, proj, directions, (T, B, H), bias, pattern, dtype = case
    lengths = lengths_pattern(pattern, T, B)
    max_length = T if lengths is None else max(lengths)
    gen = torch.Generator().manual_seed(0)
    args64, grads64 = layer_arguments(cell, proj, directions, T, B, H, bias, lengths, gen)
    args, grads = cast(args64, dtype), cast(grads64, dtype)
    low = dtype in (torch.float16, torch.bfloat16)
    # Reduced precision: the float64 truth sees exactly the values the two runs see.
    args_truth, grads_truth = cast(args, torch.float64), cast(grads, torch.float64)
    take_counters(emu)

    for training in (False, True):
        ref = call_forward(cpu_ops, cell, args, training)
        got = call_forward(emu, cell, args, training)
        check_issued(emu, directions, proj, max_length)
        truth = call_forward(cpu_ops, cell, args_truth, training) if low else None
        for i, name in enumerate(FORWARD):
            label = f"forward {name} (training={training})"
            if low:
                compare_to_truth(label, ref[i], got[i], truth[i])
            else:
                compare(label, ref[i], got[i])

    # Backward, all three from the CPU ops' forward state.
    output, reserve = ref[0], ref[3]
    ref = call_backward(cpu_ops, cell, args, grads, output, reserve)
    got = call_backward(emu, cell, args, grads, output, reserve)
    check_issued(emu, directions, proj, max_length)
    if low:
        truth = call_backward(cpu_ops, cell, args_truth, grads_truth, output.double(),
                              reserve.double())
    for i, name in enumerate(BACKWARD):
        if low:
            compare_to_truth(f"backward {name}", ref[i], got[i], truth[i])
        else:
            compare(f"backward {name}", ref[i], got[i])


def test_first_call_on_a_thread_during_capture_is_refused(emu):
    """A thread's first call creates its streams, handles and workspaces, which graph capture
    forbids: during capture it must raise before touching any stream. A warmed-up thread
    runs."""
    gen = torch.Generator().manual_seed(1)
    args, _ = layer_arguments("gru", 0, 2, 3, 2, 4, True, [3, 1], gen)
    call_forward(emu, "gru", args, False)  # this thread warmed up
    take_counters(emu)
    errors = []

    def first_call():
        try:
            call_forward(emu, "gru", args, False)
        except RuntimeError as exc:
            errors.append(str(exc))

    emu.set_capturing(True)
    try:
        thread = threading.Thread(target=first_call)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "during CUDA graph capture" in errors[0], errors
        assert emu.take_counters() == [0, 0, 0, 0], "the refused call touched a stream"
        call_forward(emu, "gru", args, False)
        check_issued(emu, 2, 0, 3)
    finally:
        emu.set_capturing(False)
