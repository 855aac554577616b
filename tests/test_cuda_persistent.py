"""GPU tests of the persistent fused kernels (csrc/cuda/persistent_*; marked `cuda`).

Each case runs the public modules with the persistent path forced (BIRNN_EXT_KERNEL=persistent)
and checks them against torch.nn (cuDNN; float64 CPU truth for float16 / bfloat16), counts the
persistent launches so a case cannot pass on the standard path by accident, and the float32
cases are run again with BIRNN_EXT_KERNEL=standard and compared with the persistent results.

Deadlock guard: a persistent kernel whose blocks wait on each other can hang. So no case runs
in the pytest process: a worker subprocess (this file, run as a script) runs the cases one by
one under a watchdog, and a case that shows no progress within CASE_TIMEOUT_S is killed and
failed as "hung", after which a fresh worker carries on with the remaining cases. (The kernels
also trap after 20 s in one wait, which turns a hang into a launch error; the watchdog covers
everything else.) A worker that dies (a trap poisons the CUDA context) fails its current case
with the tail of its output and is replaced in the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import selectors
import subprocess
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from helpers import (B as DEFAULT_BATCH, CELLS, Case, assert_same, cast,  # noqa: E402
                     make_inputs, op_inputs, run)

pytestmark = pytest.mark.cuda

CASE_TIMEOUT_S = 90       # no progress for this long: the case is hung (> the kernel's 20 s trap)
STARTUP_TIMEOUT_S = 180   # the worker's import of torch and birnn_ext, and CUDA start
FLOAT32_TOL = dict(atol=2e-5, rtol=1e-4)
DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One case. kind: "parity" (forward + backward vs torch.nn), "infer" (forward under
    no_grad), "graph" (capture + replay of ops.layer), "stream" (non-default stream),
    "long" (a long sequence, error vs a float64 truth). hidden: an int, or "limit" /
    "limit+1" for the largest hidden_size the persistent kernels take on this device (both
    kernels the case runs) and one more. blocks: BIRNN_EXT_PERSISTENT_BLOCKS (0: automatic)."""

    cell: str
    kind: str = "parity"
    dtype: str = "float32"
    mode: str = "padded"
    bidirectional: bool = True
    num_layers: int = 1
    bias: bool = True
    h0: bool = False
    hidden: int | str = 16
    batch: int = DEFAULT_BATCH
    steps: int = 6
    blocks: int = 0

    @property
    def id(self):
        parts = [self.kind, self.cell, self.dtype, self.mode, "bi" if self.bidirectional else "uni",
                 f"L{self.num_layers}", f"H{self.hidden}", f"B{self.batch}", f"T{self.steps}"]
        if not self.bias:
            parts.append("nobias")
        if self.h0:
            parts.append("h0")
        if self.blocks:
            parts.append(f"blocks{self.blocks}")
        return "-".join(parts)

    @property
    def compare_standard(self):
        """Cases also run on the standard path and compared with it (float32 only: in 16-bit
        the two paths round differently, and each is checked against the truth instead)."""
        return self.kind in ("parity", "infer") and self.dtype == "float32"


def _specs():
    specs = []
    # Every cell x dtype x (padded | packed with h0/c0), two layers, both directions.
    for cell in CELLS:
        for dtype in DTYPES:
            for mode in ("padded", "packed"):
                specs.append(Spec(cell, dtype=dtype, mode=mode, h0=mode == "packed",
                                  num_layers=2))
    for cell in CELLS:
        # Inference kernels (no reserve), unidirectional layers, no bias, sorted packing.
        specs.append(Spec(cell, kind="infer", mode="packed", h0=True))
        specs.append(Spec(cell, kind="infer", dtype="bfloat16"))
        specs.append(Spec(cell, bidirectional=False, h0=True))
        specs.append(Spec(cell, bias=False, mode="sorted"))
        # At the on-chip limit (the kernels run) and just past it (the standard path runs).
        for dtype in DTYPES:
            for hidden in ("limit", "limit+1"):
                specs.append(Spec(cell, dtype=dtype, hidden=hidden, batch=2, steps=3))
    for cell in ("lstm", "gru"):
        # Sizes that cross the kernels' internal boundaries: units per block around the
        # block count (H 65..67 with 66 blocks a direction on an H100), several batch chunks
        # (B 257 > the 128-column chunk), odd batch, one block for everything, a last block
        # with fewer units, float16 at a real size, a unit count per block above 32.
        specs += [Spec(cell, hidden=65, batch=3), Spec(cell, hidden=67, batch=33, mode="packed"),
                  Spec(cell, hidden=64, batch=257, steps=4),
                  Spec(cell, hidden=5, blocks=1, mode="packed", h0=True),
                  Spec(cell, hidden=10, blocks=3, batch=7),
                  Spec(cell, hidden=256, batch=16, steps=12, dtype="float16"),
                  Spec(cell, hidden=200, blocks=4, batch=5, steps=5)]
        # Capture and replay, a non-default stream, a long sequence in bfloat16.
        specs += [Spec(cell, kind="graph"), Spec(cell, kind="stream"),
                  Spec(cell, kind="long", dtype="bfloat16", hidden=32, steps=400)]
    specs.append(Spec("rnn_relu", hidden=512, batch=64, steps=20))
    specs.append(Spec("rnn_tanh", hidden=512, batch=1, steps=50))
    ids = [s.id for s in specs]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return specs


SPECS = _specs()
BY_ID = {s.id: s for s in SPECS}


# ------------------------------------------------------------------------------------------
# the worker: runs cases in this process (started by the watchdog below, never by pytest)

def _ops():
    return torch.ops.birnn_ext_persistent


def _plan_ok(spec, hidden, backward, training):
    dtype = getattr(torch, spec.dtype)
    dirs = 2 if spec.bidirectional else 1
    return bool(_ops().plan(spec.cell, hidden, spec.batch, spec.steps, dirs, dtype, backward,
                            training)[0])


def _resolve_hidden(spec, training):
    if isinstance(spec.hidden, int):
        return spec.hidden
    dtype = getattr(torch, spec.dtype)
    dirs = 2 if spec.bidirectional else 1
    limit = _ops().max_hidden(spec.cell, spec.batch, spec.steps, dirs, dtype, False, training)
    if training:
        limit = min(limit, _ops().max_hidden(spec.cell, spec.batch, spec.steps, dirs, dtype,
                                             True, True))
    assert limit > 0, "the persistent kernels take no hidden_size at all on this device"
    return limit if spec.hidden == "limit" else limit + 1


def _case(spec, hidden):
    return Case(cell=spec.cell, mode=spec.mode, bidirectional=spec.bidirectional,
                num_layers=spec.num_layers, dtype=getattr(torch, spec.dtype), bias=spec.bias,
                h0=spec.h0, hidden_size=hidden, steps=spec.steps, device="cuda")


def _truth_errors(case, ref, ours, batch):
    """{name: (cuDNN's max error, ours)} against a float64 CPU run of the same weights."""
    inputs = make_inputs(case, batch)
    expected, actual = run(ref, case, inputs), run(ours, case, inputs)
    truth_case = dataclasses.replace(case, device="cpu", dtype=torch.float64)
    truth, _ = truth_case.make_pair()
    truth.load_state_dict({k: v.double().cpu() for k, v in ref.state_dict().items()})
    exact = run(truth, truth_case, cast(inputs, torch.float64, "cpu"))
    errors = {}
    for name, value in exact.items():
        if value is None or not value.is_floating_point():
            continue
        assert actual[name].dtype == case.dtype, name
        assert torch.isfinite(actual[name]).all(), f"{name}: non-finite values"
        scale = max(1.0, value.abs().max().item())
        errors[name] = ((expected[name].double().cpu() - value).abs().max().item() / scale,
                        (actual[name].double().cpu() - value).abs().max().item() / scale)
    return errors, actual


def _check_low_precision(case, ref, ours, batch, factor, floor):
    errors, actual = _truth_errors(case, ref, ours, batch)
    for name, (err_ref, err_our) in errors.items():
        assert err_our <= factor * err_ref + floor, (
            f"{name}: error {err_our:.3g} vs cuDNN's {err_ref:.3g} (relative to the truth)")
    return actual


def _run_parity(spec, case, batch, save):
    ref, ours = case.make_pair()
    if case.dtype == torch.float32:
        inputs = make_inputs(case, batch)
        actual = run(ours, case, inputs)
        assert_same(run(ref, case, inputs), actual, **FLOAT32_TOL)
    else:
        floor = 1e-2 if case.dtype == torch.float16 else 5e-2
        actual = _check_low_precision(case, ref, ours, batch, 2.0, floor)
    save(actual)


def _run_infer(spec, case, batch, save):
    from torch.nn.utils.rnn import pack_padded_sequence

    ref, ours = case.make_pair()
    inputs = make_inputs(case, batch)
    results = []
    with torch.no_grad():
        for model in (ref, ours):
            arg = inputs["x"]
            if inputs["lengths"] is not None:
                arg = pack_padded_sequence(arg, inputs["lengths"],
                                           enforce_sorted=case.mode == "sorted")
            hx = inputs["h0"]
            if hx is not None and case.cell == "lstm":
                hx = (hx, inputs["c0"])
            out, state = model(arg, hx)
            out = out.data if inputs["lengths"] is not None else out
            h_n, c_n = state if case.cell == "lstm" else (state, None)
            results.append(dict(output=out, h_n=h_n, c_n=c_n))
    tol = FLOAT32_TOL if case.dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    assert_same(results[0], results[1], **tol)
    save(results[1])


def _run_graph(spec, case, batch, save):
    from birnn_ext import ops

    args = op_inputs(spec.cell, 2, True, 0, (5, 2, 7, 1), steps=7, hidden=16, input_size=8,
                     dtype=torch.float32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            ops.layer(spec.cell, *args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = ops.layer(spec.cell, *args)
    for lengths in ((7, 7, 7, 7), (1, 3, 6, 2), (0, 7, 2, 5)):
        args[0].copy_(torch.randn_like(args[0]))
        args[1].copy_(torch.tensor(lengths))
        graph.replay()
        with torch.no_grad():
            expected = ops.layer(spec.cell, *args)
        for e, g in zip(expected, static_out):
            if e is not None:
                torch.testing.assert_close(g, e, atol=0, rtol=0)


def _run_stream(spec, case, batch, save):
    ref, ours = case.make_pair()
    inputs = make_inputs(case, batch)
    expected = run(ref, case, inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        shifted = {k: (v * 2 - v if isinstance(v, torch.Tensor) and v.is_cuda else v)
                   for k, v in inputs.items()}  # produced on the side stream just before
        actual = run(ours, case, shifted)
    torch.cuda.current_stream().wait_stream(stream)
    assert_same(expected, actual, **FLOAT32_TOL)


def _run_long(spec, case, batch, save):
    ref, ours = case.make_pair()
    # float32 carries: the error must not grow past cuDNN's over a long sequence.
    _check_low_precision(case, ref, ours, batch, 1.5, 1e-3)


RUNNERS = dict(parity=_run_parity, infer=_run_infer, graph=_run_graph, stream=_run_stream,
               long=_run_long)


def _run_one(spec, kernel, out_dir):
    """Runs one case; returns (status, detail). status: ok | fail."""
    import traceback

    os.environ["BIRNN_EXT_PERSISTENT_BLOCKS"] = str(spec.blocks) if spec.blocks else ""
    torch.manual_seed(0)
    training = spec.kind not in ("infer", "graph")
    hidden = _resolve_hidden(spec, training)
    case = _case(spec, hidden)
    layers = spec.num_layers if spec.kind not in ("graph",) else 1
    expect = [0, 0]
    if kernel == "persistent":
        expect[0] = layers * _plan_ok(spec, hidden, False, training)
        expect[1] = layers * (training and _plan_ok(spec, hidden, True, True))
    calls = 1
    if spec.kind == "graph":
        calls = 3 + 1 + 3  # warm-up, capture, eager comparisons (replays do not count)
        expect = [e * calls for e in expect]

    def save(result):
        torch.save({k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                    for k, v in result.items()}, os.path.join(out_dir, spec.id + ".pt"))

    before = list(_ops().launch_counts())
    try:
        RUNNERS[spec.kind](spec, case, spec.batch, save)
    except RuntimeError as exc:
        # Forced onto a layer it cannot run, the dispatch may refuse instead of falling back.
        if kernel == "persistent" and expect != [layers, layers * training] and \
                "persistent" in str(exc):
            return "ok", f"H={hidden}: refused as expected: {exc}"
        return "fail", f"H={hidden}: {traceback.format_exc()}"
    except Exception:  # noqa: BLE001 - reported to the parent, which fails the test
        return "fail", f"H={hidden}: {traceback.format_exc()}"
    torch.cuda.synchronize()
    after = list(_ops().launch_counts())
    got = [after[0] - before[0], after[1] - before[1]]
    if got != expect:
        hint = (" (BIRNN_EXT_KERNEL=persistent did not reach the persistent kernels: is the "
                "dispatch wired?)" if kernel == "persistent" and got == [0, 0] else "")
        return "fail", f"H={hidden}: persistent launches {got}, expected {expect}{hint}"
    return "ok", f"H={hidden}, launches {got}"


def worker_main(spec_file, results_file, out_dir):
    """Runs the cases listed in spec_file, printing START/DONE lines for the watchdog and
    appending one JSON line per case to results_file."""
    import birnn_ext

    kernel = os.environ.get("BIRNN_EXT_KERNEL", "")
    assert birnn_ext.set_backend("cuda") == "cuda"
    torch.backends.cudnn.allow_tf32 = False          # an exact float32 reference
    torch.backends.cuda.matmul.allow_tf32 = False
    print("READY", flush=True)
    for spec_id in json.load(open(spec_file)):
        print(f"START {spec_id}", flush=True)
        status, detail = _run_one(BY_ID[spec_id], kernel, out_dir)
        with open(results_file, "a") as f:
            f.write(json.dumps(dict(id=spec_id, status=status, detail=detail)) + "\n")
        print(f"DONE {spec_id} {status}", flush=True)


# ------------------------------------------------------------------------------------------
# the watchdog (in the pytest process)

def _run_workers(ids, kernel, work_dir):
    """Runs the cases `ids` in worker subprocesses with BIRNN_EXT_KERNEL=kernel; returns
    {id: (status, detail)}. A hung case is killed; a dead worker is replaced."""
    os.makedirs(work_dir, exist_ok=True)
    results_file = os.path.join(work_dir, "results.jsonl")
    results = {}
    remaining = list(ids)
    env = dict(os.environ, BIRNN_EXT_KERNEL=kernel, BIRNN_EXT_BACKEND="cuda",
               BIRNN_EXT_POISON="1", PYTHONUNBUFFERED="1")
    while remaining:
        spec_file = os.path.join(work_dir, "specs.json")
        json.dump(remaining, open(spec_file, "w"))
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", spec_file,
                                 results_file, work_dir], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=os.path.dirname(HERE))
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        tail, current, started = [], None, False
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                proc.wait()
                what = f"hung: no progress for {CASE_TIMEOUT_S} s (killed)" if current else \
                    "the worker did not start in time"
                break
            line = proc.stdout.readline()
            if not line:  # the worker exited
                proc.wait()
                what = f"the worker died (exit code {proc.returncode})"
                break
            tail = (tail + [line.rstrip()])[-60:]
            words = line.split()
            if words[:1] == ["READY"]:
                started = True
            elif words[:1] == ["START"]:
                current = words[1]
            elif words[:1] == ["DONE"]:
                remaining.remove(words[1])
                current = None
            deadline = time.monotonic() + CASE_TIMEOUT_S
        sel.close()
        if current is not None:
            results[current] = ("fail", what + ":\n" + "\n".join(tail))
            remaining.remove(current)
        elif remaining:
            for spec_id in remaining:  # died before or between cases: nothing more will run
                results[spec_id] = ("fail", what + (" before any case" if not started else "") +
                                    ":\n" + "\n".join(tail))
            remaining = []
    if os.path.exists(results_file):
        for line in open(results_file):
            entry = json.loads(line)
            results.setdefault(entry["id"], (entry["status"], entry["detail"]))
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case on the persistent path, and the standard-path run of the float32 ones."""
    base = tmp_path_factory.mktemp("persistent")
    persistent = _run_workers([s.id for s in SPECS], "persistent", str(base / "persistent"))
    standard = _run_workers([s.id for s in SPECS if s.compare_standard], "standard",
                            str(base / "standard"))
    return dict(persistent=persistent, standard=standard, base=base)


@pytest.mark.parametrize("spec", SPECS, ids=[s.id for s in SPECS])
def test_persistent_case(spec, outcomes):
    status, detail = outcomes["persistent"].get(spec.id, ("fail", "no result"))
    assert status == "ok", detail


@pytest.mark.parametrize("spec", [s for s in SPECS if s.compare_standard],
                         ids=[s.id for s in SPECS if s.compare_standard])
def test_persistent_matches_standard(spec, outcomes):
    """The same case on both paths (same seed, same inputs): float32 results agree."""
    for path in ("persistent", "standard"):
        status, detail = outcomes[path].get(spec.id, ("fail", "no result"))
        assert status == "ok", f"{path}: {detail}"
    paths = [torch.load(outcomes["base"] / path / (spec.id + ".pt"))
             for path in ("persistent", "standard")]
    assert_same(paths[1], paths[0], **FLOAT32_TOL)


def test_plan_ops_agree_with_the_limits():
    """The introspection ops: the largest accepted hidden_size is accepted, one more is not
    (with a reason), and unsupported dtypes say so."""
    import birnn_ext

    assert birnn_ext.set_backend("cuda") == "cuda"  # loads the compiled module and its ops
    ops = torch.ops.birnn_ext_persistent
    for cell in CELLS:
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (False, True):
                limit = ops.max_hidden(cell, 64, 100, 2, dtype, backward, True)
                assert limit >= 64, (cell, dtype, backward, limit)
                assert ops.plan(cell, limit, 64, 100, 2, dtype, backward, True)[0] == 1
                assert ops.why(cell, limit, 64, 100, 2, dtype, backward, True) == ""
                assert ops.plan(cell, limit + 1, 64, 100, 2, dtype, backward, True)[0] == 0
                assert ops.why(cell, limit + 1, 64, 100, 2, dtype, backward, True) != ""
    assert "dtype" in ops.why("lstm", 16, 4, 5, 2, torch.float64, False, True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        os.environ.setdefault("BIRNN_EXT_POISON", "1")
        worker_main(*sys.argv[2:])
    else:
        sys.exit("usage: test_cuda_persistent.py --worker SPEC_FILE RESULTS_FILE OUT_DIR "
                 "(started by the tests' watchdog)")
