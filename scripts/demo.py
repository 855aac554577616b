"""The main job: swap a model's torch.nn.LSTM for birnn_ext's and show that nothing changes
but the time.

    python scripts/demo.py [--device cpu|cuda] [--batch 8] [--steps 100] [--hidden 256]

The two models are timed the way benchmarks/run.py times (benchmarks/timing.py): interleaved,
torch.nn then birnn_ext then torch.nn ..., and the median of each. It also measures how much
CPU other processes took meanwhile. On a busy machine torch.nn's multi-threaded CPU path stalls
far more than birnn_ext's (the speedup swung from 0.77x to 86x on a loaded 2-core machine), so
the demo shows that load and warns when it makes the timing meaningless.
"""

import argparse
import copy
import os
import sys

import torch
from torch import nn

import birnn_ext
from birnn_ext import info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import timing  # noqa: E402  (benchmarks/timing.py: interleaved timing, ForeignLoad, BUSY)


class Tagger(nn.Module):
    """A typical user model: a bidirectional LSTM encoder and a per-step classifier."""

    def __init__(self, size, classes=10):
        super().__init__()
        self.encoder = nn.LSTM(size, size, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * size, classes)

    def forward(self, x):
        return self.head(self.encoder(x)[0])


class Step:
    """One model's step in the form timing.time_pair times: zero() untimed, then run(i)."""

    def __init__(self, model, x, mode):
        self.model, self.x, self.mode = model, x, mode

    def zero(self):
        if self.mode == "train":
            self.model.zero_grad(set_to_none=True)

    def run(self, i):
        if self.mode == "infer":
            with torch.inference_mode():
                self.model(self.x)
        else:
            self.model(self.x).sum().backward()


def check_match(reference, fused, x):
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


def time_modes(reference, fused, x, device):
    """{mode: (torch.nn ms, birnn_ext ms, runs each, busy fraction or None)}."""
    protocol = timing.PROTOCOL[device.type]
    results = {}
    for mode in ("infer", "train"):
        load = timing.ForeignLoad().start()
        ms_ref, ms_fused, reps = timing.time_pair(
            Step(reference, x, mode), Step(fused, x, mode), device.type,
            warmup=protocol["warmup"], min_reps=protocol["min_reps"], max_reps=50,
            budget_s=0.5)
        results[mode] = (ms_ref, ms_fused, reps, load.stop())
    return results


def report_load(results, load_start):
    """The load the timing saw, and a warning when it makes the speedup meaningless."""
    busy = [b for *_, b in results.values() if b is not None]
    load = f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    if not busy:
        print(f"busy%: unknown here (no /proc/stat); {load}")
        return
    print(f"busy%: CPU time other processes took while timing, % of all {os.cpu_count()} cores "
          f"(0 on a quiet machine); {load}")
    if max(busy) > timing.BUSY:
        print(f"\nWARNING: the machine was busy: other processes took up to {max(busy):.0%} of "
              "the CPUs while timing.\ntorch.nn's multi-threaded CPU path stalls whenever "
              "another process holds one of its cores,\nfar more than birnn_ext's, so these "
              "times and speedups are not a clean measurement.\nRerun on a quiet machine.",
              file=sys.stderr)


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
          f"kernel path {birnn_ext.kernel_path(device.type)}")
    print(f"CPU: {info.cpu_model()}, {os.cpu_count()} cores; ISA: "
          f"{info.describe_isa(info.cpu_isa())}")
    print(f"device {device}, {args.threads} CPU threads for each side")
    print(f"model: 2-layer bidirectional LSTM, hidden {args.hidden}, "
          f"batch {args.batch}, {args.steps} steps\n")

    x = torch.randn(args.batch, args.steps, args.hidden, device=device)
    check_match(reference, fused, x)

    load_start = os.getloadavg()[0]
    results = time_modes(reference, fused, x, device)
    print("timed interleaved (torch.nn, birnn_ext, torch.nn, ...); the median of each side's runs")
    print(f"{'mode':<8}{'torch.nn ms':>14}{'birnn_ext ms':>15}{'speedup':>10}{'runs':>6}"
          f"{'busy%':>7}")
    for mode, (base, ours, reps, busy) in results.items():
        shown = "-" if busy is None else f"{100 * busy:.0f}"
        print(f"{mode:<8}{base:>14.2f}{ours:>15.2f}{base / ours:>9.2f}x{reps:>6}{shown:>7}")
    report_load(results, load_start)


if __name__ == "__main__":
    main()
