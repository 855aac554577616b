"""User errors raise what torch.nn raises: the same exception type and the same message,
except where torch's message is an accident of its implementation (then: the type and a
clear message)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from helpers import CELLS, make_pair, module_classes


def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (any exception is compared below)
        return exc
    return None


def assert_same_error(ref_fn, our_fn):
    expected, actual = _error(ref_fn), _error(our_fn)
    assert expected is not None, "torch.nn accepted it: the case is not an error"
    assert actual is not None, f"birnn_ext accepted what torch.nn rejects: {expected!r}"
    assert (type(actual), str(actual)) == (type(expected), str(expected))


def _state(cell, h):
    return (h, torch.zeros_like(h)) if cell == "lstm" else h


# (name, input shape, hx shape or None): model is 2 layers, bidirectional, I=5, H=4.
FORWARD_CASES = [
    ("input-1d", (5,), None),
    ("input-4d", (6, 3, 5, 1), None),
    ("input-size", (6, 3, 7), None),
    ("input-size-unbatched", (6, 7), None),
    ("hx-2d-for-batched", (6, 3, 5), (4, 4)),
    ("hx-3d-for-unbatched", (6, 5), (4, 1, 4)),
    ("hx-wrong-batch", (6, 3, 5), (4, 2, 4)),
    ("hx-wrong-layers", (6, 3, 5), (2, 3, 4)),
    ("hx-wrong-hidden", (6, 3, 5), (4, 3, 5)),
    ("hx-wrong-unbatched", (6, 5), (4, 5)),
    ("zero-steps", (0, 3, 5), None),
    ("zero-steps-with-hx", (0, 3, 5), (4, 3, 4)),
]


@pytest.mark.parametrize("name,x_shape,h_shape", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
@pytest.mark.parametrize("cell", CELLS)
def test_forward_errors(cell, name, x_shape, h_shape, backend):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(x_shape, dtype=torch.float64)
    hx = _state(cell, torch.randn(h_shape, dtype=torch.float64)) if h_shape else None
    assert_same_error(lambda: ref(x, hx), lambda: ours(x, hx))


@pytest.mark.parametrize("cell", CELLS)
def test_packed_input_errors(cell, backend):
    ref, ours = make_pair(cell, bidirectional=True)
    lengths = torch.tensor([2, 4, 1])
    bad_size = pack_padded_sequence(torch.randn(4, 3, 6, dtype=torch.float64), lengths,
                                    enforce_sorted=False)
    if cell == "lstm":
        # torch.nn.LSTM skips its argument checks for a PackedSequence without hx, so its
        # error is a GEMM's shape complaint: an accident. birnn_ext gives torch's usual one.
        assert isinstance(_error(lambda: ref(bad_size)), RuntimeError)
        with pytest.raises(RuntimeError, match=r"^input.size\(-1\) must be equal to input_size"):
            ours(bad_size)
    else:
        assert_same_error(lambda: ref(bad_size), lambda: ours(bad_size))
    good = pack_padded_sequence(torch.randn(4, 3, 5, dtype=torch.float64), lengths,
                                enforce_sorted=False)
    hx = _state(cell, torch.randn(2, 2, 4, dtype=torch.float64))  # batch 2, not 3
    assert_same_error(lambda: ref(good, hx), lambda: ours(good, hx))


@pytest.mark.parametrize("which", ["h0", "c0"])
def test_lstm_state_shape_errors(which, backend):
    ref, ours = make_pair("lstm", proj_size=2, bidirectional=True)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    h0, c0 = torch.zeros(2, 3, 2, dtype=torch.float64), torch.zeros(2, 3, 4, dtype=torch.float64)
    if which == "h0":
        h0 = torch.zeros(2, 3, 4, dtype=torch.float64)   # hidden_size where proj_size belongs
    else:
        c0 = torch.zeros(2, 3, 2, dtype=torch.float64)   # proj_size where hidden_size belongs
    assert_same_error(lambda: ref(x, (h0, c0)), lambda: ours(x, (h0, c0)))
    c0_2d = c0[:, 0]   # rank mismatch between h0 and c0
    assert_same_error(lambda: ref(x, (h0, c0_2d)), lambda: ours(x, (h0, c0_2d)))


@pytest.mark.parametrize("cell", CELLS)
def test_input_dtype_mismatch(cell, backend):
    ref, ours = make_pair(cell)
    x = torch.randn(6, 3, 5, dtype=torch.float32)
    assert_same_error(lambda: ref(x), lambda: ours(x))


@pytest.mark.parametrize("cell", CELLS)
def test_hx_dtype_mismatch(cell, backend):
    """torch.nn's message here is an implementation accident (oneDNN / a GEMM); birnn_ext
    raises the same type with a message that names the dtype problem."""
    ref, ours = make_pair(cell)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    hx = _state(cell, torch.zeros(1, 3, 4, dtype=torch.float32))
    assert _error(lambda: ref(x, hx)) is not None
    with pytest.raises((RuntimeError, ValueError), match="(?i)dtype|Double|Float"):
        ours(x, hx)


# The meta device stands in for a GPU on a CPU-only machine (tests/test_cuda.py has the
# real thing): an input or state on another device than the weights.
@pytest.mark.parametrize("cell", CELLS)
def test_input_device_mismatch(cell, backend):
    ref, ours = make_pair(cell)
    x = torch.randn(6, 3, 5, dtype=torch.float64, device="meta")
    assert_same_error(lambda: ref(x), lambda: ours(x))


@pytest.mark.parametrize("cell", CELLS)
def test_hx_device_mismatch(cell, backend):
    ref, ours = make_pair(cell)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    hx = _state(cell, torch.zeros(1, 3, 4, dtype=torch.float64, device="meta"))
    assert_same_error(lambda: ref(x, hx), lambda: ours(x, hx))


def _ctor_cases():
    common = [
        ("dropout-negative", dict(dropout=-0.1)),
        ("dropout-above-1", dict(dropout=1.5)),
        ("dropout-bool", dict(dropout=True)),
        ("dropout-str", dict(dropout="0.1")),
        ("bias-not-bool", dict(bias=1)),
        ("batch-first-not-bool", dict(batch_first="yes")),
        ("input-size-float", dict(input_size=5.0)),
        ("input-size-zero", dict(input_size=0)),
        ("hidden-size-float", dict(hidden_size=4.0)),
        ("hidden-size-negative", dict(hidden_size=-1)),
        ("num-layers-zero", dict(num_layers=0)),
    ]
    for cell in CELLS:
        cases = list(common)
        if cell == "lstm":
            cases += [("proj-negative", dict(proj_size=-1)), ("proj-too-big", dict(proj_size=4))]
        else:
            cases += [("proj-not-lstm", dict(proj_size=2))]
        for name, kwargs in cases:
            yield pytest.param(cell, kwargs, id=f"{cell}-{name}")


@pytest.mark.parametrize("cell,kwargs", list(_ctor_cases()))
def test_constructor_errors(cell, kwargs):
    nn_cls, ext_cls, extra = module_classes(cell)
    args = dict(input_size=5, hidden_size=4) | extra | kwargs
    assert_same_error(lambda: nn_cls(**args), lambda: ext_cls(**args))


@pytest.mark.parametrize("nonlinearity", ["sigmoid", None])
def test_rnn_unknown_nonlinearity(nonlinearity):
    nn_cls, ext_cls, _ = module_classes("rnn_tanh")
    assert_same_error(lambda: nn_cls(5, 4, 1, nonlinearity),      # positional, as torch allows
                      lambda: ext_cls(5, 4, 1, nonlinearity))
    assert_same_error(lambda: nn_cls(5, 4, nonlinearity=nonlinearity),
                      lambda: ext_cls(5, 4, nonlinearity=nonlinearity))

