"""The layers under concurrency, thread settings, forks and grad / autocast modes.

The CPU kernels run a layer's two directions as two tasks on torch's OpenMP team
(csrc/cpu/tasks.h, through libgomp's GOMP_parallel), so concurrent callers, a changed team
size and a forked process are all ways to break them that the parity grids never try.
Every result is compared with the same computation run serially in the main thread (the
kernels are deterministic, so equal means bit-for-bit equal; a changed team size is exact
only where birnn_ext's own GEMMs do every product, see _own_gemms_only).

Hangs fail: thread tests join their workers with a timeout, and fork tests run in a
subprocess with a timeout (a hung forked child would otherwise hang pytest itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import birnn_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds a thread or subprocess scenario may take before it counts as hung. Each does well
# under a second or two of work; the margin covers a machine shared with other jobs.
TIMEOUT = 120


def _layers():
    """One small bidirectional layer of every class, float32 (the AVX-512 GEMM path where
    the CPU has it) and float64, with fixed weights."""
    torch.manual_seed(0)
    return {
        "lstm32": birnn_ext.LSTM(7, 16, num_layers=2, bidirectional=True, batch_first=True),
        "gru64": birnn_ext.GRU(7, 9, bidirectional=True, batch_first=True, dtype=torch.float64),
        "rnn32": birnn_ext.RNN(7, 13, bidirectional=True, batch_first=True),
        "lstmproj64": birnn_ext.LSTM(7, 8, proj_size=3, bidirectional=True, batch_first=True,
                                     dtype=torch.float64),
    }


def _inputs(model, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return torch.randn(3, 11, 7, generator=gen, dtype=dtype)


def _forward_backward(model, x):
    """Output, final state and the gradients of x and every parameter, without touching
    .grad (torch.autograd.grad), so concurrent callers of one module do not share state."""
    x = x.detach().requires_grad_()
    out, state = model(x)
    states = state if isinstance(state, tuple) else (state,)
    params = list(model.parameters())
    loss = out.square().sum() + sum(s.sum() for s in states)
    grads = torch.autograd.grad(loss, [x] + params)
    return [out.detach(), *[s.detach() for s in states], *grads]


def _assert_equal(expected, actual, what, exact=True):
    """Bit for bit, or (exact=False) to summation-order rounding: float64 to rtol 1e-12 and
    1e-12 of the tensor's scale, float32 to torch.testing's float32 defaults; far below what
    a wrong step or slice gives."""
    assert len(expected) == len(actual), what
    for i, (e, a) in enumerate(zip(expected, actual)):
        if exact:
            assert torch.equal(e, a), f"{what}: tensor {i} differs by {(e - a).abs().max()}"
        else:
            tol = {"rtol": 1e-12, "atol": 1e-12 * e.abs().max()} if e.dtype == torch.float64 else {}
            torch.testing.assert_close(a, e, **tol, msg=lambda m, i=i: f"{what}: tensor {i}: {m}")


def _run_threads(work, count):
    """Runs work(i) on `count` daemon threads; fails if one raises or is still running after
    TIMEOUT seconds (daemon, so a hung one cannot keep the interpreter alive)."""
    errors = []

    def target(i):
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append((i, exc))

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), f"a thread hung for {TIMEOUT} s"
    if errors:
        raise errors[0][1]


ITERATIONS = 30  # per thread: enough interleavings to catch shared state, ~1-2 s in all


@pytest.mark.parametrize("shared", [True, False], ids=["same-layer", "different-layers"])
def test_four_threads_match_a_serial_run(shared):
    """4 Python threads call the same layer (or each its own class of layer) many times,
    each with its own inputs; every result equals the serial result bit for bit."""
    layers = _layers()
    names = ["lstm32"] * 4 if shared else list(layers)
    inputs = [[_inputs(layers[names[i]], seed=100 * i + k) for k in range(3)] for i in range(4)]
    expected = [[_forward_backward(layers[names[i]], x) for x in inputs[i]] for i in range(4)]

    def work(i):
        for it in range(ITERATIONS):
            k = it % 3
            _assert_equal(expected[i][k], _forward_backward(layers[names[i]], inputs[i][k]),
                          f"thread {i} iteration {it}")

    _run_threads(work, 4)


def test_threads_in_different_grad_and_autocast_modes():
    """Grad mode, inference mode and autocast are per thread: 4 threads each in a different
    one, at the same time, get what each gets alone."""
    layer = _layers()["lstm32"]
    x = _inputs(layer, seed=7)

    def call(mode):
        if mode == "grad":
            return _forward_backward(layer, x)
        if mode == "no_grad":
            with torch.no_grad():
                out, (h, c) = layer(x)
        elif mode == "inference_mode":
            with torch.inference_mode():
                out, (h, c) = layer(x)
                out, h, c = out.clone(), h.clone(), c.clone()  # usable outside the mode
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, (h, c) = layer(x)
            assert out.dtype == torch.bfloat16 and out.requires_grad
            return [out.detach(), h.detach(), c.detach()]
        assert not out.requires_grad
        return [out, h, c]

    modes = ["grad", "no_grad", "inference_mode", "autocast"]
    expected = {m: call(m) for m in modes}

    def work(i):
        for _ in range(ITERATIONS):
            _assert_equal(expected[modes[i]], call(modes[i]), modes[i])

    _run_threads(work, 4)


def _own_gemms_only(model, x):
    """Whether every product of the layer's forward and backward on x runs on birnn_ext's
    own GEMM (float32 on the AVX2 or AVX-512 path, backward not on ATen's), whose summation
    order does not depend on the team size. The other products go to MKL (through ATen or
    BLAS), which may block a GEMM differently for another thread count: float64 torch.addmm
    itself gives other last bits with 3 threads than with 2 on a 2-core AMD EPYC (Zen 4),
    so there the team size changes the rounding."""
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        return False
    B, T = (x.size(0), x.size(1)) if model.batch_first else (x.size(1), x.size(0))
    path = birnn_ext.kernel_path("cpu", dtype=dtype, T=T, B=B, training=True)
    return path in ("cpu-avx512", "cpu-avx2")


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_set_num_threads(threads):
    """Any team size gives the same numbers as the default one: 1 (the directions run one
    after the other), 2 (one each), more than there are directions or cores. Bit for bit
    where birnn_ext's own GEMMs do every product; to rounding where MKL does some (float64;
    float32 on the scalar path, 1.8e-7 apart with 3 threads on the AMD Zen 4)."""
    layers = _layers()
    xs = {name: _inputs(m, seed=3) for name, m in layers.items()}
    expected = {name: _forward_backward(m, xs[name]) for name, m in layers.items()}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for name, m in layers.items():
            _assert_equal(expected[name], _forward_backward(m, xs[name]), name,
                          exact=_own_gemms_only(m, xs[name]))
    finally:
        torch.set_num_threads(before)


def _run_script(body, prelude=""):
    """Runs `prelude` then the indented script `body` (repository root as cwd) and returns
    its stdout; fails on a non-zero exit or on running past TIMEOUT (a hang)."""
    script = prelude + "\n" + textwrap.dedent(body)
    try:
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                              capture_output=True,
                              text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung for {TIMEOUT} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# Shared by the subprocess scenarios: a model and an input made in the parent, and the
# result to compare a child's with (computed in the parent before the fork, or with
# PARENT_RUNS_FIRST = False after the children are done, so that the parent has never run
# an OpenMP region when it forks).
_SETUP = """
    import os, sys, torch
    sys.path.insert(0, os.getcwd())
    import birnn_ext
    torch.manual_seed(0)
    model = birnn_ext.GRU(16, 32, num_layers=2, bidirectional=True)
    lstm = birnn_ext.LSTM(16, 32, bidirectional=True, dtype=torch.float64)
    x = torch.randn(12, 5, 16)

    def result():
        with torch.no_grad():
            return torch.cat([model(x)[0].flatten(), lstm(x.double())[0].float().flatten()])

    if PARENT_RUNS_FIRST:
        expected = result()   # the parent uses the layers (and so its OpenMP team) first
"""


def test_dataloader_workers_call_the_layer():
    """A DataLoader whose dataset runs the layer, with 2 forked workers (which set one
    thread each, as DataLoader does), after the parent ran the layer on its OpenMP team."""
    out = _run_script(_SETUP + """
    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return 6
        def __getitem__(self, i):
            return result()
    loader = torch.utils.data.DataLoader(Dataset(), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    got = list(loader)
    assert len(got) == 6
    for g in got:
        assert torch.equal(g, expected), (g - expected).abs().max()
    print("ok", len(got))
    """, prelude="PARENT_RUNS_FIRST = True")
    assert "ok 6" in out


_FORK_CHILDREN = """
    import multiprocessing as mp
    def child(queue):
        if CHILD_THREADS:
            torch.set_num_threads(CHILD_THREADS)
        queue.put(result().tolist())  # plain floats: a tensor's shared memory dies with us
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=child, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    answers = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    if not PARENT_RUNS_FIRST:
        expected = result()
    assert all(torch.equal(torch.tensor(a), expected) for a in answers)
    print("ok")
"""


@pytest.mark.parametrize("parent_first,child_threads", [(True, 1), (False, 0)],
                         ids=["child-sets-one-thread", "parent-forks-before-any-parallel-work"])
def test_multiprocessing_fork_child_calls_the_layer(parent_first, child_threads):
    """multiprocessing with the fork start method, two children calling the layers: after
    the parent ran them, with torch.set_num_threads(1) in the child (as DataLoader workers
    do); and with the parent's team size inherited by children forked before the parent
    ran any parallel region (libgomp has no thread pool yet to lose in the fork)."""
    out = _run_script(_SETUP + _FORK_CHILDREN, prelude=f"PARENT_RUNS_FIRST = {parent_first}; "
                                                     f"CHILD_THREADS = {child_threads}")
    assert "ok" in out


def test_fork_after_parallel_work_no_worse_than_torch_nn():
    """A child forked after the parent ran OpenMP regions, calling a layer with the
    inherited 2-thread team: libgomp's pool is copied without its threads, so torch.nn's own
    GRU hangs there (README: Threads and processes). birnn_ext must do no worse: whenever
    torch.nn's child finishes, birnn_ext's must too. Both run at once, so a hang costs
    HANG_WAIT seconds of waiting once."""
    if torch.get_num_threads() < 2:
        pytest.skip("needs a 2-thread team; torch.get_num_threads() is 1 here")
    scripts = {}
    for which, make in (("torch.nn", "torch.nn.GRU"), ("birnn_ext", "birnn_ext.GRU")):
        scripts[which] = f"""
    import os, sys, torch
    sys.path.insert(0, os.getcwd())
    import birnn_ext
    import multiprocessing as mp
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = {make}(64, 64, bidirectional=True)
    x = torch.randn(20, 16, 64)
    with torch.no_grad():
        expected = model(x)[0]   # the parent's OpenMP team runs
    def child(queue):
        with torch.no_grad():
            queue.put(bool(torch.equal(model(x)[0], expected)))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,), daemon=True)
    p.start()
    p.join({HANG_WAIT})
    if p.is_alive():
        print("hung")
        p.kill()
    else:
        assert p.exitcode == 0 and queue.get(), p.exitcode
        print("finished")
    """
    procs = {k: subprocess.Popen([sys.executable, "-c", textwrap.dedent(v)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, v in scripts.items()}
    outcome = {}
    for k, proc in procs.items():
        out, _ = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"{k}: {out[-3000:]}"
        outcome[k] = out.split()[-1]
    assert outcome["torch.nn"] in ("hung", "finished") and outcome["birnn_ext"] in (
        "hung", "finished"), outcome
    if outcome["torch.nn"] == "finished":
        assert outcome["birnn_ext"] == "finished", outcome
    print("forked child with 2 threads after parallel work:", outcome)


HANG_WAIT = 10  # seconds a forked child gets before it counts as hung (it needs ~10 ms)


def test_set_num_interop_threads():
    """torch.set_num_interop_threads (callable once, before any inter-op work) changes
    nothing in the results, nor does running the layer from torch.jit.fork tasks."""
    out = _run_script("""
    import torch
    torch.set_num_interop_threads(1)
    import os, sys
    sys.path.insert(0, os.getcwd())
    import birnn_ext
    torch.manual_seed(0)
    model = birnn_ext.LSTM(8, 16, bidirectional=True)
    x = torch.randn(5, 3, 8)
    with torch.no_grad():
        expected = model(x)[0]
        futures = [torch.jit.fork(model, x) for _ in range(4)]
        got = [torch.jit.wait(f)[0] for f in futures]
    assert torch.get_num_interop_threads() == 1
    assert all(torch.equal(g, expected) for g in got)
    print("ok")
    """)
    assert "ok" in out
