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


@pytest.mark.parametrize("cell", CELLS)
def test_inference_follows_every_change_of_the_weights(cell):
    """Without autograd a layer reuses its stacked views between calls (_weights,
    stacked_layer_of): writes through .data, a replaced Parameter, a Parameter given other
    memory (.data = ...), a transposed square weight and a move to another dtype are all
    seen at the next call, as torch.nn sees them."""
    ref, ours = make_pair(cell, input_size=16, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 16, dtype=torch.float64)

    def check():
        with torch.no_grad():
            _same_outputs(ref, ours, x.to(ref.weight_hh_l0.dtype))

    def both(change):
        for model in (ref, ours):
            change(model)
        check()

    check()
    check()  # the reused views
    both(lambda m: m.weight_hh_l1_reverse.data.mul_(-0.5))
    fresh = torch.randn_like(ours.weight_ih_l0)
    both(lambda m: setattr(m, "weight_ih_l0", nn.Parameter(fresh.clone())))
    fresh = torch.randn_like(ours.bias_hh_l1)
    both(lambda m: setattr(m.bias_hh_l1, "data", fresh.clone()))
    # weight_ih_l0 is [G*4, 16]: square for the LSTM, whose transpose keeps shape and address
    if ours.weight_ih_l0.shape[0] == ours.weight_ih_l0.shape[1]:
        both(lambda m: setattr(m.weight_ih_l0, "data", m.weight_ih_l0.data.t()))
    both(lambda m: m.float())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parametrized_weight_like_torch_nn(cell):
    """A parametrization turns a weight into a property of a subclass: the weight is
    recomputed at every call, with and without autograd."""
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    ref, ours = make_pair(cell, bidirectional=True)
    for model in (ref, ours):
        parametrize.register_parametrization(model, "weight_hh_l0_reverse", Doubled())
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        _same_outputs(ref, ours, x)
    _same_outputs(ref, ours, x)
    for model in (ref, ours):
        model.parametrizations.weight_hh_l0_reverse.original.data.mul_(-1)
    with torch.no_grad():
        _same_outputs(ref, ours, x)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_in_place_change_between_forward_and_backward_raises_like_torch_nn(cell):
    """Autograd sees a weight changed in place after the forward, as with torch.nn."""
    ref, ours = make_pair(cell, bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    for model in (ref, ours):
        loss = model(x)[0].sum()
        with torch.no_grad():
            model.weight_hh_l0_reverse.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_func_grad_like_torch_nn(cell):
    """Under a functorch transform the layer goes through the op's own autograd
    registration (ops.layer); the gradients are torch.nn's."""
    ref, ours = make_pair(cell, bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    params = {n: p.detach() for n, p in ours.named_parameters()}

    def loss(model):
        return lambda p: torch.func.functional_call(model, p, (x,))[0].square().sum()

    got, expected = torch.func.grad(loss(ours))(params), torch.func.grad(loss(ref))(params)
    for name in params:
        torch.testing.assert_close(got[name], expected[name], atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize("weights", ["trained", "frozen"])
@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l0_reverse", "weight_ih_l0_reverse"])
def test_in_place_change_raises_like_torch_nn_when_only_dx_is_asked(name, weights):
    """Only the input's gradient asked for: autograd then never runs the node that stacks
    the weights, and the op read a view whose version counter is the first direction's;
    a change of either direction's weight, trained or frozen, still raises as torch.nn's,
    instead of a gradient computed with weights the forward never saw. (A first-direction
    weight that is trained raises through the stacked view itself, with autograd's message
    for a view whose base changed.)"""
    ref, ours = make_pair("lstm", bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64, requires_grad=True)
    for model in (ref, ours):
        model.requires_grad_(weights == "trained")
        loss = model(x)[0].square().sum()
        with torch.no_grad():
            getattr(model, name).mul_(3.0)
        changed = "modified by an inplace operation|modified inplace"
        with pytest.raises(RuntimeError, match=changed):
            torch.autograd.grad(loss, x)


def test_bias_changed_in_place_raises_where_torch_nn_does_not():
    """Stricter than torch.nn, on purpose: a bias changed in place before the backward
    raises (the op saves every weight it read), where torch.nn's LSTM, whose input gradient
    does not read the bias, lets it pass."""
    ref, ours = make_pair("lstm", bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64, requires_grad=True)
    losses = [model(x)[0].square().sum() for model in (ref, ours)]
    with torch.no_grad():
        for model in (ref, ours):
            model.bias_ih_l0_reverse.mul_(3.0)
    torch.autograd.grad(losses[0], x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(losses[1], x)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_vmap_over_an_ensemble(bidirectional, grad):
    """torch.func.stack_module_state + vmap(functional_call) gives each model's own output
    (torch.nn's LSTM has no batching rule; each torch.nn model run alone is the truth). The
    weights are batched tensors with no memory, so neither the inference cache nor the views
    may touch them."""
    pairs = [make_pair("lstm", bidirectional=bidirectional) for _ in range(3)]
    for ref, _ in pairs:
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(torch.randn_like(p))
    models = [ours for _, ours in pairs]
    for (ref, _), ours in zip(pairs, models):
        ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def run(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))[0]

    with torch.set_grad_enabled(grad):
        got = torch.vmap(run, in_dims=(0, 0, None))(params, buffers, x)
    expected = torch.stack([ref(x)[0] for ref, _ in pairs])
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    if grad:  # the stacked parameters' gradients: each model's own, as torch.nn's
        got.square().sum().backward()
        for i, (ref, _) in enumerate(pairs):
            names = [n for n, _ in ref.named_parameters()]
            grads = torch.autograd.grad(ref(x)[0].square().sum(), list(ref.parameters()))
            for name, g in zip(names, grads):
                torch.testing.assert_close(params[name].grad[i], g, atol=1e-10, rtol=1e-9,
                                           msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_jit_trace_saved_and_loaded_like_torch_nn(cell, bidirectional):
    """torch.jit.trace with its own check (which re-traces under no_grad), saved, loaded:
    outputs and gradients as torch.nn's eager module, and the traced module reads the
    original's parameters."""
    ref, ours = make_pair(cell, bidirectional=bidirectional)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    traced = torch.jit.trace(ours, x)
    assert not [n for n in traced.graph.nodes() if n.kind() == "prim::PythonOp"]
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    expected = ref(x)[0]
    got = loaded(x)[0]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    grads = torch.autograd.grad(got.square().sum(), list(loaded.parameters()))
    expected_grads = torch.autograd.grad(expected.square().sum(), list(ref.parameters()))
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], expected, atol=1e-12, rtol=1e-10)
        ours.weight_hh_l0.mul_(2.0)
        ref.weight_hh_l0.mul_(2.0)
        torch.testing.assert_close(traced(x)[0], ref(x)[0], atol=1e-12, rtol=1e-10)



@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_torch_func_transforms_like_torch_nn(cell, bidirectional):
    """vjp, jacrev, hessian and grad of grad w.r.t. the input, as torch.nn's (the layer
    takes the reference under a transform: through the op, vjp and jacrev gave zeros)."""
    ref, ours = make_pair(cell, bidirectional=bidirectional)
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    cotangent = torch.randn(4, 2, ref(x)[0].shape[-1], dtype=torch.float64)
    results = []
    for model in (ref, ours):
        _, pullback = torch.func.vjp(lambda x: model(x)[0], x)
        results.append([
            pullback(cotangent)[0],
            torch.func.jacrev(lambda x: model(x)[0].sum(0))(x),
            torch.func.hessian(lambda x: model(x)[0].square().sum())(x[:2, :1]),
            torch.func.grad(lambda x: torch.func.grad(
                lambda y: model(y)[0].square().sum())(x).square().sum())(x),
        ])
    for name, got, expected in zip(["vjp", "jacrev", "hessian", "grad of grad"], *results[::-1]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9, msg=name)


def test_traced_frozen_model_trains_like_torch_nn():
    """Traced with every weight frozen (no tensor of the traced call needs a gradient), then
    asked for the input's gradient and, unfrozen, for the weights': as torch.nn's."""
    ref, ours = make_pair("lstm", bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    traced = []
    for model in (ref, ours):
        model.requires_grad_(False)
        traced.append(torch.jit.trace(model, x))
    xs = [x.clone().requires_grad_() for _ in traced]
    grads = [torch.autograd.grad(t(xi)[0].square().sum(), xi)[0] for t, xi in zip(traced, xs)]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-10, rtol=1e-9)
    for model in (ref, ours):
        model.requires_grad_(True)
    weights = [torch.autograd.grad(t(x)[0].square().sum(), list(m.parameters()))
               for t, m in zip(traced, (ref, ours))]
    for got, expected in zip(weights[1], weights[0]):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-9)
