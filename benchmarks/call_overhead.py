"""Time of one module call where the Python side weighs most: small H, T=1 and T=100,
bidirectional, 1 layer, I=H, float32, 2 threads. Prints microseconds per call without and
with autograd (forward only), the minimum of 5 repeats, for birnn_ext and torch.nn.

To compare two versions of the Python package on the same compiled module, run it once with
PYTHONPATH pointing at each checkout, alternating (benchmarks/NOTES.md, CPU version 22).
"""

import timeit

import torch

import birnn_ext

CONFIGS = [("LSTM", 1, 1, 128), ("GRU", 1, 1, 128), ("LSTM", 100, 1, 128),
           ("GRU", 100, 1, 128), ("LSTM", 100, 8, 128)]


def per_call_us(module, x, calls):
    with torch.no_grad():
        inference = min(timeit.repeat(lambda: module(x), number=calls, repeat=5))
    autograd = min(timeit.repeat(lambda: module(x), number=calls, repeat=5))
    return inference / calls * 1e6, autograd / calls * 1e6


def main():
    torch.set_num_threads(2)
    print(f"birnn_ext from {birnn_ext.__file__}; us per call, no autograd / autograd")
    for cell, steps, batch, hidden in CONFIGS:
        ours = getattr(birnn_ext, cell)(hidden, hidden, bidirectional=True)
        ref = getattr(torch.nn, cell)(hidden, hidden, bidirectional=True)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(steps, batch, hidden)
        calls = 2000 if steps == 1 else 300
        (ours_inf, ours_grad), (ref_inf, ref_grad) = (per_call_us(m, x, calls)
                                                      for m in (ours, ref))
        print(f"{cell:4s} T={steps:<3d} B={batch} H={hidden}: birnn_ext {ours_inf:6.0f} / "
              f"{ours_grad:6.0f}   torch.nn {ref_inf:6.0f} / {ref_grad:6.0f}")


if __name__ == "__main__":
    main()
