"""NaN and inf reach the same outputs and gradients as in torch.nn: the cases the fuzzing
(tests/test_fuzz.py) found wrong, pinned as plain tests.

- relu: torch.relu keeps a NaN and its derivative (threshold_backward) passes the gradient
  on where h is NaN; birnn_ext's relu turned NaN into 0, and its derivative gave 0.

Hidden size 20: 16 units through the AVX-512 loops (8 and 4 with AVX2) and a scalar tail,
so each cell function runs in its vector and its scalar form.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import assert_same_nonfinite, make_pair

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4)}


def run(model, x, h0, lengths):
    """Output (packed data), h_n, c_n and every gradient, for a loss weighing each output
    element differently."""
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    hx = (h0, torch.zeros_like(h0)) if isinstance(model, torch.nn.LSTM) else h0
    model.zero_grad(set_to_none=True)
    out, state = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    gen = torch.Generator().manual_seed(5)
    results = dict(output=out.data, h_n=h_n, c_n=c_n)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
               for t in results.values() if t is not None)
    loss.backward()
    results.update({"grad.x": x.grad, "grad.h0": h0.grad})
    results.update({f"grad.{n}": p.grad for n, p in model.named_parameters()})
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_relu_keeps_nan_like_torch_nn(dtype, backend):
    ref, ours = make_pair("rnn_relu", input_size=3, hidden_size=20, dtype=dtype,
                          bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=dtype)
    x[1, 0, 2] = float("nan")  # sequence 0, step 1: NaN from there on in direction 0
    h0 = torch.randn(2, 2, 20, dtype=dtype)
    lengths = torch.tensor([4, 3])
    expected, actual = run(ref, x, h0, lengths), run(ours, x, h0, lengths)
    assert expected["output"].isnan().any() and not expected["grad.x"].isnan().all()
    assert_same_nonfinite(expected, actual, **TOL[dtype])
