"""Runs the CUDA recurrence driver WITHOUT a GPU and compares it with the CPU driver.

csrc/cuda/'s shared part (common.cuh, common.cu, cell_unit.cuh), standard path (standard.cu)
and dispatch (dispatch.h, dispatch.cpp) are joined into one plain C++ file (their CUDA and
cuBLAS headers swapped for cuda_mock.h, the one `kernel<<<grid, block, 0, stream>>>(args)` in
launch_1d for a loop over the grid's threads in shuffled order, cuBLAS for a reference
column-major GEMM with cuBLAS's argument checks, mixed output types included) and built with
harness.cpp, csrc/layer.cpp and csrc/cpu/ into a throwaway library. Then both drivers run on
the same inputs for every cell, direction count, projection, bias, lengths pattern (none,
full, mixed, a zero length, all shorter than T, all zero), training flag and dtype. float64
and float32 must agree with the CPU driver; float16/bfloat16, whose CUDA driver carries its
state in float32, must be no further from a float64 run than 1.5x the CPU driver's error.

What this checks: the index arithmetic, the GEMMs' shapes, leading dimensions and types, the
lengths handling (padding zeroed, state carried, reverse starts per sequence, steps past the
longest sequence zeroed and never visited), the float32 carries, that every output element is
written (outputs start as NaN), that no thread reads another thread's result, and the
fork/join event count. What it cannot check: real concurrency between streams, cuBLAS itself,
device compilation, CUDA graph capture.

    .venv/bin/python scripts/cuda_emulation/emulate.py      # CPU torch is enough (~4 min)
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
    """csrc/cuda/'s shared part, standard path and dispatch amalgamated into one C++ file for
    the mock: (text, number of rewritten launches)."""
    cuda = os.path.join(CSRC, "cuda")

    def read(name):
        with open(os.path.join(cuda, name)) as f:
            return f.read()
    parts = [read(n) for n in ("common.cuh", "cell_unit.cuh", "dispatch.h", "common.cu",
                                "standard.cu", "dispatch.cpp")]
    src = "\n".join(parts)
    src = src.replace("#pragma once\n", "")
    src, n_inc = re.subn(r'#include <(ATen/cuda|c10/cuda)/[^>]+>\n', "", src)
    src = src.replace("#include <torch/library.h>\n", "")
    for local in ("common.cuh", "cell_unit.cuh", "dispatch.h", "../register.h"):
        src = src.replace(f'#include "{local}"\n', "")
    src = src.replace('"../birnn.h"', '"birnn.h"').replace('"../cells.h"', '"cells.h"')
    src = src.replace("at::Device(at::kCUDA, device)", "at::Device(at::kCPU)")
    src, n_launch = re.subn(r"(\w+)<<<(.+?)>>>\((.*?)\);", r"mock_launch(\1, \2, \3);", src)
    cut = src.index("TORCH_LIBRARY_IMPL(birnn_ext, CUDA")
    assert n_inc > 0 and n_launch > 0
    return '#include "cuda_mock.h"\n' + src[:cut], n_launch


def build():
    src, n_launch = emulated_source()
    # BIRNN_EMULATION_BUILD names a folder to reuse between runs (ninja rebuilds what changed).
    folder = os.environ.get("BIRNN_EMULATION_BUILD") or tempfile.mkdtemp(prefix="birnn-emul-")
    os.makedirs(folder, exist_ok=True)
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
    short = [max(0, T - 2 - (b % 3)) for b in range(B)]  # every sequence shorter than T
    return {"none": None, "full": full, "mixed": mixed, "with_zero": with_zero, "short": short,
            "all_zero": [0] * B}


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
                            if lname in ("mixed", "short") and bias:
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
    assert pool_draws[0] == 2, f"{pool_draws[0]} streams drawn from the pool, expected 2"
    print(f"OK: {n} cases agree; worst relative error per dtype: "
          + ", ".join(f"{str(k).replace('torch.', '')} {v:.2g}" for k, v in worst.items()))
    better = sum(1 for a, b, _ in ratios if a <= b)
    print(f"float16/bfloat16 against float64: the emulated CUDA driver's error <= the CPU "
          f"driver's in {better}/{len(ratios)} comparisons; worst CUDA "
          f"{max(r[0] for r in ratios):.3g}, worst CPU {max(r[1] for r in ratios):.3g}")
    print(f"total {time.time() - t0:.0f}s")
    return 0


pool_draws = [0]  # streams taken from the pool over the whole run


def cast_case(case, dtype):
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in case.items()}


ratios = []


def check_case(ops, cell, case, dtype, D):
    worst = 0.0
    names = ["output", "h_n", "c_n", "reserve"]
    low = dtype in (torch.float16, torch.bfloat16)
    truth_case = cast_case(case, torch.float64) if low else None
    for training in (False, True):
        ref = run_forward(ops, cell, case, False, training)
        ops.counters()
        got = run_forward(ops, cell, case, True, training)
        gemms, records, blocks, pool = ops.counters()
        # One fork record + a join record per direction; the two pooled streams are drawn
        # once per thread (by the first call), not per call; no step at all, no fork.
        runs = case["lengths"] is None or int(case["lengths"].max()) > 0
        forks = ((3, 4) if D == 2 else (2, 2)) if runs else (0, 0)
        assert (records, blocks) == forks and pool <= 2, \
            f"events/streams: {records} records, {blocks} waits, {pool} pool streams"
        pool_draws[0] += pool
        if low:
            truth = run_forward(ops, cell, truth_case, False, training)
        for i, (name, r, g) in enumerate(zip(names, ref, got)):
            if low:
                worst = max(worst, compare_truth(f"forward {name} (training={training})", r, g,
                                                 truth[i]))
            else:
                worst = max(worst, compare(f"forward {name} (training={training})", r, g, dtype))
    output, reserve = ref[0], ref[3]
    ref_b = run_backward(ops, cell, case, False, output, reserve)
    got_b = run_backward(ops, cell, case, True, output, reserve)
    if low:
        truth_b = run_backward(ops, cell, truth_case, False, output.double(), reserve.double())
    grad_names = ["dh0", "dc0", "dgates_x", "dgates_h", "dh_total"]
    for i, (name, r, g) in enumerate(zip(grad_names, ref_b, got_b)):
        if low:
            worst = max(worst, compare_truth(f"backward {name}", r, g, truth_b[i]))
        else:
            worst = max(worst, compare(f"backward {name}", r, g, dtype))
    return worst


def compare_truth(name, ref, got, truth):
    """Reduced precision: the emulated CUDA driver's error against a float64 run may be at
    most 1.5x the CPU driver's, plus a floor of 2 ulps of bfloat16 at the truth's scale."""
    assert ref.shape == got.shape == truth.shape, name
    if ref.numel() == 0:
        return 0.0
    assert not torch.isnan(got).any(), f"{name}: NaN"
    scale = truth.abs().max().clamp_min(1.0).item()
    e_cpu = (ref.double() - truth).abs().max().item() / scale
    e_cuda = (got.double() - truth).abs().max().item() / scale
    ratios.append((e_cuda, e_cpu, name))
    assert e_cuda <= 1.5 * e_cpu + 2 * 2**-8, \
        f"{name}: emulated CUDA error {e_cuda:.3g} > 1.5 x the CPU driver's {e_cpu:.3g}"
    return e_cuda


if __name__ == "__main__":
    sys.exit(main())
