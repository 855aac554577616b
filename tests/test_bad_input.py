"""Bad input tried as a user would, beyond torch.nn's own argument checks (test_errors.py):
each gets torch.nn's behaviour or a clear error, never a crash or a wrong answer.

Where torch.nn accepts the input, birnn_ext must give torch.nn's numbers; where torch.nn
rejects it with a message of its own, birnn_ext gives the same; where torch.nn's message is
an accident of its implementation (a GEMM's or a slice's complaint), birnn_ext raises the
same exception type with a message that names the problem.
"""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from birnn_ext import ops
from helpers import (CELLS, TOL, Case, assert_same, check_low_precision, make_inputs, make_pair,
                     run)
from test_errors import _error, assert_same_error


def _state(cell, h):
    return (h, torch.zeros_like(h)) if cell == "lstm" else h


@pytest.mark.parametrize("cell", CELLS)
def test_lengths_as_a_list(cell, backend):
    """pack_padded_sequence takes lengths as a list: the same packed result as torch.nn."""
    ref, ours = make_pair(cell, bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    expected, actual = (m(pack_padded_sequence(x, [5, 2, 3], enforce_sorted=False))
                        for m in (ref, ours))
    torch.testing.assert_close(actual[0].data, expected[0].data, **TOL[torch.float64])
    torch.testing.assert_close(actual[1], expected[1], **TOL[torch.float64])


@pytest.mark.parametrize("lengths", [[5, 2, 3], (5, 2, 3)], ids=["list", "tuple"])
def test_op_lengths_as_a_python_sequence(lengths, backend):
    """The op-level layer() wants a tensor: a list or tuple is refused with a type error
    naming the argument, not read as something else."""
    _, ours = make_pair("gru", bidirectional=True)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    h0 = torch.zeros(2, 3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="lengths"):
        ops.layer("gru", x, lengths, h0, None, *ours._layer_weights(0))


@pytest.mark.parametrize("input_dtype,model_dtype", [
    (torch.float64, torch.float32), (torch.float32, torch.float64),
    (torch.int64, torch.float32), (torch.int32, torch.float64), (torch.bool, torch.float32),
    (torch.uint8, torch.float32), (torch.complex64, torch.float32)])
@pytest.mark.parametrize("cell", CELLS)
def test_input_dtype_other_than_the_weights(cell, input_dtype, model_dtype, backend):
    """float64 input to a float32 model (and the reverse), integer, bool and complex input:
    torch.nn's ValueError, word for word."""
    ref, ours = make_pair(cell, dtype=model_dtype)
    x = torch.ones(6, 3, 5, dtype=input_dtype)
    assert_same_error(lambda: ref(x), lambda: ours(x))


@pytest.mark.parametrize("cell", CELLS)
def test_packed_float64_input_to_a_float32_model(cell, backend):
    """torch.nn's error here is a GEMM's dtype complaint (its packed path skips the dtype
    check); birnn_ext raises its usual dtype message as a ValueError."""
    ref, ours = make_pair(cell, dtype=torch.float32)
    packed = pack_padded_sequence(torch.randn(6, 3, 5, dtype=torch.float64), [6, 4, 2])
    assert _error(lambda: ref(packed)) is not None
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight "
                                         r"dtype \(torch.float32\)"):
        ours(packed)


def _packed(batch_sizes, rows, dtype=torch.int64):
    return PackedSequence(torch.randn(rows, 5, dtype=torch.float64),
                          torch.tensor(batch_sizes, dtype=dtype))


# Hand-made PackedSequences whose batch_sizes do not describe their data. torch.nn raises on
# all but "extra-rows" (it reads the first sum(batch_sizes) rows and ignores the rest);
# torch's pad_packed_sequence, which birnn_ext's layers use, does not check them and for a
# growing or zero size wrote out of bounds (a heap corruption that crashed the process).
BAD_PACKED = {
    "growing": ([1, 3, 1], 5),
    "zero-inside": ([3, 0, 1], 4),
    "growing-at-end": ([3, 2, 5], 10),
    "too-few-rows": ([3, 3], 5),
    "extra-rows": ([3, 3], 7),
    "int32": ([3, 3], 6, torch.int32),
}


@pytest.mark.parametrize("name", BAD_PACKED)
@pytest.mark.parametrize("cell", CELLS)
def test_hand_made_packed_sequence_with_inconsistent_batch_sizes(cell, name, backend):
    ref, ours = make_pair(cell, bidirectional=True)
    packed = _packed(*BAD_PACKED[name])
    if name != "extra-rows":
        assert _error(lambda: ref(packed)) is not None, "torch.nn accepts it"
    with pytest.raises(RuntimeError, match="birnn_ext: a PackedSequence's batch_sizes"):
        ours(packed)


@pytest.mark.parametrize("batch_sizes,rows", [([3, 2, 2, 1, 1, 0], 9), ([0, 0], 0)],
                         ids=["trailing-zero", "all-zero"])
@pytest.mark.parametrize("cell", CELLS)
def test_hand_made_packed_sequence_with_zero_batch_sizes_at_the_end(cell, batch_sizes, rows,
                                                                   backend):
    """Trailing zeros in batch_sizes (steps no sequence reaches; all steps, for a batch of
    0) are consistent, and torch.nn runs them: so does birnn_ext, with torch.nn's results."""
    ref, ours = make_pair(cell, bidirectional=True)
    packed = _packed(batch_sizes, rows)
    expected, actual = ref(packed), ours(packed)
    torch.testing.assert_close(actual[0].data, expected[0].data, **TOL[torch.float64])
    assert torch.equal(actual[0].batch_sizes, expected[0].batch_sizes)
    for got, want in zip(*(s if isinstance(s, tuple) else (s,) for s in (actual[1], expected[1]))):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("cell", CELLS)
def test_h0_requiring_grad_on_a_frozen_model(cell, backend):
    """Every parameter frozen, h0 (and x) requiring grad, as when optimising an initial
    state: torch.nn's outputs and gradients of x, h0 and c0; no parameter gets a gradient."""
    case = Case(cell=cell, mode="packed", bidirectional=True, num_layers=2, h0=True)
    ref, ours = case.make_pair()
    for model in (ref, ours):
        model.requires_grad_(False)
    inputs = make_inputs(case)
    expected, actual = run(ref, case, inputs), run(ours, case, inputs)
    assert actual["grad.h0"] is not None and all(
        v is None for k, v in actual.items() if k.startswith("grad.") and
        k not in ("grad.x", "grad.h0", "grad.c0"))
    assert_same(expected, actual, **TOL[torch.float64])


@pytest.mark.parametrize("cell", CELLS)
def test_half_on_the_cpu(cell, backend):
    """model.half() on the CPU, as a user shrinking a model would: torch.nn runs it, so
    birnn_ext must too, as close to the float64 result as torch.nn's float16 is."""
    case = Case(cell=cell, mode="packed", bidirectional=True, num_layers=2, h0=True,
                dtype=torch.float16)
    ref, ours = Case(cell=cell, bidirectional=True, num_layers=2).make_pair()  # float64
    check_low_precision(case, ref.half(), ours.half())


@pytest.mark.cuda
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_input_with_cpu_weights(cell, backend):
    """A CUDA input (or h0) for a model left on the CPU: torch.nn's error, word for word."""
    ref, ours = make_pair(cell)
    x = torch.randn(6, 3, 5, dtype=torch.float64, device="cuda")
    assert_same_error(lambda: ref(x), lambda: ours(x))
    x_cpu = x.cpu()
    hx = _state(cell, torch.zeros(1, 3, 4, dtype=torch.float64, device="cuda"))
    assert_same_error(lambda: ref(x_cpu, hx), lambda: ours(x_cpu, hx))
