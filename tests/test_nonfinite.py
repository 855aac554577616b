"""NaN and inf reach the same outputs and gradients as in torch.nn: the cases the fuzzing
(tests/test_fuzz.py) found wrong, pinned as plain tests.

- relu: torch.relu keeps a NaN and its derivative (threshold_backward) passes the gradient
  on where h is NaN; birnn_ext's relu turned NaN into 0, and its derivative gave 0.
- padded steps: torch.nn never sees a step past a sequence's end, but birnn_ext's weight
  gradient dW_hh = sum dgates^T h_prev ran over them with zero dgates and the state the
  step would have started from, which for a sequence whose state went inf or NaN (or with
  such an h0) put 0 * inf = NaN into an otherwise finite dW_hh. The fuzzing's own example
  of it (an inf h0 in a GRU) is pinned in tests/test_fuzz.py.
- the padding of a lengths= batch: the layer reads the caller's tensor, whose padding
  torch.nn's packing route never reads, so it may hold anything; dW_ih = sum dgates_x^T x
  ran over it with zero dgates, and NaN or inf there made dW_ih NaN.

Hidden size 20: 16 units through the AVX-512 loops (8 and 4 with AVX2) and a scalar tail,
so each cell function runs in its vector and its scalar form.
"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from helpers import CELLS, assert_same_nonfinite, make_pair

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_state_gone_inf_at_a_sequence_end(bidirectional, dtype, backend):
    """A relu state that goes inf at the last step of a sequence shorter than T: no
    valid step reads that state back, so torch.nn's dW_hh stays finite; birnn_ext's padded
    steps after the sequence's end must not bring it in either."""
    ref, ours = make_pair("rnn_relu", input_size=3, hidden_size=20, dtype=dtype,
                          bidirectional=bidirectional)
    x = torch.randn(4, 3, 3, dtype=dtype)
    x[1, 0, 0] = float("inf")  # the last step of sequence 0, whose length is 2 of 4
    h0 = torch.randn(2 if bidirectional else 1, 3, 20, dtype=dtype)
    lengths = torch.tensor([2, 4, 3])
    expected, actual = run(ref, x, h0, lengths), run(ours, x, h0, lengths)
    # The case is only worth its name if the state went inf and dW_hh stayed finite.
    assert expected["h_n"][0, 0].isinf().any()
    assert torch.isfinite(expected["grad.weight_hh_l0"]).all()
    assert_same_nonfinite(expected, actual, **TOL[dtype])


# float32 on the CPU: the backward's dx and weight gradients on birnn_ext's GEMMs and on ATen's
# (BIRNN_EXT_CPU_BACKWARD_GEMMS), which mask the padding each their own way.
@pytest.mark.parametrize("dtype, engine", [(torch.float64, "auto"), (torch.float32, "own"),
                                           (torch.float32, "aten")],
                         ids=["float64", "float32-own", "float32-aten"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_garbage_in_the_padding_of_a_lengths_batch(cell, bidirectional, dtype, engine, backend,
                                                   monkeypatch):
    """NaN, inf and -inf past each sequence's end in a batch given with lengths=: nothing of
    them reaches any result or gradient, as in torch.nn's pack/unpack route for it."""
    monkeypatch.setenv("BIRNN_EXT_CPU_BACKWARD_GEMMS", engine)
    ref, ours = make_pair(cell, input_size=3, hidden_size=20, dtype=dtype, num_layers=2,
                          bidirectional=bidirectional)
    T, lengths = 5, torch.tensor([2, 5, 3])
    x = torch.randn(T, 3, 3, dtype=dtype)
    x[2:, 0] = float("nan")
    x[3:, 2, 0] = float("inf")
    x[3:, 2, 1] = -float("inf")
    results = []
    for model in (ref, ours):
        leaf = x.clone().requires_grad_()
        model.zero_grad(set_to_none=True)
        if model is ref:
            packed = pack_padded_sequence(leaf, lengths, enforce_sorted=False)
            out, state = model(packed)
            out = pad_packed_sequence(out, total_length=T)[0]
        else:
            out, state = model(leaf, lengths=lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        gen = torch.Generator().manual_seed(5)
        (out * torch.randn(out.shape, generator=gen, dtype=dtype)).sum().add(h_n.sum()).backward()
        got = dict(output=out, h_n=h_n, grad_x=leaf.grad)
        got.update({f"grad.{n}": p.grad for n, p in model.named_parameters()})
        results.append(got)
    expected, actual = results
    assert all(torch.isfinite(v).all() for k, v in expected.items() if k != "grad_x")
    assert_same_nonfinite(expected, actual, **TOL[dtype])
