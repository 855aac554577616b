"""The main job: swap a model's torch.nn.LSTM for birnn_ext's and show that nothing changes
but the time.

    python scripts/demo.py [--device cpu|cuda] [--batch 8] [--steps 100] [--hidden 256]
"""

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import birnn_ext


class Tagger(nn.Module):
    """A typical user model: a bidirectional LSTM encoder and a per-step classifier."""

    def __init__(self, size, classes=10):
        super().__init__()
        self.encoder = nn.LSTM(size, size, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * size, classes)

    def forward(self, x):
        return self.head(self.encoder(x)[0])


def median_ms(fn, device, repeats=7):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = Tagger(args.hidden).to(device)
    fused = birnn_ext.convert(copy.deepcopy(reference))  # same weights, birnn_ext layers
    print(f"birnn_ext {birnn_ext.__version__}, backend {birnn_ext.get_backend()}, "
          f"device {device}, {args.threads} CPU threads")
    print(f"model: 2-layer bidirectional LSTM, hidden {args.hidden}, "
          f"batch {args.batch}, {args.steps} steps\n")

    x = torch.randn(args.batch, args.steps, args.hidden, device=device)
    out_ref, out_fused = reference(x), fused(x)
    out_ref.sum().backward()
    out_fused.sum().backward()
    grad_gap = max((a.grad - b.grad).abs().max().item()
                   for a, b in zip(reference.parameters(), fused.parameters()))
    print(f"match (float32): max |output difference| {(out_ref - out_fused).abs().max():.2e}, "
          f"max |gradient difference| {grad_gap:.2e}")
    ref64, fused64 = copy.deepcopy(reference).double(), copy.deepcopy(fused).double()
    gap64 = (ref64(x.double()) - fused64(x.double())).abs().max().item()
    print(f"match (float64): max |output difference| {gap64:.2e}\n")

    def infer(model):
        with torch.inference_mode():
            model(x)

    def train(model):
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    print(f"{'mode':<8}{'torch.nn ms':>14}{'birnn_ext ms':>15}{'speedup':>10}")
    for name, step in (("infer", infer), ("train", train)):
        base = median_ms(lambda: step(reference), device)
        ours = median_ms(lambda: step(fused), device)
        print(f"{name:<8}{base:>14.1f}{ours:>15.1f}{base / ours:>9.2f}x")


if __name__ == "__main__":
    main()
