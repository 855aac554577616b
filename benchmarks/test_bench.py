"""pytest-benchmark suite: torch.nn and birnn_ext on a small grid, the same comparisons as run.py.

Each configuration is one benchmark group holding two benchmarks, impl=torch and impl=birnn_ext,
so pytest-benchmark's tables and compare tools put them side by side:

    pytest benchmarks/ --benchmark-only
    pytest benchmarks/ --benchmark-only --benchmark-autosave     # then: pytest-benchmark compare

The suite lives outside tests/ (pytest.ini's testpaths), so the normal test run never collects
it. CUDA cases are skipped without a GPU. birnn_ext's side is checked against torch.nn before it
is timed (the protocol's gate): a wrong kernel fails its benchmark instead of being timed.
Rounds follow the protocol's minimums: CPU warm-up 2 and 7 rounds, CUDA warm-up 10 and 50.
"""

import itertools
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cases  # noqa: E402
from grid import Config  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
ROUNDS = {"cpu": dict(warmup_rounds=2, rounds=7), "cuda": dict(warmup_rounds=10, rounds=50)}


def _cases():
    out = []
    for cell, mode, B in itertools.product(["LSTM", "GRU"], ["infer", "train"], [1, 16]):
        config = Config(cell=cell, mode=mode, dtype="float32", T=50, B=B, H=128, I=128)
        out.append(pytest.param(config, "cpu", id=f"cpu-{config.key()}"))
    for cell, mode, dtype in itertools.product(["LSTM", "GRU"], ["infer", "train"],
                                               ["float32", "bfloat16"]):
        config = Config(cell=cell, mode=mode, dtype=dtype, T=100, B=64, H=512, I=512)
        out.append(pytest.param(config, "cuda", id=f"cuda-{config.key()}", marks=[
            pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]))
    return out


@pytest.mark.parametrize("impl", ["torch", "birnn_ext"])
@pytest.mark.parametrize("config, device", _cases())
def test_rnn(benchmark, config, device, impl):
    baseline = cases.make_baseline(config, device)
    inputs = cases.make_inputs(config, baseline, device)
    side = cases.Side(baseline, inputs, config.mode)
    if impl == "birnn_ext":
        pytest.importorskip("birnn_ext")
        reference = side
        side = cases.Side(cases.make_candidate(baseline, config, device), inputs, config.mode)
        err = cases.check(reference, side, config, device)
        assert err <= cases.TOLERANCE[config.dtype], f"rel_err {err:.3g}: not timed"
        benchmark.extra_info["rel_err"] = err
        benchmark.extra_info["path"] = cases.kernel_path(config, device)
    if device == "cpu":
        benchmark.extra_info["threads"] = torch.get_num_threads()

    benchmark.group = f"{device}-{config.key()}"
    counter = itertools.count()

    def setup():  # untimed: clear gradients, drain the GPU queue
        side.zero()
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        side.run(next(counter))  # rotates among the input sets
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, setup=setup, iterations=1, **ROUNDS[device])
