"""Module plumbing: state_dict both ways, save/load, deepcopy, .to(), flatten_parameters,
convert(), inter-layer dropout and eval mode, batch size 0."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import birnn_ext
from helpers import CELLS, Case, assert_same, make_inputs, make_pair, module_classes, run

BI2 = dict(num_layers=2, bidirectional=True)


def _outputs_equal(cell, a, b, case=None):
    """a and b give the same outputs and gradients on the same random input."""
    case = case or Case(cell=cell, bidirectional=True, num_layers=2, h0=True)
    inputs = make_inputs(case)
    assert_same(run(a, case, inputs), run(b, case, inputs), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_same_parameters_and_state_dict_keys(cell):
    ref, ours = make_pair(cell, **({"proj_size": 2} if cell == "lstm" else {}), **BI2)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert ours._flat_weights_names == ref._flat_weights_names
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_both_ways(cell):
    nn_cls, ext_cls, extra = module_classes(cell)
    src = nn_cls(5, 4, dtype=torch.float64, **extra, **BI2)
    ours = ext_cls(5, 4, dtype=torch.float64, **extra, **BI2)
    ours.load_state_dict(src.state_dict())       # torch.nn -> birnn_ext
    back = nn_cls(5, 4, dtype=torch.float64, **extra, **BI2)
    back.load_state_dict(ours.state_dict())       # birnn_ext -> torch.nn
    for (name, p), (_, q) in zip(src.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), name
    _outputs_equal(cell, src, ours)


@pytest.mark.parametrize("cell", CELLS)
def test_save_load(cell, tmp_path):
    _, ours = make_pair(cell, **BI2)
    torch.save(ours.state_dict(), tmp_path / "sd.pt")
    _, fresh = make_pair(cell, **BI2)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))   # weights_only (the default)
    _outputs_equal(cell, ours, fresh)

    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    whole = torch.load(buffer, weights_only=False)
    assert type(whole) is type(ours)
    _outputs_equal(cell, ours, whole)


@pytest.mark.parametrize("cell", CELLS)
def test_deepcopy(cell):
    _, ours = make_pair(cell, **BI2)
    clone = copy.deepcopy(ours)
    assert type(clone) is type(ours)
    assert all(p is not q for p, q in zip(ours.parameters(), clone.parameters()))
    _outputs_equal(cell, ours, clone)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with torch.no_grad():
        clone.weight_hh_l0.add_(1.0)   # the copy's weights are its own: ours is unchanged
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("cell", CELLS)
def test_to_float64_and_flatten_parameters(cell):
    ref, ours = make_pair(cell, dtype=torch.float32, **BI2)
    ref, ours = ref.to(torch.float64), ours.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert all(w.dtype == torch.float64 for w in ours._flat_weights)
    ours.flatten_parameters()
    _outputs_equal(cell, ref, ours)


@pytest.mark.parametrize("cell", CELLS)
def test_weights_replaced_after_construction(cell):
    """Assigning a new Parameter (as torch.nn allows) is honoured by the next forward."""
    ref, ours = make_pair(cell, **BI2)
    new = nn.Parameter(torch.randn_like(ref.weight_hh_l1_reverse))
    ref.weight_hh_l1_reverse = new
    ours.weight_hh_l1_reverse = nn.Parameter(new.detach().clone())
    _outputs_equal(cell, ref, ours)


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
        self.lstm = nn.LSTM(5, 4, num_layers=2, bidirectional=True)
        self.stack = nn.ModuleList([nn.GRU(8, 3, bidirectional=True),
                                    nn.Sequential(nn.RNN(6, 3, nonlinearity="relu"))])
        self.heads = nn.ModuleDict({"a": nn.RNN(3, 2), "b": nn.Linear(3, 1)})

    def forward(self, x):
        x = self.encoder(x)
        x = self.lstm(x)[0]
        x = self.stack[0](x)[0]
        x = self.stack[1](x)[0]
        return self.heads["b"](x).sum() + self.heads["a"](x)[0].sum()


def test_convert_nested_model():
    model = _Nested().double()
    reference = copy.deepcopy(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.RNNBase)}
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(6, 3, 5, dtype=torch.float64)

    assert birnn_ext.convert(model) is model
    expected = {"lstm": birnn_ext.LSTM, "stack.0": birnn_ext.GRU, "stack.1.0": birnn_ext.RNN,
                "heads.a": birnn_ext.RNN}
    assert {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)} == expected
    for name, param in model.named_parameters():   # the very same Parameter objects
        assert param is params[name], name
    assert model.lstm.weight_ih_l0 is layers["lstm"].weight_ih_l0
    assert model.stack[1][0].nonlinearity == "relu"

    torch.testing.assert_close(model(x), reference(x), atol=1e-12, rtol=1e-12)
    model(x).backward()
    reference(x).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-12, msg=name)


def test_convert_leaves_birnn_layers_alone_and_converts_the_root():
    inner = birnn_ext.GRU(3, 2)
    model = nn.Sequential(inner, )
    birnn_ext.convert(model)
    assert model[0] is inner and type(inner) is birnn_ext.GRU
    root = nn.LSTM(3, 2)
    assert type(birnn_ext.convert(root)) is birnn_ext.LSTM


@pytest.mark.parametrize("mode", ["padded", "packed", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_dropout_matches_torch_nn_in_training(cell, mode):
    """A seed gives torch.nn's mask: for packed input and lengths= (against torch.nn's packed
    route), the mask torch.nn draws on the packed data."""
    ref, ours = make_pair(cell, num_layers=3, bidirectional=True, dropout=0.4)
    case = Case(cell=cell, mode=mode, bidirectional=True, num_layers=3)
    inputs = make_inputs(case)
    torch.manual_seed(7)
    expected = run(ref, case, inputs)
    torch.manual_seed(7)
    actual = run(ours, case, inputs)
    assert_same(expected, actual, atol=1e-10, rtol=1e-9)
    torch.manual_seed(8)   # another seed: another mask, so dropout really was applied
    other = run(ours, case, inputs)
    assert not torch.allclose(other["output"], actual["output"])


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_ignores_dropout(cell):
    ref, ours = make_pair(cell, num_layers=2, dropout=0.9)
    ref.eval()
    ours.eval()
    case = Case(cell=cell, num_layers=2)
    inputs = make_inputs(case)
    first = run(ours, case, inputs)
    assert_same(run(ref, case, inputs), first, atol=1e-10, rtol=1e-9)
    assert_same(first, run(ours, case, inputs), atol=0, rtol=0)


def test_dropout_single_layer_warns_like_torch():
    with warnings.catch_warnings(record=True) as ref_w:
        warnings.simplefilter("always")
        nn.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as our_w:
        warnings.simplefilter("always")
        birnn_ext.LSTM(3, 4, dropout=0.5)
    assert [str(w.message) for w in our_w] == [str(w.message) for w in ref_w]
    assert len(ref_w) == 1


@pytest.mark.parametrize("cell", CELLS)
def test_batch_size_zero(cell, backend):
    ref, ours = make_pair(cell, **BI2)
    for batch_first in (False, True):
        ref.batch_first = ours.batch_first = batch_first
        x = torch.randn((0, 5, 5) if batch_first else (5, 0, 5), dtype=torch.float64)
        out_ref, state_ref = ref(x.clone().requires_grad_())
        out_our, state_our = ours(x.clone().requires_grad_())
        assert out_our.shape == out_ref.shape
        flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
        assert [s.shape for s in flat(state_our)] == [s.shape for s in flat(state_ref)]
        out_our.sum().backward()
        assert all(p.grad is None or (p.grad == 0).all() for p in ours.parameters())
        ours.zero_grad()


@pytest.mark.parametrize("cell", CELLS)
def test_packed_input_with_grad_disabled_and_inference_mode(cell):
    ref, ours = make_pair(cell, **BI2)
    x = torch.randn(5, 3, 5, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 1]), enforce_sorted=False)
    with torch.inference_mode():
        a = ref(packed)
        b = ours(packed)
    torch.testing.assert_close(b[0].data, a[0].data, atol=1e-12, rtol=1e-10)
    with torch.no_grad():
        c = ours(packed)
    torch.testing.assert_close(c[0].data, a[0].data, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_meta_device(cell):
    """A model built on the meta device (deferred initialisation, shape inference) runs on a
    meta input as torch.nn's does, giving meta outputs of the same shapes."""
    nn_cls, ext_cls, extra = module_classes(cell)
    ref = nn_cls(5, 4, num_layers=2, bidirectional=True, device="meta", **extra)
    ours = ext_cls(5, 4, num_layers=2, bidirectional=True, device="meta", **extra)
    x = torch.randn(6, 3, 5, device="meta")
    out_ref, state_ref = ref(x)
    out_our, state_our = ours(x)
    assert out_our.device.type == "meta" and out_our.shape == out_ref.shape
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    assert [(s.shape, s.device) for s in flat(state_our)] == [
        (s.shape, s.device) for s in flat(state_ref)]


# The dtypes torch.nn's layers return under torch.autocast("cpu", dtype=torch.bfloat16): its CPU
# autocast policy casts RNN and LSTM to the autocast dtype and leaves GRU in float32.
CPU_AUTOCAST_DTYPE = {"rnn_tanh": torch.bfloat16, "rnn_relu": torch.bfloat16,
                      "lstm": torch.bfloat16, "gru": torch.float32}


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_autocast_like_torch_nn(cell):
    """Under torch.autocast("cpu", bfloat16) outputs and states come back in torch.nn's dtypes,
    with values as close as bfloat16 allows to the float32 result.

    The truth is torch.nn in float32 without autocast: torch.nn's own LSTM raises under CPU
    autocast on CPUs without AVX-512 (oneDNN has no bf16 LSTM primitive there), which must not
    fail birnn_ext's test. Where torch.nn does run under autocast, its dtypes must be ours."""
    ref, ours = make_pair(cell, dtype=torch.float32, **BI2)
    x = torch.randn(6, 3, 5)
    flat = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    with torch.no_grad():
        out_truth, state_truth = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_our, state_our = ours(x)
            try:
                out_ref, state_ref = ref(x)
            except RuntimeError as exc:  # oneDNN without a bf16 primitive for this CPU
                assert "primitive" in str(exc), exc
                out_ref = None
    expected = CPU_AUTOCAST_DTYPE[cell]
    assert [t.dtype for t in (out_our, *flat(state_our))] == [expected] * (1 + len(flat(state_our)))
    if out_ref is not None:
        assert [t.dtype for t in (out_ref, *flat(state_ref))] == [
            t.dtype for t in (out_our, *flat(state_our))]
    tol = 5e-2 if expected == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out_our.float(), out_truth, atol=tol, rtol=tol)
    for got, want in zip(flat(state_our), flat(state_truth)):
        torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)
