"""Runs the CUDA recurrence driver WITHOUT a GPU and compares it with the CPU driver.

csrc/cuda/recurrence_cuda.cu is rewritten into plain C++ (its CUDA and cuBLAS headers swapped
for cuda_mock.h, each `kernel<<<grid, block, 0, stream>>>(args)` for a loop over the grid's
threads in shuffled order, cuBLAS for a reference column-major GEMM with cuBLAS's argument
checks) and built with harness.cpp, csrc/layer.cpp and csrc/cpu/ into a throwaway library.
Then both drivers run on the same inputs for every cell, direction count, projection, bias,
lengths pattern, training flag and dtype, and every output must agree.

What this checks: the index arithmetic, the GEMMs' shapes and leading dimensions, the lengths
handling (padding zeroed, state carried, reverse starts per sequence, no skipped steps), that
every output element is written (outputs start as NaN) and that no thread reads another
thread's result. What it cannot check: real concurrency between streams, cuBLAS itself,
device compilation, CUDA graph capture.

    /work/venv/bin/python scripts/cuda_emulation/emulate.py      # CPU torch is enough
"""

import glob
import os
import re
import sys
import tempfile
import time

import torch
from torch.utils.cpp_extension import load

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")

CELLS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3}
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def emulated_source():
    """recurrence_cuda.cu as C++ for the mock: (text, number of rewritten launches)."""
    with open(os.path.join(CSRC, "cuda", "recurrence_cuda.cu")) as f:
        src = f.read()
    src, n_inc = re.subn(r'#include <(ATen/cuda|c10/cuda)/[^>]+>\n', "", src)
    src = src.replace("#include <torch/library.h>\n", '#include "cuda_mock.h"\n', 1)
    src = src.replace('"../birnn.h"', '"birnn.h"').replace('#include "../register.h"\n', "")
    src, n_launch = re.subn(r"(\w+)<<<(.+?)>>>\((.*?)\);", r"mock_launch(\1, \2, \3);", src)
    cut = src.index("TORCH_LIBRARY_IMPL(birnn_ext, CUDA")
    assert n_inc > 0 and '#include "cuda_mock.h"' in src and n_launch > 0
    return src[:cut], n_launch


def build():
    src, n_launch = emulated_source()
    folder = tempfile.mkdtemp(prefix="birnn-cuda-emulation-")
    path = os.path.join(folder, "recurrence_cuda_emulated.cpp")
    with open(path, "w") as f:
        f.write(src)
    print(f"rewrote {n_launch} kernel launch site(s) into {path}")
    sources = [path, os.path.join(HERE, "harness.cpp"), os.path.join(CSRC, "layer.cpp")]
    sources += sorted(glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    load(name="birnn_cuda_emulation", sources=sources, extra_include_paths=[CSRC, HERE],
         extra_cflags=["-O1", "-DWITH_CUDA"], build_directory=folder, is_python_module=False,
         verbose=False)
    return torch.ops.birnn_emul


def make_case(cell, D, T, B, H, proj, bias, lengths, dtype, gen):
    G = GATES[cell]
    Hout = proj or H

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    case = dict(
        gates_x=rnd(T, B, D, G * H),
        lengths=None if lengths is None else torch.tensor(lengths, dtype=torch.int64),
        w_hh=rnd(D, G * H, Hout, scale=0.5),
        b_hh=rnd(D, G * H) if bias else None,
        w_hr=rnd(D, Hout, H, scale=0.5) if proj else None,
        h0=rnd(D, B, Hout),
        c0=rnd(D, B, H) if cell == "lstm" else None,
        grad_output=rnd(T, B, D, Hout),
        dh_n=rnd(D, B, Hout),
        dc_n=rnd(D, B, H) if cell == "lstm" else None,
    )
    return case


def run_forward(ops, cell, case, emulated, training, capturing=False, lengths=None):
    c = case
    return ops.forward(CELLS[cell], emulated, capturing, c["gates_x"],
                       c["lengths"] if lengths is None else lengths, c["w_hh"], c["b_hh"],
                       c["w_hr"], c["h0"], c["c0"], training)


def run_backward(ops, cell, case, emulated, output, reserve):
    c = case
    return ops.backward(CELLS[cell], emulated, c["grad_output"], c["lengths"], c["w_hh"],
                        c["w_hr"], output, c["h0"], c["c0"], reserve, c["dh_n"], c["dc_n"])


def compare(name, ref, got, dtype):
    assert ref.shape == got.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return 0.0
    assert not torch.isnan(got).any(), f"{name}: NaN (an element the driver never wrote?)"
    assert not torch.isnan(ref).any(), f"{name}: NaN in the CPU driver's result"
    ref64, got64 = ref.double(), got.double()
    err = ((ref64 - got64).abs().max() / ref64.abs().max().clamp_min(1.0)).item()
    assert err <= TOL[dtype], f"{name}: relative error {err:.3g} > {TOL[dtype]}"
    return err


def lengths_patterns(T, B):
    full = [T] * B
    mixed = [(T - 1 - (3 * b) % T) if b % 3 else T for b in range(B)]  # includes T-1.. and T
    with_zero = list(mixed)
    with_zero[min(1, B - 1)] = 0
    return {"none": None, "full": full, "mixed": mixed, "with_zero": with_zero}


def main():
    t0 = time.time()
    ops = build()
    print(f"built in {time.time() - t0:.0f}s")
    gen = torch.Generator().manual_seed(0)
    n, worst = 0, {}
    shapes = [(5, 4, 3), (7, 9, 37)]  # (T, B, H); 9 * 37 > 256 threads: more than one block
    for cell in CELLS:
        for D in (1, 2):
            for T, B, H in shapes:
                projs = (0, 2) if cell == "lstm" else (0,)
                for proj in projs:
                    for bias in (True, False):
                        for lname, lengths in lengths_patterns(T, B).items():
                            dtypes = [torch.float64]
                            if lname == "mixed" and bias:
                                dtypes += [torch.float32, torch.float16, torch.bfloat16]
                            for dtype in dtypes:
                                case = make_case(cell, D, T, B, H, proj, bias, lengths, dtype,
                                                 gen)
                                tag = (f"{cell} D={D} T={T} B={B} H={H} proj={proj} "
                                       f"bias={bias} lengths={lname} {dtype}")
                                try:
                                    err = check_case(ops, cell, case, dtype, D)
                                except AssertionError as exc:
                                    print(f"FAIL {tag}: {exc}")
                                    return 1
                                worst[dtype] = max(worst.get(dtype, 0.0), err)
                                n += 1
    check_lengths_handling(ops, gen)
    assert pool_draws[0] == 2, f"{pool_draws[0]} streams drawn from the pool, expected 2"
    print(f"OK: {n} cases agree; worst relative error per dtype: "
          + ", ".join(f"{str(k).replace('torch.', '')} {v:.2g}" for k, v in worst.items()))
    print(f"total {time.time() - t0:.0f}s")
    return 0


pool_draws = [0]  # streams taken from the pool over the whole run


def check_case(ops, cell, case, dtype, D):
    worst = 0.0
    names = ["output", "h_n", "c_n", "reserve"]
    for training in (False, True):
        ref = run_forward(ops, cell, case, False, training)
        ops.counters()
        got = run_forward(ops, cell, case, True, training)
        gemms, records, blocks, pool = ops.counters()
        # One fork record + two join records; the two pooled streams are drawn once per
        # thread (by the first two-direction call), not per call.
        assert (records, blocks) == ((3, 4) if D == 2 else (0, 0)) and pool <= 2, \
            f"events/streams: {records} records, {blocks} waits, {pool} pool streams"
        pool_draws[0] += pool
        for name, r, g in zip(names, ref, got):
            worst = max(worst, compare(f"forward {name} (training={training})", r, g, dtype))
    output, reserve = ref[0], ref[3]
    ref_b = run_backward(ops, cell, case, False, output, reserve)
    got_b = run_backward(ops, cell, case, True, output, reserve)
    for name, r, g in zip(["dh0", "dc0", "dgates_x", "dgates_h", "dh_total"], ref_b, got_b):
        worst = max(worst, compare(f"backward {name}", r, g, dtype))
    return worst


def check_lengths_handling(ops, gen):
    """Bad lengths: an error outside capture; clamped into [0, T] under (mock) graph capture."""
    T, B, H = 5, 4, 3
    case = make_case("gru", 2, T, B, H, 0, True, [T, 2, 0, 1], torch.float64, gen)
    bad = torch.tensor([T + 3, 2, -2, 1], dtype=torch.int64)
    try:
        run_forward(ops, "gru", case, True, True, lengths=bad)
    except RuntimeError as exc:
        assert "lengths must lie in [0, T=5]" in str(exc), exc
    else:
        raise AssertionError("bad lengths passed the host check")
    clamped = run_forward(ops, "gru", case, True, True, capturing=True, lengths=bad)
    ref = run_forward(ops, "gru", case, False, True,
                      lengths=torch.tensor([T, 2, 0, 1], dtype=torch.int64))
    for name, r, g in zip(["output", "h_n", "c_n", "reserve"], ref, clamped):
        compare(f"clamped lengths {name}", r, g, torch.float64)
    print("OK: bad lengths raise outside capture and are clamped under capture")


if __name__ == "__main__":
    sys.exit(main())
