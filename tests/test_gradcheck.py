"""Finite-difference gradient checks (float64) of birnn_ext.ops.layer and of whole modules,
with varying sequence lengths, through both CPU backends (compiled ops and Python fallback)."""

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import CELLS, layer_of_tensors, make_pair, op_inputs

LAYER_CASES = [
    # (directions, bias, proj, lengths)
    (2, True, 0, (3, 1, 4)),    # bidirectional, unsorted lengths with a length-1 sequence
    (2, False, 0, (4, 0, 2)),   # an empty sequence: zero output, h_n = h0
    (1, True, 0, None),         # unidirectional, full lengths
]
LSTM_PROJ_CASES = [(2, True, 2, (2, 4, 1)), (1, False, 2, None)]


def _cases():
    for cell in CELLS:
        for case in LAYER_CASES + (LSTM_PROJ_CASES if cell == "lstm" else []):
            directions, bias, proj, lengths = case
            yield pytest.param(cell, *case,
                               id=f"{cell}-D{directions}-{'bias' if bias else 'nobias'}"
                                  f"-proj{proj}-{'len' + ''.join(map(str, lengths)) if lengths else 'full'}")


@pytest.mark.parametrize("cell,directions,bias,proj,lengths", list(_cases()))
def test_layer_gradcheck(cell, directions, bias, proj, lengths, backend):
    args = op_inputs(cell, directions, bias, proj, lengths, requires_grad=True)
    fn, tensors = layer_of_tensors(cell, args)
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_module_gradcheck_packed(cell, backend):
    """A 2-layer bidirectional module on a PackedSequence (unsorted lengths), w.r.t. the
    padded input, h0 and every parameter."""
    _, model = make_pair(cell, input_size=2, hidden_size=2, num_layers=2, bidirectional=True)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    lengths = torch.tensor([2, 3, 1])
    x = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, h0, *params):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = (h0, torch.tanh(h0)) if cell == "lstm" else h0
        out, state = functional_call(model, dict(zip(names, params)), (packed, hx))
        states = state if cell == "lstm" else (state,)
        return (out.data, *states)

    assert torch.autograd.gradcheck(fn, [x, h0, *params], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_is_right_or_refused(cell, backend):
    """A gradient penalty differentiates a gradient (double backward). torch.nn on the CPU
    supports it; birnn_ext must give the same parameter gradients or raise a RuntimeError,
    never silently drop the second-order term."""
    ref, ours = make_pair(cell, input_size=3, hidden_size=2, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    grads = []
    for model in (ref, ours):
        xr = x.clone().requires_grad_()
        try:
            gx, = torch.autograd.grad(model(xr)[0].sum(), xr, create_graph=True)
            (gx ** 2).sum().backward()
        except RuntimeError:
            assert model is ours, "torch.nn refused double backward"
            return
        grads.append([p.grad for p in model.parameters()])
    for name, e, g in zip([n for n, _ in ref.named_parameters()], *grads):
        assert g is not None, f"{name}: second-order gradient silently dropped"
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize("cell,used", [(cell, used) for cell in CELLS
                                       for used in ("output", "h_n", "c_n")
                                       if used != "c_n" or cell == "lstm"])
def test_loss_of_one_output_like_torch_nn(cell, used, backend):
    """A loss of only one of (output, h_n, c_n): the others reach the backward without a
    gradient (the ops do not ask autograd for zeros), and every gradient still matches
    torch.nn's in float64."""
    ref, ours = make_pair(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    grads = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_()
        out, state = model(xi)
        h_n, c_n = state if cell == "lstm" else (state, None)
        loss_of = {"output": out, "h_n": h_n, "c_n": c_n}[used]
        # The same random weights for both models: a generator seeded alike each time.
        weight = torch.randn(loss_of.shape, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(1))
        (loss_of * weight).sum().backward()
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    for expected, actual in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
