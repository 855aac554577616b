"""birnn_ext layers equal torch.nn's on the CPU: outputs, h_n, c_n and every gradient.

Every cell runs all combinations of input mode x bidirectional x num_layers x dtype; bias,
batch_first, h0 and (LSTM) proj_size are spread over those rows so that every pair of option
values meets at least once (helpers.covering). Each case runs through both CPU backends (the
compiled ops and the pure-Python fallback) via the `backend` fixture.
"""

import pytest
import torch

from helpers import (CELLS, TOL, Case, assert_same, check_low_precision, check_parity,
                     covering, make_inputs, run)

MODES = ("padded", "packed", "sorted", "unbatched", "lengths")


def _cases():
    cases = []
    for cell in CELLS:
        key = dict(mode=list(MODES), bidirectional=[False, True], num_layers=[1, 2, 3],
                   dtype=[torch.float64, torch.float32])
        others = dict(bias=[True, False], batch_first=[False, True], h0=[False, True])
        if cell == "lstm":
            others["proj_size"] = [0, 2]
        cases += [Case(cell=cell, **row) for row in covering(key, others)]
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parity_with_torch_nn(case, backend):
    check_parity(case)


def test_cases_cover_every_option_with_every_cell():
    """The grid above really holds every option value for every cell (guards _cases)."""
    for cell in CELLS:
        rows = [c for c in CASES if c.cell == cell]
        assert {c.bias for c in rows} == {True, False}
        assert {c.batch_first for c in rows} == {True, False}
        assert {c.h0 for c in rows} == {True, False}
        assert {(c.mode, c.h0) for c in rows} == {(m, h) for m in MODES for h in (True, False)}
        if cell == "lstm":
            assert {(c.mode, c.proj_size) for c in rows} == {(m, p) for m in MODES
                                                              for p in (0, 2)}
            assert {(c.bidirectional, c.proj_size) for c in rows} == {
                (b, p) for b in (False, True) for p in (0, 2)}
            assert {(c.num_layers, c.proj_size) for c in rows} == {
                (n, p) for n in (1, 2, 3) for p in (0, 2)}


@pytest.mark.parametrize("cell", CELLS)
def test_longer_sequence_and_wider_layer(cell, backend):
    """One larger bidirectional 2-layer packed case (T=7, H=8) per cell."""
    check_parity(Case(cell=cell, mode="packed", bidirectional=True, num_layers=2, h0=True,
                      proj_size=3 if cell == "lstm" else 0, hidden_size=8, steps=7))


@pytest.mark.parametrize("batch", [5, 8, 9, 17])
@pytest.mark.parametrize("cell", CELLS)
def test_float32_batch_sizes_of_the_cpu_small_gemm(cell, batch):
    """float32 batches that reach every row-chunk shape of the CPU small-batch GEMM (up to 8
    rows at once, then the rest) and a hidden size that leaves a partial panel. On a CPU with
    AVX-512 that is gemm_avx512's register tiles; elsewhere the AVX2 panel GEMM (above 16
    rows MKL's packed GEMM), which test_cpu_kernels.py also runs in a subprocess."""
    check_parity(Case(cell=cell, mode="padded", bidirectional=True, dtype=torch.float32,
                      h0=True, proj_size=3 if cell == "lstm" else 0, hidden_size=13), batch)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cell", CELLS)
def test_low_precision_on_cpu(cell, dtype, backend):
    case = Case(cell=cell, mode="packed", bidirectional=True, num_layers=2, dtype=dtype,
                h0=True)
    check_low_precision(case, *case.make_pair())


@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_inputs(cell, backend):
    """Strided views as input and initial state give the same results as contiguous ones."""
    case = Case(cell=cell, bidirectional=True, num_layers=2, h0=True, batch_first=True)
    ref, ours = case.make_pair()
    inputs = make_inputs(case)
    strided = {k: (torch.stack([v, v], dim=-1)[..., 0] if k != "lengths" and v is not None
                   else v) for k, v in inputs.items()}
    assert not strided["x"].is_contiguous() and not strided["h0"].is_contiguous()
    assert_same(run(ref, case, inputs), run(ours, case, strided), **TOL[torch.float64])


@pytest.mark.parametrize("cell", CELLS)
def test_frozen_parameters(cell, backend):
    """Parameters with requires_grad=False get no gradient; the others still the right one."""
    case = Case(cell=cell, mode="packed", bidirectional=True, num_layers=2)
    ref, ours = case.make_pair()
    for model in (ref, ours):
        model.weight_ih_l0.requires_grad_(False)
        model.bias_hh_l1_reverse.requires_grad_(False)
    inputs = make_inputs(case)
    expected, actual = run(ref, case, inputs), run(ours, case, inputs)
    assert actual["grad.weight_ih_l0"] is None and actual["grad.bias_hh_l1_reverse"] is None
    assert_same(expected, actual, **TOL[torch.float64])
