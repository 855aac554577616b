"""Two measurements the GPU check makes besides the benchmark grid (scripts/gpu_check.sh,
stage bench), printed and written as JSON:

- host time per step: the CPU time the op spends issuing one layer, from torch's CPU
  profiler (the op's own CPU time, kernels only queued), divided by the steps. The standard
  path issues 2 GEMMs and 2 kernels per step (forward) on two streams; when this exceeds the
  GPU's time per step, the GPU waits for the host, and fusing launches is what pays.
- direction overlap: one bidirectional layer's time against one direction alone (the same
  layer, unidirectional). 1.0 means the two directions ran fully concurrently, 2.0 serially.

    python scripts/gpu_probe.py [--device cuda|cpu] [--json OUT.json] [--quick]

On --device cpu (gpu_check.sh --dry-run) the same code measures the CPU path, to prove the
plumbing; those numbers say nothing about a GPU.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import birnn_ext  # noqa: E402


def wall_ms(fn, device, reps):
    """Median wall time of fn() in ms (CUDA events on a GPU), after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def host_us_per_step(model, x, steps, train):
    """CPU time of the layer's ops per step, in microseconds, from torch's CPU profiler."""
    def run():
        out = model(x)[0]
        if train:
            out.backward(torch.ones_like(out))
    run()  # warm-up outside the profile
    if x.is_cuda:
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    if x.is_cuda:
        torch.cuda.synchronize()
    ops = {e.key: e.cpu_time_total for e in prof.key_averages()
           if e.key.startswith("birnn_ext::")}
    return {name.split("::")[1]: round(us / steps, 2) for name, us in ops.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a dry run's plumbing)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    # Few enough steps that the launch queue never fills: the host is then never held back
    # by the GPU, and its time is its own.
    T, I = (10, 32) if args.quick else (50, 256)
    sizes = ((64, 4),) if args.quick else ((256, 1), (256, 64), (1024, 64))
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "kernel_path": birnn_ext.kernel_path(args.device), "host_us_per_step": [],
               "overlap": []}
    for H, B in sizes:
        lstm = birnn_ext.LSTM(I, H, bidirectional=True, device=device)
        x = torch.randn(T, B, I, device=device, requires_grad=True)
        for train in (False, True):
            with torch.set_grad_enabled(train):
                row = dict(H=H, B=B, T=T, mode="train" if train else "infer",
                           **host_us_per_step(lstm, x, T, train))
            results["host_us_per_step"].append(row)
            print("host us/step", row)
        uni = birnn_ext.LSTM(I, H, bidirectional=False, device=device)
        with torch.inference_mode():
            xi = x.detach()
            bi_ms = wall_ms(lambda: lstm(xi), device, 20)
            uni_ms = wall_ms(lambda: uni(xi), device, 20)
        row = dict(H=H, B=B, T=T, bidirectional_ms=round(bi_ms, 3),
                   one_direction_ms=round(uni_ms, 3), ratio=round(bi_ms / uni_ms, 3))
        results["overlap"].append(row)
        print("overlap", row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
