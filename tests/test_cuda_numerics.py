"""GPU numerics (marked `cuda`, skipped without a GPU), each test one way the CUDA path could
be wrong that the small parity grid of test_cuda.py cannot see:

- sizes that put cuBLAS on its tensor-core and split-K kernels (H 64..1024, B 1..64, with
  B = 33 not a multiple of any tile);
- float16/bfloat16 over T = 1000 steps, where rounding the carried state every step makes the
  error grow with the length: birnn_ext may be at most 1.5x as far from a float64 truth as
  cuDNN is on the same inputs, with no absolute floor to hide behind;
- every layer option against cuDNN: unidirectional, bias=False, proj_size in reduced
  precision, h0 with padded input, unbatched input;
- the TF32 flags both ways: IEEE float32 when torch.backends.cudnn.rnn.fp32_precision says
  so, TF32 when it allows it, and no error whichever API set torch's flags;
- two layers with dropout in training, against the Python backend on the same GPU and seed.
"""

import dataclasses

import pytest
import torch

import birnn_ext
from helpers import Case, assert_same, cast, check_low_precision, make_inputs, make_pair, run

pytestmark = pytest.mark.cuda

FLOAT32_TOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(autouse=True)
def _cuda_backend():
    assert birnn_ext.set_backend("cuda") == "cuda"


@pytest.fixture
def ieee_float32():
    """cuDNN's RNN and every matmul in IEEE float32 (torch's newer API), restored after."""
    rnn = torch.backends.cudnn.rnn.fp32_precision
    matmul = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    yield
    torch.backends.cudnn.rnn.fp32_precision = rnn
    torch.backends.cuda.matmul.fp32_precision = matmul


def _truth_errors(case, inputs, *models):
    """Each model's largest error against a float64 CPU run of the same weights, per output
    and gradient, relative to that tensor's largest value: [{name: error}, ...]."""
    truth_case = dataclasses.replace(case, device="cpu", dtype=torch.float64)
    truth_model, _ = truth_case.make_pair()
    truth_model.load_state_dict({k: v.double().cpu() for k, v in models[0].state_dict().items()})
    truth = run(truth_model, truth_case, cast(inputs, torch.float64, "cpu"))
    errors = []
    for model in models:
        got = run(model, case, inputs)
        errs = {}
        for name, value in truth.items():
            if value is None or not value.is_floating_point():
                continue
            assert torch.isfinite(got[name]).all(), f"{name}: non-finite values"
            scale = value.abs().max().clamp_min(1e-30).item()
            errs[name] = (got[name].double().cpu() - value).abs().max().item() / scale
        errors.append(errs)
    return errors


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("hidden", [64, 256, 1024])
@pytest.mark.parametrize("batch", [1, 33, 64])
def test_parity_at_tensor_core_sizes(cell, hidden, batch, ieee_float32):
    """float32 (IEEE) against cuDNN at sizes where cuBLAS picks other kernels."""
    case = Case(cell=cell, mode="padded", bidirectional=True, dtype=torch.float32,
                hidden_size=hidden, steps=5, device="cuda", h0=True)
    ref, ours = case.make_pair()
    inputs = make_inputs(case, b=batch)
    assert_same(run(ref, case, inputs), run(ours, case, inputs), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("hidden", [256, 1024])
def test_parity_at_tensor_core_sizes_reduced_precision(dtype, hidden):
    case = Case(cell="lstm", mode="packed", bidirectional=True, dtype=dtype,
                hidden_size=hidden, steps=5, device="cuda")
    ref, ours = case.make_pair()
    check_low_precision(case, ref, ours)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_long_sequence_reduced_precision_does_not_drift(cell, dtype):
    """T = 1000: the carried state and gradients stay float32 inside birnn_ext, so its error
    against float64 may be at most 1.5x cuDNN's on every output and gradient."""
    case = Case(cell=cell, mode="packed", bidirectional=True, dtype=dtype, hidden_size=64,
                steps=1000, device="cuda", h0=True)
    ref, ours = case.make_pair()
    errors_ref, errors_ours = _truth_errors(case, make_inputs(case), ref, ours)
    worse = {name: (errors_ours[name], errors_ref[name]) for name in errors_ref
             if errors_ours[name] > 1.5 * errors_ref[name]}
    assert not worse, f"birnn_ext's error > 1.5x cuDNN's (ours, cuDNN): {worse}"


def _option_cases():
    for cell in ("rnn_tanh", "lstm", "gru"):
        yield Case(cell=cell, mode="padded", bidirectional=False, device="cuda",
                   dtype=torch.float32)                                       # one direction
        yield Case(cell=cell, mode="packed", bidirectional=True, bias=False, device="cuda",
                   dtype=torch.float32)                                       # bias=False
        yield Case(cell=cell, mode="padded", bidirectional=True, h0=True, device="cuda",
                   dtype=torch.float32)                                       # h0, padded
        yield Case(cell=cell, mode="unbatched", bidirectional=True, h0=True, device="cuda",
                   dtype=torch.float32)                                       # unbatched


OPTION_CASES = list(_option_cases())


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c.id for c in OPTION_CASES])
def test_layer_options_against_cudnn(case, ieee_float32):
    ref, ours = case.make_pair()
    inputs = make_inputs(case)
    assert_same(run(ref, case, inputs), run(ours, case, inputs), **FLOAT32_TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_projection_in_reduced_precision(dtype, mode):
    case = Case(cell="lstm", mode=mode, bidirectional=True, num_layers=2, dtype=dtype,
                proj_size=3, h0=True, hidden_size=16, device="cuda")
    ref, ours = case.make_pair()
    check_low_precision(case, ref, ours)


def test_tf32_flags_both_ways():
    """torch.backends.cudnn.rnn.fp32_precision governs birnn_ext's float32 recurrence as it
    governs cuDNN's RNN: "ieee" gives float32 results, "tf32" lets TF32 in (the results move
    by TF32's rounding, and stay no further from float64 than cuDNN's own TF32 results)."""
    case = Case(cell="lstm", mode="padded", bidirectional=True, dtype=torch.float32,
                hidden_size=512, steps=20, device="cuda")
    ref, ours = case.make_pair()
    inputs = make_inputs(case, b=16)
    rnn = torch.backends.cudnn.rnn.fp32_precision
    try:
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        (ieee_ref, ieee_ours) = _truth_errors(case, inputs, ref, ours)
        ieee_out = run(ours, case, inputs)["output"]
        torch.backends.cudnn.rnn.fp32_precision = "tf32"
        (tf32_ref, tf32_ours) = _truth_errors(case, inputs, ref, ours)
        tf32_out = run(ours, case, inputs)["output"]
    finally:
        torch.backends.cudnn.rnn.fp32_precision = rnn
    assert max(ieee_ours.values()) < 5e-5, ieee_ours            # IEEE float32 throughout
    assert not torch.equal(ieee_out, tf32_out), "the TF32 flag changed nothing"
    assert max(tf32_ours.values()) <= 1.5 * max(tf32_ref.values()), (tf32_ours, tf32_ref)


@pytest.mark.parametrize("setting", ["new-api", "legacy-api", "mixed"])
def test_any_precision_api_is_accepted(setting):
    """torch raises from its legacy getters when the legacy and new flags disagree; a layer
    reads only the per-operator flag, so no combination the user sets makes it raise."""
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.rnn.fp32_precision,
             torch.backends.cudnn.conv.fp32_precision)
    try:
        if setting in ("new-api", "mixed"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.rnn.fp32_precision = "ieee"
        if setting in ("legacy-api", "mixed"):
            torch.backends.cudnn.allow_tf32 = True
        _, ours = make_pair("gru", bidirectional=True, dtype=torch.float32, device="cuda")
        out, _ = ours(torch.randn(4, 3, 5, device="cuda"))
        assert torch.isfinite(out).all()
    finally:
        (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.rnn.fp32_precision,
         torch.backends.cudnn.conv.fp32_precision) = saved


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_two_layers_with_dropout(cell):
    """Inter-layer dropout on the GPU: drawn as the Python backend draws it from the same
    seed (cuDNN's own dropout uses another generator, so it cannot be the reference), and
    really applied (training differs from eval)."""
    _, ours = make_pair(cell, num_layers=2, bidirectional=True, dropout=0.5,
                        dtype=torch.float64, device="cuda")
    case = Case(cell=cell, mode="packed", bidirectional=True, num_layers=2, h0=True,
                device="cuda")
    inputs = make_inputs(case)
    results = {}
    for backend in ("cuda", "python"):
        birnn_ext.set_backend(backend)
        torch.manual_seed(3)
        results[backend] = run(ours, case, inputs)
    assert_same(results["python"], results["cuda"], atol=1e-10, rtol=1e-9)
    birnn_ext.set_backend("cuda")
    ours.eval()
    evaluated = run(ours, case, inputs)
    assert not torch.allclose(evaluated["output"], results["cuda"]["output"])
