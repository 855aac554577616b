"""Both directions' weights as one block of memory (birnn_ext/_weights.py): the ops read the
parameters themselves, never a stale copy, whatever updates them, and every torch.nn way of
creating, moving, replacing or copying parameters keeps working."""

import copy
import io

import pytest
import torch
from torch import nn

import birnn_ext
from birnn_ext import _weights
from helpers import CELLS, make_pair, module_classes


def _pairs(module):
    names = module._flat_weights_names
    return [(getattr(module, n), getattr(module, n + "_reverse")) for n in names
            if not n.endswith("_reverse")]


def _assert_side_by_side(module):
    for first, second in _pairs(module):
        assert _weights._side_by_side(first, second)


def _same_outputs(ref, ours, x):
    tol = 1e-12 if x.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=tol, rtol=tol)


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_side_by_side_and_stacked_without_a_copy(cell):
    _, ours = make_pair(cell, num_layers=2, bidirectional=True,
                        **({"proj_size": 2} if cell == "lstm" else {}))
    _assert_side_by_side(ours)
    first, second = ours.weight_hh_l1, ours.weight_hh_l1_reverse
    with torch.no_grad():
        view = _weights.stacked([first, second])
    assert view.data_ptr() == first.data_ptr()
    assert torch.equal(view, torch.stack([first, second]))
    grad_view = _weights.stacked([first, second])   # parameters require grad
    assert grad_view.data_ptr() == first.data_ptr() and grad_view.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_never_stale(cell):
    """Writes that bump no version counter (through .data) are seen, as are optimizer steps
    and load_state_dict."""
    ref, ours = make_pair(cell, bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    _same_outputs(ref, ours, x)
    for model in (ref, ours):
        model.weight_hh_l0_reverse.data.mul_(-0.5)
        model.bias_ih_l0.data.add_(0.25)
    _same_outputs(ref, ours, x)
    ours.load_state_dict(ref.state_dict())
    _same_outputs(ref, ours, x)
    for model in (ref, ours):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x)[0].square().sum().backward()
        optimizer.step()
    _same_outputs(ref, ours, x)


def test_gradients_reach_both_directions():
    ref, ours = make_pair("gru", bidirectional=True)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    for model in (ref, ours):
        model(x)[0].square().sum().backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-12, rtol=1e-10, msg=name)


def test_moved_converted_copied_and_saved():
    ref, ours = make_pair("lstm", num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 5)
    ours.float()            # a new tensor per parameter: flattened again
    ref.float()
    _assert_side_by_side(ours)
    _same_outputs(ref, ours, x)
    twin = copy.deepcopy(ours)
    _assert_side_by_side(twin)
    _same_outputs(ref, twin, x)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    _assert_side_by_side(loaded)
    _same_outputs(ref, loaded, x)
    converted = birnn_ext.convert(copy.deepcopy(ref))
    _assert_side_by_side(converted)
    _same_outputs(ref, converted, x)


def test_replaced_parameter_is_stacked_by_copying():
    ref, ours = make_pair("rnn_tanh", bidirectional=True)
    fresh = torch.randn_like(ours.weight_ih_l0_reverse)
    ref.weight_ih_l0_reverse = nn.Parameter(fresh.clone())
    ours.weight_ih_l0_reverse = nn.Parameter(fresh.clone())
    _same_outputs(ref, ours, torch.randn(4, 2, 5, dtype=torch.float64))


def test_functional_call_leaves_the_given_tensors_alone():
    ref, ours = make_pair("gru", bidirectional=True)
    given = {n: p.detach().clone().requires_grad_() for n, p in ours.named_parameters()}
    pointers = {n: t.data_ptr() for n, t in given.items()}
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    out = torch.func.functional_call(ours, given, (x,))[0]
    expected = torch.func.functional_call(ref, given, (x,))[0]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    assert {n: t.data_ptr() for n, t in given.items()} == pointers
    grads = torch.autograd.grad(out.sum(), list(given.values()))
    assert all(g is not None for g in grads)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_meta_device(cell):
    _, ext_cls, extra = module_classes(cell)
    model = ext_cls(5, 4, bidirectional=True, device="meta", **extra)
    assert model(torch.randn(3, 2, 5, device="meta"))[0].shape == (3, 2, 8)
