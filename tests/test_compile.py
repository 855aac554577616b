"""torch.compile(fullgraph=True): a model holding birnn_ext layers (dynamo needs allow_rnn for
torch.nn RNN subclasses) and birnn_ext.ops.layer (no flag needed), compared with eager."""

import pytest
import torch
from torch import nn

import birnn_ext
from birnn_ext import ops
from helpers import CELLS, layer_of_tensors, module_classes, op_inputs


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Model(nn.Module):
    def __init__(self, cell):
        super().__init__()
        _, ext_cls, extra = module_classes(cell)
        self.rnn = ext_cls(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, **extra)
        self.head = nn.Linear(8, 1, dtype=torch.float64)

    def forward(self, x, h0):
        hx = (h0, torch.tanh(h0)) if isinstance(self.rnn, nn.LSTM) else h0
        out, state = self.rnn(x, hx)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(out).squeeze(-1), h_n


def _run(fn, *args, params=()):
    """Outputs, and the gradients of a weighted sum of them w.r.t. args and params."""
    args = [a.detach().clone().requires_grad_() for a in args]
    outs = [o for o in fn(*args) if o is not None]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, args + list(params))
    return [o.detach() for o in outs] + list(grads)


def _assert_close(expected, actual):
    assert len(expected) == len(actual)
    for i, (e, a) in enumerate(zip(expected, actual)):
        torch.testing.assert_close(a, e, atol=1e-10, rtol=1e-9, msg=f"result {i}")


@pytest.mark.parametrize("cell", CELLS)
def test_compiled_module_fullgraph(cell):
    model = _Model(cell)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64)
    params = list(model.parameters())
    eager = _run(model, x, h0, params=params)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True)
        _assert_close(eager, _run(compiled, x, h0, params=params))


def test_compiled_module_unbatched_batch_first():
    _, ext_cls, _ = module_classes("gru")
    model = ext_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                    dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)       # unbatched [T, I]
    h0 = torch.randn(4, 4, dtype=torch.float64)      # unbatched [L*D, H]
    params = list(model.parameters())
    eager = _run(model, x, h0, params=params)
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(model, fullgraph=True)
        _assert_close(eager, _run(compiled, x, h0, params=params))


@pytest.mark.parametrize("backend_name", ["cpp", "python"])
@pytest.mark.parametrize("cell", CELLS)
def test_compiled_layer_fullgraph(cell, backend_name):
    birnn_ext.set_backend(backend_name)
    args = op_inputs(cell, 2, True, 2 if cell == "lstm" else 0, (3, 1, 4))
    fn, tensors = layer_of_tensors(cell, args)
    eager = _run(fn, *tensors)
    compiled = torch.compile(fn, fullgraph=True)
    _assert_close(eager, _run(compiled, *tensors))


def test_compiled_layer_dynamic_shapes():
    """One compiled graph serves other T and B (dynamic=True)."""
    compiled = torch.compile(ops.layer, fullgraph=True, dynamic=True)
    for steps, lengths in ((4, (3, 1, 4)), (6, (6, 2)), (3, (1, 3, 2, 3))):
        args = op_inputs("gru", 2, True, 0, lengths, steps=steps)
        expected = ops.layer("gru", *args)
        got = compiled("gru", *args)
        for e, g in zip(expected[:2], got[:2]):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-9)
