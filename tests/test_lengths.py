"""The layers' `lengths=` keyword: a padded batch of variable-length sequences, run without
packing, equal to torch.nn's packed route (pack_padded_sequence(enforce_sorted=False), the
layer, pad_packed_sequence(total_length=T)). The parity grid over every cell and option is
tests/test_parity.py's "lengths" mode; this file holds what that grid does not: lengths that
all stop short of T, the forms lengths may take, dropout with tied lengths, the path taking no
sort, pack, unpack or input copy (and packed input only the two copies it needs), the errors,
torch.compile, and lengths on a GPU."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import birnn_ext
from birnn_ext import modules, ops
from helpers import CELLS, TOL, Case, assert_same, make_inputs, make_pair, module_classes, run

T, B = 6, 4


def _lengths_case(cell, **kwargs):
    return Case(cell=cell, mode="lengths", bidirectional=True, num_layers=2, h0=True,
                proj_size=2 if cell == "lstm" else 0, **kwargs)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
@pytest.mark.parametrize("cell", CELLS)
def test_every_sequence_shorter_than_T(cell, batch_first, backend):
    """Steps past the longest sequence: torch.nn's total_length pads them with zeros, and
    every gradient (x's there included) is what torch.nn gives."""
    case = _lengths_case(cell, batch_first=batch_first)
    ref, ours = case.make_pair()
    inputs = make_inputs(case)
    inputs["lengths"] = torch.tensor([4, 1, 3, 2])
    expected, actual = run(ref, case, inputs), run(ours, case, inputs)
    assert_same(expected, actual, **TOL[torch.float64])
    out = actual["output"].transpose(0, 1) if batch_first else actual["output"]
    assert (out[4:] == 0).all() and (actual["grad.x"].narrow(1 if batch_first else 0, 4, 2)
                                     == 0).all()


FORMS = {
    "list": lambda v: v,
    "tuple": tuple,
    "numpy": np.array,
    "int32": lambda v: torch.tensor(v, dtype=torch.int32),
    "uint8": lambda v: torch.tensor(v, dtype=torch.uint8),
    "non-contiguous": lambda v: torch.tensor([[n, 0] for n in v])[:, 0],
}


@pytest.mark.parametrize("form", FORMS)
def test_forms_of_lengths_give_the_same_result(form):
    case = _lengths_case("gru")
    _, ours = case.make_pair()
    inputs = make_inputs(case)
    expected = run(ours, case, inputs)
    inputs["lengths"] = FORMS[form](inputs["lengths"].tolist())
    assert_same(expected, run(ours, case, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropout_with_tied_lengths_matches_torch_nn(cell):
    """Tied lengths: pack_padded_sequence's sort decides which of the tied sequences comes
    first in the packed data, hence which mask row each gets; lengths= follows the same sort."""
    case = Case(cell=cell, mode="lengths", bidirectional=True, num_layers=3, batch_first=True)
    ref, ours = make_pair(cell, dropout=0.5, **case.module_kwargs())
    inputs = make_inputs(case, b=7)
    inputs["lengths"] = torch.tensor([3, 5, 3, 5, 1, 6, 3])
    results = []
    for model in (ref, ours):
        torch.manual_seed(11)
        results.append(run(model, case, inputs))
    assert_same(*results, **TOL[torch.float64])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-no-dropout"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tf", "bf"])
def test_no_sort_pack_unpack_or_input_copy(monkeypatch, batch_first, train):
    """The first layer reads the caller's memory; every layer gets the lengths as int64 on
    the CPU; nothing is sorted, packed or unpacked."""
    def refuse(*args, **kwargs):
        raise AssertionError("called on the lengths= path")

    for name in ("pack_padded_sequence", "pad_packed_sequence"):
        monkeypatch.setattr(torch.nn.utils.rnn, name, refuse)
        monkeypatch.setattr(modules, name, refuse, raising=False)
    monkeypatch.setattr(torch, "sort", refuse)
    seen, layer = [], ops.layer

    def spy(cell, input, lengths, *rest):
        seen.append((input.data_ptr(), input.stride(), lengths.device, lengths.dtype))
        return layer(cell, input, lengths, *rest)

    monkeypatch.setattr(ops, "layer", spy)
    _, ours = make_pair("lstm", num_layers=2, bidirectional=True, batch_first=batch_first)
    ours.train(train)
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), dtype=torch.float64)
    ours(x, lengths=[2, 6, 1, 5])
    time_major = x.transpose(0, 1) if batch_first else x
    assert seen[0][:2] == (x.data_ptr(), time_major.stride())
    assert [s[2:] for s in seen] == [(torch.device("cpu"), torch.int64)] * 2


def test_caller_may_refill_its_lengths_before_backward():
    """A reused lengths buffer (gradient accumulation over micro-batches) may be refilled
    between a forward and its backward, as with torch.nn's packing route: the layer keeps its
    own copy of the lengths, never the caller's tensor."""
    ref, ours = make_pair("lstm", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, 5, dtype=torch.float64, requires_grad=True)
    buffer = torch.tensor([2, 6, 1, 5])
    packed = pack_padded_sequence(x, buffer, enforce_sorted=False)
    expected = pad_packed_sequence(ref(packed)[0], total_length=T)[0]
    out = ours(x, lengths=buffer)[0]
    buffer.fill_(1)
    (grad_ours,) = torch.autograd.grad(out.square().sum(), x)
    (grad_ref,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad_ours, grad_ref)


def _autograd_nodes(tensor):
    """The names of the nodes of tensor's backward graph, one per node."""
    seen, todo, names = set(), [tensor.grad_fn], []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        todo += [next_fn for next_fn, _ in node.next_functions]
    return names


def test_packed_input_costs_a_fixed_number_of_copies():
    """A PackedSequence is padded with one scatter on the way in and packed with one gather
    on the way out, inter-layer dropout included (its mask is read in packed order, nothing
    repacked): the backward graph does not grow with the batch. (pad_packed_sequence copies
    a block of steps per distinct length, and autograd then copies the whole gradient once
    per block: up to B times.)"""
    _, ours = make_pair("gru", num_layers=3, bidirectional=True, dropout=0.3)
    graphs = []
    for batch in (3, 9):
        x = pack_padded_sequence(torch.randn(T + batch, batch, 5, dtype=torch.float64),
                                 list(range(T + batch, T, -1)), enforce_sorted=False)
        x = PackedSequence(x.data.requires_grad_(), *x[1:])
        graphs.append(sorted(_autograd_nodes(ours(x)[0].data)))
    assert graphs[0] == graphs[1]
    assert graphs[0].count("IndexCopyBackward0") == graphs[0].count("IndexSelectBackward0") == 1


# (name, input shape, lengths, message): the model is bidirectional, 2 layers, I=5, H=4.
ERRORS = [
    ("too-few", (T, B, 5), [1, 2, 3], ValueError, r"one length per sequence \(4\).*\(3,\)"),
    ("too-many", (T, B, 5), [1, 2, 3, 4, 5], ValueError, r"one length per sequence"),
    ("2-d", (T, B, 5), torch.ones(B, 1, dtype=torch.int64), ValueError, r"1-D.*\(4, 1\)"),
    ("scalar", (T, B, 5), torch.tensor(3), ValueError, r"1-D.*\(\)"),
    ("zero", (T, B, 5), [1, 0, 3, 4], ValueError, r"\[1, T=6\].*\[0, 4\].*length of 0"),
    ("negative", (T, B, 5), [1, -2, 3, 4], ValueError, r"\[1, T=6\].*\[-2, 4\]"),
    ("beyond-T", (T, B, 5), [1, 7, 3, 4], ValueError, r"\[1, T=6\].*\[1, 7\]"),
    ("beyond-T-batch-first", (B, T, 5), [1, 7, 3, 4], ValueError, r"\[1, T=6\].*\[1, 7\]"),
    ("float-tensor", (T, B, 5), torch.tensor([1.0, 2.0, 3.0, 4.0]), ValueError,
     r"integers, got dtype torch.float32"),
    ("float-list", (T, B, 5), [1, 2.5, 3, 4], ValueError, r"integers, got dtype torch.float"),
    ("bool-tensor", (T, B, 5), torch.ones(B, dtype=torch.bool), ValueError, r"integers"),
    ("string", (T, B, 5), "1234", ValueError, r"integer tensor or a list of ints.*str"),
    ("unbatched", (T, 5), [T], ValueError, r"batched \(3-D\) input"),
]


@pytest.mark.parametrize("name,shape,lengths,error,match", ERRORS, ids=[e[0] for e in ERRORS])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_errors(cell, name, shape, lengths, error, match):
    _, ours = make_pair(cell, num_layers=2, bidirectional=True, batch_first=shape[0] == B)
    with pytest.raises(error, match=match):
        ours(torch.randn(shape, dtype=torch.float64), lengths=lengths)


def test_lengths_with_a_packed_sequence_is_an_error():
    _, ours = make_pair("gru")
    x = pack_padded_sequence(torch.randn(T, B, 5, dtype=torch.float64), [2, 6, 1, 5],
                             enforce_sorted=False)
    with pytest.raises(ValueError, match="PackedSequence carries its own lengths"):
        ours(x, lengths=[2, 6, 1, 5])


def test_input_errors_come_first_as_in_torch_nn():
    """A wrong input is reported with torch.nn's message for it, before its lengths are looked
    at (torch.nn's packing route would refuse the length 0 first: pack_padded_sequence runs
    before the layer; here the layer's own input check comes first, as in a padded call)."""
    ref, ours = make_pair("gru")
    x = torch.randn(T, B, 7, dtype=torch.float64)
    with pytest.raises(RuntimeError) as expected:
        ref(x)
    with pytest.raises(RuntimeError) as actual:
        ours(x, lengths=[0, 1, 2, 3])
    assert str(actual.value) == str(expected.value)


def test_positional_arguments_keep_torch_nn_meaning():
    """The second positional argument is hx, as in torch.nn; lengths is keyword-only."""
    _, ours = make_pair("gru")
    x, h0 = torch.randn(T, B, 5, dtype=torch.float64), torch.randn(1, B, 4, dtype=torch.float64)
    out, h_n = ours(x, h0, lengths=[T] * B)
    torch.testing.assert_close(out, ours(x, h0)[0], atol=0, rtol=0)
    with pytest.raises(TypeError):
        ours(x, h0, [T] * B)


# torch.compile ---------------------------------------------------------------------------


class _Model(nn.Module):
    def __init__(self, cell, dropout=0.0):
        super().__init__()
        _, ext_cls, extra = module_classes(cell)
        self.rnn = ext_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                           dropout=dropout, dtype=torch.float64, **extra)
        self.head = nn.Linear(8, 1, dtype=torch.float64)

    def forward(self, x, lengths):
        out, state = self.rnn(x, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out).squeeze(-1), h_n


def _outputs_and_grads(model, x, lengths):
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    outs = model(x, lengths)
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum()
               for o in outs)
    loss.backward()
    return [o.detach() for o in outs] + [x.grad] + [p.grad for p in model.parameters()]


@pytest.fixture
def _dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True):
        yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_dynamo")
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_fullgraph_with_dynamic_lengths(cell):
    """One graph, no break, no recompilation for new lengths; outputs and every gradient
    equal eager's."""
    model = _Model(cell)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lengths in ([5, 2, 4], [1, 5, 3], [2, 2, 2]):
            lengths = torch.tensor(lengths)
            expected = _outputs_and_grads(model, x, lengths)
            actual = _outputs_and_grads(compiled, x, lengths)
            for i, (e, a) in enumerate(zip(expected, actual)):
                torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-9, msg=f"result {i}")


@pytest.mark.usefixtures("_dynamo")
def test_compiled_dynamic_shapes():
    """dynamic=True: one graph serves other T and B too (the check op takes T as a SymInt).
    No B equals the input size 3: dynamo would give both one symbol, which torch.nn's input
    size check then pins to 3."""
    model = _Model("lstm")
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for steps, lengths in ((5, [5, 2, 4, 1]), (7, [3, 7]), (4, [1, 4, 2, 3, 4])):
            x = torch.randn(len(lengths), steps, 3, dtype=torch.float64)
            lengths = torch.tensor(lengths)
            for e, a in zip(model(x, lengths), compiled(x, lengths)):
                torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-9)


@pytest.mark.usefixtures("_dynamo")
def test_compiled_checks_the_lengths_inside_the_graph():
    compiled = torch.compile(_Model("gru"), fullgraph=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    compiled(x, torch.tensor([5, 2, 4]))
    for bad, values in (([0, 2, 4], r"\[0, 4\]"), ([6, 2, 4], r"\[2, 6\]")):
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=5\].*" + values):
            compiled(x, torch.tensor(bad))


@pytest.mark.usefixtures("_dynamo")
def test_compiled_dropout_in_training():
    """Compiled, dropout is drawn on the padded output (compiled code has its own random
    numbers): a full graph, outputs zero past each end, a mask that changes the result."""
    model = _Model("lstm", dropout=0.5).train()
    compiled = torch.compile(model.rnn, fullgraph=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    out, _ = compiled(x, lengths=lengths)
    assert (out[1, 2:] == 0).all() and (out[2, 4:] == 0).all()
    model.eval()
    without, _ = model.rnn(x, lengths=lengths)
    assert not torch.allclose(out, without)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[1, 2:] == 0).all()


# On a GPU --------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_on_the_gpu_equal_lengths_on_the_cpu(cell):
    case = _lengths_case(cell, device="cuda")
    _, ours = case.make_pair()
    inputs = make_inputs(case)
    expected = run(ours, case, inputs)
    inputs["lengths"] = inputs["lengths"].cuda()
    assert_same(expected, run(ours, case, inputs), atol=0, rtol=0)


@pytest.mark.cuda
def test_host_lengths_cost_no_device_sync():
    """Lengths on the CPU with a GPU input: nothing waits for the GPU (torch's sync debug mode
    turns any synchronising call into an error)."""
    _, ours = make_pair("lstm", num_layers=2, bidirectional=True, device="cuda")
    x = torch.randn(T, B, 5, dtype=torch.float64, device="cuda")
    lengths = torch.tensor([2, 6, 1, 5])
    ours(x, lengths=lengths)  # the first call on a thread sets up its streams and handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            ours(x, lengths=lengths)
            ours(x, lengths=lengths.tolist())
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_dropout_with_host_lengths_costs_no_device_sync_and_refuses_capture():
    """Training with inter-layer dropout copies the packed-row index to the GPU each call:
    without a sync, and, since a host copy cannot be recorded in a graph, refused clearly
    during capture."""
    _, ours = make_pair("gru", num_layers=2, dropout=0.3, device="cuda")
    ours.train()
    x = torch.randn(T, B, 5, dtype=torch.float64, device="cuda")
    lengths = torch.tensor([2, 6, 1, 5])
    ours(x, lengths=lengths)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ours(x, lengths=lengths)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            ours(x, lengths=lengths)
    assert ours(x, lengths=lengths)[0].isfinite().all()  # CUDA still usable


@pytest.mark.cuda
def test_gpu_lengths_during_capture_raise_clearly():
    _, ours = make_pair("gru", device="cuda")
    x = torch.randn(T, B, 5, dtype=torch.float64, device="cuda")
    lengths = torch.tensor([2, 6, 1, 5], device="cuda")
    with torch.no_grad():
        expected = ours(x, lengths=lengths)[0]  # also the warm-up
        with pytest.raises(RuntimeError, match="cannot be read during CUDA graph capture"):
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                ours(x, lengths=lengths)
        torch.testing.assert_close(ours(x, lengths=lengths)[0], expected, atol=0, rtol=0)
