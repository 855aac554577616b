"""Timing of two sides interleaved (A B A B ...; lengths-api rows add a third, A B C A B C ...),
per the protocol in benchmarks/README.md.

CPU: time.perf_counter around each run; warm-up 2 runs each, then at least 7 timed runs each.
GPU: CUDA events around each run, the stream drained before each so a run's time includes its
launch overhead and nothing queued before it; warm-up at least 10 runs each, then at least 50
timed runs each. Runs rotate among the input sets (run i uses set i % 3).

Past the minimum, a side keeps being timed while the configuration's time budget lasts (up to
max_reps), so fast configurations get more runs and slow ones stop at the minimum. The result is
the median of each side's runs, in milliseconds.
"""

import os
import statistics
import time

import torch

# ForeignLoad above this (other processes took more than 10% of all cores) marks a CPU timing
# as taken on a busy machine: run.py and scripts/demo.py warn.
BUSY = 0.1

PROTOCOL = {  # the minimums; the command line may raise them, never lower them
    "cpu": dict(warmup=2, min_reps=7),
    "cuda": dict(warmup=10, min_reps=50),
}


def _timer(device):
    if device == "cpu":
        def timed(side, i):
            side.zero()
            start = time.perf_counter()
            side.run(i)
            return (time.perf_counter() - start) * 1e3
        return timed

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(side, i):
        side.zero()
        torch.cuda.synchronize()
        start.record()
        side.run(i)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return timed


def time_pair(a, b, device, warmup, min_reps, max_reps, budget_s):
    """Median ms of side a and side b, and how many timed runs each got."""
    (ms_a, ms_b), reps = time_sides([a, b], device, warmup, min_reps, max_reps, budget_s)
    return ms_a, ms_b, reps


def time_sides(sides, device, warmup, min_reps, max_reps, budget_s):
    """([median ms of each side], timed runs each got): the sides interleaved, A B C A B C ...;
    the budget is per side."""
    timed = _timer(device)
    for i in range(warmup):
        for side in sides:
            side.zero()
            side.run(i)
    if device == "cuda":
        torch.cuda.synchronize()

    times = [[] for _ in sides]
    began = time.perf_counter()
    for i in range(max_reps):
        for side, mine in zip(sides, times):
            mine.append(timed(side, i))
        if i + 1 >= min_reps and time.perf_counter() - began >= len(sides) * budget_s:
            break
    for side in sides:
        side.zero()
    return [statistics.median(mine) for mine in times], len(times[0])


def peak_mb(side):
    """Working memory of one train step on the GPU: torch.cuda.max_memory_allocated() after a
    reset, less what was allocated at the reset (weights, inputs), in MiB."""
    side.zero()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    side.run(0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    side.zero()
    return peak / 2**20


class ForeignLoad:
    """How busy the machine's CPUs were with work other than this process, between start() and
    stop(): 0.0 = nothing else ran, 1.0 = other work kept every core busy. From /proc/stat (busy
    time of all CPUs, steal included) less this process's own CPU time; None off Linux.

    On a shared machine this is the number to check before trusting a CPU row: torch.nn's many
    small multi-threaded regions stall when another process takes one of their cores, so a busy
    machine slows the two sides very unequally and the speedup means nothing."""

    def __init__(self):
        self._start = None

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        ours = os.times()
        return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), ours.user + ours.system

    def start(self):
        self._start = self._sample()
        return self

    def stop(self):
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, busy, ours = (e - s for e, s in zip(end, self._start))
        return round(max(0.0, busy - ours) / (wall * (os.cpu_count() or 1)), 2)
