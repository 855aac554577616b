"""A small workload for compute-sanitizer (scripts/gpu_check.sh runs it under initcheck and
memcheck): every cell, bidirectional (both directions running concurrently on their two
streams) and unidirectional, forward and backward, float32/float64 and float16/bfloat16,
with lengths that include a zero, lengths all shorter than T (the steps past the longest are
never visited), lengths handed over on the CPU (the modules' way) and on the GPU (read back by
the op), more sequences than one kernel-parameter chunk of lengths holds, all issued from a
NON-default current stream, as a user's side stream would.

It imports the built extension by its path, so it depends on nothing of
birnn_ext's Python package, and it checks every CUDA result against the same op on the CPU:
a kernel that reads or writes out of bounds usually also computes something wrong.

    python scripts/sanitize_small.py [--device cuda|cpu] [--quick] [path/to/_C.so]
    compute-sanitizer --tool initcheck python scripts/sanitize_small.py

--device cpu runs the same workload with the CPU op on both sides (gpu_check.sh --dry-run: the
plumbing, on a machine without a GPU).
"""

import argparse
import contextlib
import glob
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = {}  # cell -> gate count, from the loaded module's registry (csrc/cells.h)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2,
             torch.bfloat16: 6e-2}


def load_ops(path=None):
    if path is None:
        found = sorted(glob.glob(os.path.join(ROOT, "birnn_ext", "_C*.so")))
        if not found:
            sys.exit("sanitize_small: no birnn_ext/_C*.so; build it first "
                     "(python setup.py build_ext --inplace)")
        path = found[0]
    # Imported as the extension module it is (which registers its ops), for build_info().
    spec = importlib.util.spec_from_file_location("_C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("loaded", path)
    GATES.update((c["name"], c["gates"]) for c in module.build_info()["cells"])
    return torch.ops.birnn_ext


def layer_inputs(cell, D, T, B, I, H, proj, lengths, gen):
    """The op's arguments on the CPU in float64: input [T, B, I], weights stacked over D."""
    G, Hout = GATES[cell], proj or H

    def rnd(*shape, scale=0.5):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    # Weights of torch.nn's scale (1/sqrt(H)), so that even a relu RNN stays bounded and the
    # float16/bfloat16 runs can be held to a tolerance.
    w = H ** -0.5
    return dict(input=rnd(T, B, I),
                lengths=None if lengths is None else torch.tensor(lengths, dtype=torch.int64),
                hx=rnd(D, B, Hout), cx=rnd(D, B, H) if cell == "lstm" else None,
                w_ih=rnd(D, G * H, I, scale=w), w_hh=rnd(D, G * H, Hout, scale=w),
                b_ih=rnd(D, G * H, scale=w), b_hh=rnd(D, G * H, scale=w),
                w_hr=rnd(D, Hout, H, scale=w) if proj else None)


def run_layer(ops, cell, a, grads):
    fwd = getattr(ops, f"{cell}_forward")
    bwd = getattr(ops, f"{cell}_backward")
    output, h_n, c_n, reserve = fwd(a["input"], a["lengths"], a["hx"], a["cx"], a["w_ih"],
                                    a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], True)
    grad_c_n = grads["grad_c_n"] if cell == "lstm" else None
    grad = bwd(grads["grad_output"], grads["grad_h_n"], grad_c_n, a["input"], a["lengths"],
               a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"], output,
               reserve)
    return [output, h_n, c_n, *grad]


def to(x, device, dtype, lengths_device):
    if isinstance(x, dict):
        return {k: (to(v, lengths_device, None, None) if k == "lengths"
                    else to(v, device, dtype, lengths_device)) for k, v in x.items()}
    if x is None:
        return None
    return x.to(device, dtype) if dtype is not None and x.is_floating_point() else x.to(device)


def lengths_of(kind, T, B):
    """mixed: a full, a zero and other lengths; short: every sequence shorter than T."""
    if kind == "mixed":
        return [T, 3, 0, 1] + [1 + (3 * b) % T for b in range(4, B)]
    return [T - 2, 1, T - 3, 2] + [1 + b % (T - 2) for b in range(4, B)]


def configurations(T, quick):
    """(cell, directions, proj, batch, lengths, dtype, where the lengths live). Small batches
    keep the sanitizers fast; one layer has more sequences than the 448 lengths one upload
    kernel carries (unless quick)."""
    yield "gru", 2, 0, 8 if quick else 454, lengths_of("mixed", T, 8 if quick else 454), \
        torch.float32, "cpu"
    for cell, proj in (("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)):
        for dtype in (torch.float32, torch.float64):
            yield cell, 2, proj, 8, lengths_of("mixed", T, 8), dtype, "cpu"
        yield cell, 1, proj, 8, lengths_of("short", T, 8), torch.float32, "cpu"
        if cell != "rnn_relu":  # relu's derivative flips where rounding moves a zero crossing
            yield cell, 2, proj, 8, lengths_of("short", T, 8), torch.float16, "device"
            yield cell, 2, proj, 8, None, torch.bfloat16, "cpu"


def main(argv=None):
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args.add_argument("--quick", action="store_true",
                      help="no layer of 454 sequences (a dry run's plumbing)")
    args.add_argument("library", nargs="?")
    opts = args.parse_args(argv)
    ops = load_ops(opts.library)
    device = torch.device(opts.device)
    if device.type == "cuda":
        assert torch.cuda.is_available(), "sanitize_small needs a CUDA device"
        side = torch.cuda.Stream()  # a non-default current stream for every birnn_ext call
        side.wait_stream(torch.cuda.current_stream())
        stream_ctx = torch.cuda.stream(side)
    else:
        stream_ctx = contextlib.nullcontext()
    gen = torch.Generator().manual_seed(0)
    T, I, H = 6, 5, 8
    failures = 0
    for cell, D, proj, B, lengths, dtype, lengths_where in configurations(T, opts.quick):
        a = layer_inputs(cell, D, T, B, I, H, proj, lengths, gen)
        Hout = proj or H
        grads = dict(grad_output=torch.randn(T, B, D * Hout, generator=gen, dtype=torch.float64),
                     grad_h_n=torch.randn(D, B, Hout, generator=gen, dtype=torch.float64),
                     grad_c_n=torch.randn(D, B, H, generator=gen, dtype=torch.float64))
        ref = run_layer(ops, cell, a, grads)  # float64 on the CPU
        lengths_device = device if lengths_where == "device" else torch.device("cpu")
        with stream_ctx:
            got = run_layer(ops, cell, to(a, device, dtype, lengths_device),
                            to(grads, device, dtype, None))
        if device.type == "cuda":
            torch.cuda.synchronize()
        worst = 0.0
        for r, g in zip(ref, got):
            if r.numel() == 0:
                continue
            err = ((r - g.cpu().double()).abs().max() / r.abs().max().clamp_min(1.0)).item()
            worst = max(worst, err if err == err else float("inf"))  # NaN counts as inf
        ok = worst <= TOLERANCE[dtype]
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {cell:8s} D={D} B={B:3d} proj={proj} {str(dtype):15s} "
              f"lengths={'none' if lengths is None else lengths_where:6s} "
              f"max rel err vs float64 CPU {worst:.2e}")
    print("sanitize_small:", "all results agree with the CPU" if failures == 0
          else f"{failures} configuration(s) disagree with the CPU")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
