"""A small workload for compute-sanitizer (scripts/gpu_check.sh runs it under memcheck and
racecheck): bidirectional LSTM (with and without proj_size), GRU and RNN layers, forward and
backward with packed lengths (including a zero length), through the ops directly.

It loads the built extension with torch.ops.load_library, so it depends on nothing of
birnn_ext's Python package, and it checks every CUDA result against the same op on the CPU:
a kernel that reads or writes out of bounds usually also computes something wrong.

    python scripts/sanitize_small.py [path/to/_C.so]      # default: birnn_ext/_C*.so
    compute-sanitizer --tool memcheck python scripts/sanitize_small.py
"""

import glob
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}


def load_ops(path=None):
    if path is None:
        found = sorted(glob.glob(os.path.join(ROOT, "birnn_ext", "_C*.so")))
        if not found:
            sys.exit("sanitize_small: no birnn_ext/_C*.so; build it first "
                     "(python setup.py build_ext --inplace)")
        path = found[0]
    torch.ops.load_library(path)
    print("loaded", path)
    return torch.ops.birnn_ext


def layer_inputs(cell, T, B, I, H, proj, lengths, dtype, gen):
    """The op's arguments on the CPU: input [T, B, I], weights stacked over D = 2."""
    G, D = GATES[cell], 2
    Hout = proj or H

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).to(dtype)

    return dict(input=rnd(T, B, I), lengths=torch.tensor(lengths, dtype=torch.int64),
                hx=rnd(D, B, Hout), cx=rnd(D, B, H) if cell == "lstm" else None,
                w_ih=rnd(D, G * H, I), w_hh=rnd(D, G * H, Hout), b_ih=rnd(D, G * H),
                b_hh=rnd(D, G * H), w_hr=rnd(D, Hout, H) if proj else None)


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


def to(x, device):
    if isinstance(x, dict):
        return {k: to(v, device) for k, v in x.items()}
    return None if x is None else x.to(device)


def main():
    ops = load_ops(sys.argv[1] if len(sys.argv) > 1 else None)
    assert torch.cuda.is_available(), "sanitize_small needs a CUDA device"
    gen = torch.Generator().manual_seed(0)
    T, B, I, H = 6, 4, 5, 8
    lengths = [6, 3, 0, 1]  # a zero length: a row with no valid step in either direction
    failures = 0
    for cell, proj in (("lstm", 0), ("lstm", 4), ("gru", 0), ("rnn_tanh", 0)):
        for dtype in (torch.float32, torch.float64):
            a = layer_inputs(cell, T, B, I, H, proj, lengths, dtype, gen)
            Hout = proj or H
            rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)
            grads = dict(grad_output=rnd(T, B, 2 * Hout), grad_h_n=rnd(2, B, Hout),
                         grad_c_n=rnd(2, B, H))
            ref = run_layer(ops, cell, a, grads)
            got = run_layer(ops, cell, to(a, "cuda"), to(grads, "cuda"))
            torch.cuda.synchronize()
            tol = 1e-4 if dtype == torch.float32 else 1e-10
            worst = 0.0
            for r, g in zip(ref, got):
                if r.numel() == 0:
                    continue
                err = ((r.double() - g.cpu().double()).abs().max()
                       / r.double().abs().max().clamp_min(1.0)).item()
                worst = max(worst, err if err == err else float("inf"))  # NaN counts as inf
            ok = worst <= tol
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {cell:8s} proj={proj} {str(dtype):14s} "
                  f"max rel err vs CPU {worst:.2e}")
    print("sanitize_small:", "all results agree with the CPU" if failures == 0
          else f"{failures} configuration(s) disagree with the CPU")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
