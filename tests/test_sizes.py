"""Extreme sizes: buffers past 2^31 elements, and the explicit limits of the CPU path.

Index width. Every offset into a [T, B, D, G*H] buffer is computed in 64 bits in csrc/
(audited; T*B*G*H passes 2^31 in real models). What is 32-bit is the BLAS interface the
CPU path's per-step GEMMs use (MKL's sgemm_/dgemm_ and packed GEMM take int sizes and
leading dimensions): the batch size and D*G*H must fit in an int, and csrc/layer.cpp
checks so up front with a clear message. The CUDA path checks its own (cuBLAS's) limits in
csrc/cuda/recurrence_cuda.cu.

Tests:
- the limit checks, with stride-0 (expanded) tensors of 2^31 rows that take no memory: the
  check must come before anything is allocated;
- a layer whose input projection gates_x [T, B, D, G*H] holds more than 2^31 elements,
  run for real and compared with the same layer on a few of its sequences. That needs
  about 10 GiB (measured peak RSS) and 1-2 minutes on 2 cores, so it runs only with
  BIRNN_EXT_BIG_TESTS=1 (CI runs it once, as its own step in .ci/run; the README test
  command leaves it out).
"""

import os

import pytest
import torch

import birnn_ext

INT_MAX = 2**31 - 1
BIG = os.environ.get("BIRNN_EXT_BIG_TESTS") == "1"


def _free(*shape, dtype=torch.float32):
    """A tensor of `shape` that takes one element of memory (every stride 0)."""
    return torch.zeros((1,) * len(shape), dtype=dtype).expand(*shape)


def test_batch_beyond_int32_is_a_clear_error():
    """B = 2^31 sequences: more than BLAS's int can index; refused before allocating the
    [T, B, D, Hout] output (8 GiB here)."""
    B = INT_MAX + 1
    x, hx = _free(1, B, 1), _free(1, B, 1)
    w_ih, w_hh = _free(1, 1, 1), _free(1, 1, 1)
    with pytest.raises(RuntimeError, match=r"batch size .* at most 2147483647.*got 2147483648"):
        torch.ops.birnn_ext.rnn_tanh_forward(x, None, hx, None, w_ih, w_hh, None, None, None,
                                             False)


def test_gate_width_beyond_int32_is_a_clear_error():
    """D*G*H = 2 * 4 * 2^28 = 2^31: the widest per-step GEMM operand is too wide for BLAS."""
    H = 2**28
    x, hx, cx = _free(1, 1, 1), _free(2, 1, H), _free(2, 1, H)
    w_ih, w_hh = _free(2, 4 * H, 1), _free(2, 4 * H, H)
    with pytest.raises(RuntimeError, match=r"num_directions \* gates \* hidden_size .* "
                                           r"got 2 \* 4 \* 268435456"):
        torch.ops.birnn_ext.lstm_forward(x, None, hx, cx, w_ih, w_hh, None, None, None, False)


def test_sizes_just_inside_the_limits_pass_the_check():
    """The check is not off by one: B = 2^31 - 1 passes it, to fail on the next check
    (int32 lengths), which reads no values and allocates nothing."""
    B = INT_MAX
    x, hx = _free(1, B, 1), _free(1, B, 1)
    w_ih, w_hh = _free(1, 1, 1), _free(1, 1, 1)
    lengths = _free(B, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        torch.ops.birnn_ext.rnn_tanh_forward(x, lengths, hx, None, w_ih, w_hh, None, None,
                                             None, False)


@pytest.mark.skipif(not BIG, reason="needs ~10 GiB and minutes: BIRNN_EXT_BIG_TESTS=1")
def test_gates_buffer_beyond_2_to_the_31_elements():
    """A bidirectional bfloat16 GRU with I = H = 1 over T*B = 5500 * 65536 steps: gates_x
    [T, B, 2, 3] holds 2.16e9 elements, past 2^31, and the recurrence reads it at every
    offset. (bfloat16 halves the memory; it runs the op's own ATen GEMM for gates_x and the
    CPU recurrence, the code whose indexing is under test.) The last sequences, whose
    elements sit past 2^31, must equal the same layer run on those sequences alone:
    sequences never mix, and with I = H = 1 every product is one multiplication, rounded
    the same way at any batch size."""
    T, B = 5500, 65536
    assert T * B * 2 * 3 > 2**31
    torch.manual_seed(0)
    gru = birnn_ext.GRU(1, 1, bidirectional=True, dtype=torch.bfloat16)
    # Small values keep every step away from saturation, so the sequences differ.
    x = (torch.rand(T, B, 1) * 0.5).to(torch.bfloat16)
    picked = torch.tensor([0, 1, B // 2, B - 2, B - 1])
    with torch.no_grad():
        out, h_n = gru(x)
        small_out, small_h = gru(x[:, picked].contiguous())
    assert torch.isfinite(out.float()).all()
    assert torch.equal(out[:, picked], small_out)
    assert torch.equal(h_n[:, picked], small_h)
    # And the small run itself is right: torch.nn in float64 on the same numbers.
    ref = torch.nn.GRU(1, 1, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in gru.state_dict().items()})
    with torch.no_grad():
        exact, _ = ref(x[:, picked].double())
    torch.testing.assert_close(small_out.double(), exact, atol=3e-2, rtol=3e-2)
