"""GPU tests (marked `cuda`, skipped without a GPU): parity with torch.nn/cuDNN and with the
CPU path in float32 / float16 / bfloat16 at sizes that reach cuBLAS's tensor-core and split-K
paths, long float16/bfloat16 sequences against a float64 truth, every layer option,
gradcheck and opcheck on the GPU, torch.compile, CUDA graph capture (forward and training,
lengths on the host; device lengths and a first call during capture refused clearly), a
non-default current stream, two threads at once, no memory growth, autocast, the TF32 flags
both ways, dropout, the kernel-path switch, and device errors."""

import dataclasses
import threading

import pytest
import torch
from torch import nn

import birnn_ext
from birnn_ext import ops
from helpers import (CELLS, Case, assert_same, cast, check_low_precision, make_inputs,
                     layer_of_tensors, make_pair, op_inputs, run)

pytestmark = pytest.mark.cuda

FLOAT32_TOL = dict(atol=2e-5, rtol=1e-4)
LOW_PRECISION = (torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _cuda_backend():
    assert birnn_ext.set_backend("cuda") == "cuda"


@pytest.fixture(autouse=True)
def _exact_float32_reference():
    """cuDNN and cuBLAS may use TF32 for float32, which would blur the comparison."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32 = old


def _cases():
    for cell in CELLS:
        for mode in ("padded", "packed", "lengths"):
            for dtype in (torch.float32, *LOW_PRECISION):
                yield Case(cell=cell, mode=mode, bidirectional=True, num_layers=2, dtype=dtype,
                           h0=mode == "packed", batch_first=dtype == torch.float16,
                           proj_size=2 if cell == "lstm" and dtype == torch.float32 else 0,
                           device="cuda")


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_with_cudnn(case):
    """float32: equal to torch.nn (cuDNN) up to rounding; float16 / bfloat16: no further
    from the exact (float64) result than torch.nn is (helpers.check_low_precision)."""
    ref, ours = case.make_pair()
    if case.dtype in LOW_PRECISION:
        check_low_precision(case, ref, ours)
        return
    inputs = make_inputs(case)
    assert_same(run(ref, case, inputs), run(ours, case, inputs), **FLOAT32_TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.dtype == torch.float32],
                         ids=lambda c: c.id)
def test_parity_with_cpu_path(case):
    """The GPU kernels against birnn_ext's own CPU kernels (float64 on the CPU)."""
    _, ours = case.make_pair()
    cpu_case = dataclasses.replace(case, device="cpu", dtype=torch.float64)
    _, cpu = cpu_case.make_pair()
    cpu.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})
    inputs = make_inputs(case)
    host = run(cpu, cpu_case, cast(inputs, torch.float64, "cpu"))
    gpu = run(ours, case, inputs)
    assert_same(cast(host, torch.float32, "cpu"), cast(gpu, torch.float32, "cpu"), **FLOAT32_TOL)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_float64(cell):
    args = op_inputs(cell, 2, True, 2 if cell == "lstm" else 0, (3, 1, 4), device="cuda",
                     requires_grad=True)
    fn, tensors = layer_of_tensors(cell, args)
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck(cell):
    fwd = getattr(torch.ops.birnn_ext, f"{cell}_forward").default
    bwd = getattr(torch.ops.birnn_ext, f"{cell}_backward").default
    for training in (True, False):
        args = op_inputs(cell, 2, True, 0, (3, 1, 4), dtype=torch.float32, device="cuda",
                         requires_grad=training)
        torch.library.opcheck(fwd, (*args, training))
    args = op_inputs(cell, 2, True, 0, (3, 1, 4), dtype=torch.float32, device="cuda")
    output, h_n, c_n, reserve = fwd(*args, True)
    grad_c = torch.randn_like(c_n) if cell == "lstm" else None
    torch.library.opcheck(bwd, (torch.randn_like(output), torch.randn_like(h_n), grad_c, *args,
                                output, reserve))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    model = birnn_ext.LSTM(5, 8, num_layers=2, bidirectional=True, device="cuda")
    x = torch.randn(7, 3, 5, device="cuda")
    expected = model(x)[0]
    with torch._dynamo.config.patch(allow_rnn=True):
        got = torch.compile(model, fullgraph=True)(x)[0]
    torch.testing.assert_close(got, expected, **FLOAT32_TOL)
    torch._dynamo.reset()


def _capture(fn, warmups=3):
    """fn() warmed up on a side stream, then captured: (graph, fn's static outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):  # allocator, handles, pools: made outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = fn()
    return graph, static


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_graph_capture_and_replay(cell):
    """ops.layer with lengths on the host is capturable (their values become part of the
    graph, as any host argument's); a replay with new input equals an eager call."""
    args = op_inputs(cell, 2, True, 0, (5, 2, 7, 1), steps=7, hidden=16, input_size=8,
                     dtype=torch.float32, device="cuda")
    args[1] = args[1].cpu()
    with torch.no_grad():
        graph, static_out = _capture(lambda: ops.layer(cell, *args))
    for _ in range(2):
        args[0].copy_(torch.randn_like(args[0]))
        graph.replay()
        with torch.no_grad():
            expected = ops.layer(cell, *args)
        for e, g in zip(expected, static_out):
            if e is not None:
                torch.testing.assert_close(g, e, atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("form", ["op-with-lengths", "module-padded", "module-lengths"])
def test_training_under_cuda_graph_capture(cell, form):
    """Forward and backward captured in one graph, through the op with host lengths and
    through a two-layer module (padded, and with lengths= on the host); replays with new data
    give the eager outputs and gradients.
    (A PackedSequence cannot be built during capture: packing copies its sorted indices from
    the host, torch.nn's own limitation.)"""
    if form == "op-with-lengths":
        args = op_inputs(cell, 2, True, 0, (5, 2, 7, 1), steps=7, hidden=16, input_size=8,
                         dtype=torch.float32, device="cuda", requires_grad=True)
        args[1] = torch.tensor([5, 2, 7, 1])
        fn, leaves = layer_of_tensors(cell, args)
        x = leaves[0]
    else:
        _, ours = make_pair(cell, num_layers=2, bidirectional=True, dtype=torch.float32,
                            device="cuda")
        x = torch.randn(7, 4, 5, device="cuda", requires_grad=True)
        leaves = [x, *ours.parameters()]

        lengths = torch.tensor([5, 2, 7, 1]) if form == "module-lengths" else None

        def fn(x):
            out, state = ours(x, lengths=lengths)
            return (out, *(state if isinstance(state, tuple) else (state,)))

    def step():
        outputs = fn(*leaves) if form == "op-with-lengths" else fn(x)
        sum(o.square().sum() for o in outputs).backward()
        return outputs[0]

    def grads():
        return [t.grad.clone() for t in leaves]

    def zero():
        for t in leaves:
            if t.grad is not None:
                t.grad.zero_()

    graph, static_out = _capture(step)  # the warm-up allocated every .grad
    for _ in range(2):
        with torch.no_grad():
            x.copy_(torch.randn_like(x))
        zero()
        graph.replay()
        got = [static_out.detach().clone()] + grads()
        zero()
        expected = [step().detach()] + grads()
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_capture_with_device_lengths_raises_and_leaves_cuda_usable():
    """Device lengths cannot be checked during capture: a clear error before anything is
    queued, and eager calls afterwards still give the right answer."""
    args = op_inputs("gru", 2, True, 0, (3, 1, 4), dtype=torch.float32, device="cuda")
    with torch.no_grad():
        expected = ops.layer("gru", *args)          # also the warm-up
        graph = torch.cuda.CUDAGraph()
        with pytest.raises(RuntimeError, match="cannot be read during CUDA graph capture"):
            with torch.cuda.graph(graph):
                ops.layer("gru", *args)
        again = ops.layer("gru", *args)
    torch.testing.assert_close(again[0], expected[0], atol=0, rtol=0)


def test_first_call_during_capture_raises_clearly():
    """A thread whose first birnn_ext call is made during capture has no direction streams
    or cuBLAS handles yet, and creating them is not allowed then: a clear error."""
    args = op_inputs("lstm", 2, True, 0, (3, 1, 4), dtype=torch.float32, device="cuda")
    args[1] = args[1].cpu()
    errors = []

    def fresh_thread():
        try:
            torch.cuda.set_device(args[0].device)
            # torch's cuBLAS handle for this thread, so that only birnn_ext's are missing.
            torch.matmul(args[0][0], args[0][0].t())
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                ops.layer("lstm", *args)
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join()
    assert errors and "during CUDA graph capture" in errors[0], errors


def test_non_default_stream():
    ref, ours = make_pair("lstm", num_layers=2, bidirectional=True, dtype=torch.float32,
                          device="cuda")
    x = torch.randn(50, 16, 5, device="cuda")
    expected = ref(x)[0]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = x * 2 - x                      # produced on the side stream right before the call
        got = ours(y)[0]
        got.sum().backward()
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, expected, **FLOAT32_TOL)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_two_threads_at_once():
    _, ours = make_pair("gru", num_layers=2, bidirectional=True, dtype=torch.float32,
                        device="cuda")
    inputs = [torch.randn(30, 8, 5, device="cuda") for _ in range(2)]
    with torch.no_grad():
        expected = [ours(x)[0] for x in inputs]
    results, errors = [[], []], []

    def work(i):
        try:
            with torch.cuda.stream(torch.cuda.Stream()), torch.no_grad():
                for _ in range(20):
                    results[i].append(ours(inputs[i])[0])
                torch.cuda.current_stream().synchronize()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        for got in results[i]:
            torch.testing.assert_close(got, expected[i], atol=0, rtol=0)


def test_no_memory_growth():
    _, ours = make_pair("lstm", num_layers=2, bidirectional=True, dtype=torch.float32,
                        device="cuda")
    x = torch.randn(20, 4, 5, device="cuda", requires_grad=True)

    def step():
        out, (h, c) = ours(x)
        (out.sum() + h.sum() + c.sum()).backward()
        ours.zero_grad(set_to_none=False)
        x.grad = None

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(50):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("cell", CELLS)
def test_autocast_like_torch_nn(cell):
    """Under autocast("cuda") (float16) the outputs come back in torch.nn's dtype."""
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True, dtype=torch.float32,
                          device="cuda")
    x = torch.randn(6, 3, 5, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out_ref, state_ref = ref(x)
        out_our, state_our = ours(x)
    assert out_our.dtype == out_ref.dtype
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    assert [s.dtype for s in flat(state_our)] == [s.dtype for s in flat(state_ref)]
    torch.testing.assert_close(out_our.float(), out_ref.float(), atol=1e-2, rtol=1e-2)
    out_our.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.parametrize("cell", CELLS)
def test_device_mismatch_like_torch_nn(cell):
    ref, ours = make_pair(cell, dtype=torch.float32)            # weights on the CPU
    x = torch.randn(6, 3, 5, device="cuda")
    errors = []
    for model in (ref, ours):
        with pytest.raises(RuntimeError) as info:
            model(x)
        errors.append(str(info.value))
    assert errors[1] == errors[0]


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_op_lengths_on_the_host_or_the_device(where):
    """The op takes lengths on the CPU (no sync) or on the input's device (read back once);
    both give the same result, and bad values are refused either way."""
    args = op_inputs("lstm", dtype=torch.float32, device="cuda")
    args[1] = args[1].to(where)
    expected = torch.ops.birnn_ext.lstm_forward(*op_inputs_on(args, "cpu"), False)
    got = torch.ops.birnn_ext.lstm_forward(*args, False)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.cpu(), e, **FLOAT32_TOL)
    args[1] = torch.tensor([3, 9, 1], device=where)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, T=4\]"):
        torch.ops.birnn_ext.lstm_forward(*args, False)


def op_inputs_on(args, device):
    return [a.to(device) if a is not None else None for a in args]


def test_cuda_backend_selected_and_used():
    assert birnn_ext.get_backend() == "cuda"
    model = nn.Sequential(birnn_ext.GRU(5, 4, bidirectional=True, device="cuda"))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(torch.randn(3, 2, 5, device="cuda"))
    assert any(e.key == "birnn_ext::gru_forward" for e in prof.key_averages())


def test_kernel_switch_reaches_the_layer(monkeypatch):
    """BIRNN_EXT_KERNEL is read by the layer's own dispatch on every call."""
    _, ours = make_pair("lstm", bidirectional=True, dtype=torch.float32, device="cuda")
    x = torch.randn(4, 2, 5, device="cuda")
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "auto")
    expected = ours(x)[0]
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "standard")
    torch.testing.assert_close(ours(x)[0], expected, atol=0, rtol=0)
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "persistent")
    torch.testing.assert_close(ours(x)[0], expected, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "fastest")
    with pytest.raises(RuntimeError, match="unknown BIRNN_EXT_KERNEL"):
        ours(x)


def test_threads_one_after_another_reuse_their_streams_and_handles():
    """Each thread's direction streams, cuBLAS handles and workspaces pass to the next thread
    when it exits: threads that run one after another hold no more device memory than one."""
    _, ours = make_pair("gru", bidirectional=True, dtype=torch.float32, device="cuda")
    x = torch.randn(5, 3, 5, device="cuda")

    def call():
        with torch.no_grad():
            ours(x)
        torch.cuda.synchronize()

    memory = []
    for _ in range(4):
        thread = threading.Thread(target=call)
        thread.start()
        thread.join()
        memory.append(torch.cuda.memory_allocated())
    assert memory[1:] == memory[:1] * 3, memory
