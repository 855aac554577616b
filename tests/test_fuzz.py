"""Property-based fuzzing against torch.nn: configurations and inputs nobody designed.

hypothesis draws everything the layers accept: the cell, every size from 1 up (T, B, I, H,
layers, proj_size), bias, batch_first, bidirectional, dropout (in eval, so it must do
nothing), the input form (padded, packed with sorted or unsorted random lengths,
unbatched, or padded with lengths= against torch.nn's pack/unpack route for it), h0 given or not, inputs and states that are non-contiguous views or stride-0
expansions, the dtype, and NaN or inf planted in the input or h0. For every example the
same weights and inputs go through torch.nn and birnn_ext, and everything is compared:
output, h_n, c_n and the gradients of the input, h0, c0 and every parameter.

- float64 must agree to rounding (torch.nn in float64 is the truth). float32 runs against
  the same truth with float32's tolerance: that is the dtype the AVX-512 path runs its own
  GEMMs for (csrc/cpu/gemm_avx512.cpp), which float64 never reaches.
- A non-finite value must come out exactly where torch.nn's does: the NaN, +inf and -inf
  masks of every result are equal, and finite values agree as above.

The default CPU path of this machine and the Python fallback run in this process; the other
compiled CPU paths (BIRNN_EXT_CPU_SIMD=avx2 and 0, chosen once per process) in subprocesses.

Determinism: derandomize=True makes the examples a function of this file's test code only
(no random seed, no example database), so CI sees the same examples on every run. The count
per backend and path is BIRNN_EXT_FUZZ_EXAMPLES (defaults below, sized to keep this file
under a minute on CI's 2 cores); raise it for a long local run, e.g. 4 x 5,000 examples
with a progress line every 1,000:

    BIRNN_EXT_FUZZ_EXAMPLES=5000 BIRNN_EXT_FUZZ_PROGRESS=1000 \
        .venv/bin/python -m pytest tests/test_fuzz.py -q -s     # -s: progress lines show

A failure prints the smallest failing configuration it found; add it to FOUND below (it then
runs first on every run) along with the fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import birnn_ext
from helpers import CELLS, assert_same_nonfinite, module_classes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Examples per backend / CPU path. An example takes about 25 ms on one core (two models,
# forward and backward each), so 400 take about 10 s; the subprocess paths run half as
# many, since each also pays an interpreter start. The file takes 40-50 s in all.
EXAMPLES = int(os.environ.get("BIRNN_EXT_FUZZ_EXAMPLES", "400"))
SUBPROCESS_EXAMPLES = int(os.environ.get("BIRNN_EXT_FUZZ_EXAMPLES", "200"))
# For a long run: print a line to stderr every this many examples (0: never).
PROGRESS = int(os.environ.get("BIRNN_EXT_FUZZ_PROGRESS", "0"))
# Set in the subprocesses below so that they run the in-process test with their own count.
CHILD_VAR = "BIRNN_EXT_FUZZ_CHILD"

TOL = {torch.float64: dict(atol=1e-9, rtol=1e-8), torch.float32: dict(atol=2e-5, rtol=1e-4)}
# "lengths": a padded batch with lengths=, against torch.nn's route for it (pack with
# enforce_sorted=False, the layer, unpack with total_length=T).
MODES = ("padded", "packed_sorted", "packed_unsorted", "unbatched", "lengths")
VIEWS = ("contiguous", "strided", "expanded")


@st.composite
def configs(draw):
    """One layer configuration and the form of its inputs (no tensors: those are made from
    `seed`, so hypothesis shrinks over a handful of integers)."""
    cell = draw(st.sampled_from(CELLS))
    hidden = draw(st.integers(1, 7))
    num_layers = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(MODES))
    steps = draw(st.integers(1, 6))
    batch = 1 if mode == "unbatched" else draw(st.integers(1, 5))
    lengths = None
    if mode.startswith("packed") or mode == "lengths":
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
        if mode == "packed_sorted":
            lengths.sort(reverse=True)
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32]))
    # A planted non-finite value: what, where (x or h0) and at which flat index. float64
    # only: float32 rounds differently from the float64 truth (sigmoid(20) is exactly 1 in
    # float32, so 0 * inf may be NaN in one and not the other), so its masks may differ.
    poison = (draw(st.sampled_from([None, None, "nan", "inf", "-inf"]))
              if dtype == torch.float64 else None)
    return dict(
        cell=cell,
        input_size=draw(st.integers(1, 7)),
        hidden_size=hidden,
        num_layers=num_layers,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, hidden - 1)) if cell == "lstm" and hidden > 1 else 0,
        # torch.nn warns about dropout with one layer; with more it must be inert in eval.
        dropout=draw(st.sampled_from([0.0, 0.3, 1.0])) if num_layers > 1 else 0.0,
        mode=mode, steps=steps, batch=batch, lengths=lengths,
        h0=draw(st.booleans()),
        x_view=draw(st.sampled_from(VIEWS)),
        h_view=draw(st.sampled_from(VIEWS)),
        dtype=dtype,
        scale=draw(st.sampled_from([0.1, 1.0, 4.0])),  # 4: saturated gates, large relu
        poison=poison,
        poison_in=draw(st.sampled_from(["x", "x", "h0"])) if poison else None,
        poison_at=draw(st.integers(0, 10**6)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _view(base: torch.Tensor, kind: str) -> torch.Tensor:
    """`base` as the layer should see it: itself, a non-contiguous view with the same
    values, or a stride-0 expansion of one slice along its last-but-one dim (so the values
    repeat there, as a broadcast h0 or input would). Built from `base` by differentiable
    ops, so gradients reach base as they would reach a user's tensor."""
    if kind == "strided":
        wide = torch.stack([base, torch.zeros_like(base)], dim=-1)
        return wide[..., 0]
    if kind == "expanded":
        dim = base.dim() - 2
        return base.narrow(dim, 0, 1).expand(base.shape)
    return base


def make_models(cfg):
    nn_cls, ext_cls, extra = module_classes(cfg["cell"])
    kwargs = dict(num_layers=cfg["num_layers"], bias=cfg["bias"],
                  batch_first=cfg["batch_first"], bidirectional=cfg["bidirectional"],
                  dropout=cfg["dropout"], dtype=torch.float64, **extra)
    if cfg["proj_size"]:
        kwargs["proj_size"] = cfg["proj_size"]
    torch.manual_seed(cfg["seed"])
    ref = nn_cls(cfg["input_size"], cfg["hidden_size"], **kwargs).eval()
    kwargs["dtype"] = cfg["dtype"]
    ours = ext_cls(cfg["input_size"], cfg["hidden_size"], **kwargs).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.mul_(cfg["scale"])
            ours.get_parameter(name).copy_(p)
    return ref, ours


def make_inputs(cfg):
    """Base tensors (float64): x in the layout the module expects, h0, c0 (or None), and the
    weights of a loss that weighs every output element differently."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    T, B, I = cfg["steps"], cfg["batch"], cfg["input_size"]
    states = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    h_out = cfg["proj_size"] or cfg["hidden_size"]
    unbatched = cfg["mode"] == "unbatched"

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * cfg["scale"]

    x = rand(T, I) if unbatched else rand(*((B, T, I) if cfg["batch_first"] else (T, B, I)))
    h0 = rand(states, h_out) if unbatched else rand(states, B, h_out)
    c0 = (rand(states, cfg["hidden_size"]) if unbatched
          else rand(states, B, cfg["hidden_size"])) if cfg["cell"] == "lstm" else None
    if not cfg["h0"]:
        h0 = c0 = None
    if cfg["poison"]:
        target = x if cfg["poison_in"] == "x" or h0 is None else h0
        target.view(-1)[cfg["poison_at"] % target.numel()] = float(cfg["poison"])
    return dict(x=x, h0=h0, c0=c0)


def run(model, cfg, inputs, dtype):
    """Forward and backward of `model` in `dtype` on (views of) the inputs: every result and
    every gradient, as float64 tensors keyed by name."""
    leaves = {k: v.to(dtype).detach().requires_grad_() for k, v in inputs.items()
              if v is not None}
    x = _view(leaves["x"], cfg["x_view"])
    hx = None
    if "h0" in leaves:
        h0 = _view(leaves["h0"], cfg["h_view"])
        hx = (h0, _view(leaves["c0"], cfg["h_view"])) if "c0" in leaves else h0
    model.zero_grad(set_to_none=True)
    if cfg["mode"] == "lengths" and isinstance(model, birnn_ext.modules._FusedForward):
        out, state = model(x, hx, lengths=torch.tensor(cfg["lengths"]))
    elif cfg["lengths"] is not None:
        packed = pack_padded_sequence(x, torch.tensor(cfg["lengths"]),
                                      batch_first=cfg["batch_first"],
                                      enforce_sorted=cfg["mode"] == "packed_sorted")
        out, state = model(packed, hx)
        if cfg["mode"] == "lengths":  # torch.nn's route for a padded batch and its lengths
            out = pad_packed_sequence(out, batch_first=cfg["batch_first"],
                                      total_length=cfg["steps"])[0]
    else:
        out, state = model(x, hx)
    h_n, c_n = state if cfg["cell"] == "lstm" else (state, None)
    if isinstance(out, PackedSequence):
        out = out.data
    results = {"output": out, "h_n": h_n, "c_n": c_n}
    loss_weights = torch.Generator().manual_seed(cfg["seed"] + 2)
    loss = sum((t * torch.randn(t.shape, generator=loss_weights, dtype=torch.float64)
                .to(dtype)).sum() for t in results.values() if t is not None)
    loss.backward()
    for name, leaf in leaves.items():
        results[f"grad.{name}"] = leaf.grad
    for name, p in model.named_parameters():
        results[f"grad.{name}"] = p.grad
    return {k: (v.detach().double() if v is not None else None) for k, v in results.items()}


def check(cfg):
    ref, ours = make_models(cfg)
    inputs = make_inputs(cfg)
    expected = run(ref, cfg, inputs, torch.float64)
    actual = run(ours, cfg, inputs, cfg["dtype"])
    assert_same_nonfinite(expected, actual, **TOL[cfg["dtype"]])


# Examples the fuzzing found wrong once, run first on every run: an inf h0 of a GRU
# sequence shorter than T brought 0 * inf = NaN into dW_hh through the padded steps
# (fixed in csrc/layer.cpp previous_states; tests/test_nonfinite.py has more of it).
FOUND = [
    dict(cell="gru", input_size=2, hidden_size=3, num_layers=1, bias=False,
         batch_first=False, bidirectional=False, proj_size=0, dropout=0.0,
         mode="packed_unsorted", steps=2, batch=2, lengths=[1, 2], h0=True,
         x_view="contiguous", h_view="contiguous", dtype=torch.float64, scale=0.1,
         poison="inf", poison_in="h0", poison_at=0, seed=0),
]


def fuzz_settings(examples):
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("backend_name", ["cpp", "python"])
def test_fuzz_against_torch_nn(backend_name):
    if CHILD_VAR in os.environ and backend_name != "cpp":
        pytest.skip("a subprocess of test_fuzz_other_cpu_paths runs the compiled path only")
    assert birnn_ext.set_backend(backend_name) == backend_name
    examples = SUBPROCESS_EXAMPLES if CHILD_VAR in os.environ else EXAMPLES

    @fuzz_settings(examples)
    @given(cfg=configs())
    @example(cfg=FOUND[0])
    def fuzz(cfg):
        check(cfg)
        count[0] += 1
        if PROGRESS and count[0] % PROGRESS == 0:
            path = birnn_ext.kernel_path("cpu")
            print(f"fuzz {path}: {count[0]} examples, {time.time() - start:.0f} s",
                  file=sys.__stderr__, flush=True)

    count, start = [0], time.time()
    fuzz()


@pytest.mark.parametrize("simd", ["avx2", "0"])
def test_fuzz_other_cpu_paths(simd):
    """The compiled CPU paths this process did not take (BIRNN_EXT_CPU_SIMD is read once per
    process): the same fuzzing in a subprocess on each."""
    if CHILD_VAR in os.environ:
        pytest.skip("already a subprocess")
    env = dict(os.environ, BIRNN_EXT_CPU_SIMD=simd, **{CHILD_VAR: "1"})
    node = f"{os.path.abspath(__file__)}::test_fuzz_against_torch_nn[cpp]"
    # Its stderr goes to ours, so a long run's progress lines (BIRNN_EXT_FUZZ_PROGRESS) show.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                          timeout=None if "BIRNN_EXT_FUZZ_EXAMPLES" in os.environ else 900)
    assert done.returncode == 0, done.stdout[-6000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]
    check_path = subprocess.run(
        [sys.executable, "-c", "import birnn_ext; print(birnn_ext.kernel_path('cpu'))"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert check_path.stdout.split()[-1] == ("cpu-avx2" if simd == "avx2" else "cpu-scalar")
