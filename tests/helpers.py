"""Paired torch.nn / birnn_ext modules with identical weights, run side by side and compared
on everything they return: outputs, h_n, c_n and the gradients of the input, h0, c0 and every
parameter. Also the covering-array generator that keeps the parity grids small."""

from __future__ import annotations

import dataclasses
import itertools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import birnn_ext
from birnn_ext import ops

CELLS = ops.CELLS
GATES = ops.GATES

# Small sizes: the suite runs on two CPU cores.
T, B, I, H, P = 6, 4, 5, 4, 2   # steps, batch, input size, hidden size, LSTM proj_size
LENGTHS = (4, 1, 3)             # + one of T steps: unsorted, with a length-1 sequence
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=1e-5, rtol=1e-4)}


def module_classes(cell):
    """(torch.nn class, birnn_ext class, extra constructor kwargs) for a cell name."""
    if cell == "lstm":
        return torch.nn.LSTM, birnn_ext.LSTM, {}
    if cell == "gru":
        return torch.nn.GRU, birnn_ext.GRU, {}
    return torch.nn.RNN, birnn_ext.RNN, {"nonlinearity": cell[len("rnn_"):]}


def make_pair(cell, input_size=I, hidden_size=H, dtype=torch.float64, device="cpu", **kwargs):
    """A torch.nn module and the birnn_ext module of the same cell, with the same weights."""
    nn_cls, ext_cls, extra = module_classes(cell)
    ref = nn_cls(input_size, hidden_size, dtype=dtype, device=device, **extra, **kwargs)
    ours = ext_cls(input_size, hidden_size, dtype=dtype, device=device, **extra, **kwargs)
    ours.load_state_dict(ref.state_dict())
    assert type(ours) is not nn_cls and isinstance(ours, nn_cls)
    return ref, ours


@dataclasses.dataclass(frozen=True)
class Case:
    """One parity configuration. mode: "padded" (3-D), "packed" (PackedSequence built with
    enforce_sorted=False from LENGTHS), "sorted" (PackedSequence from sorted lengths,
    enforce_sorted=True), "unbatched" (2-D input) or "lengths" (3-D input and LENGTHS:
    birnn_ext takes them as lengths=, torch.nn packs with enforce_sorted=False and unpacks
    its output with total_length=T, the route lengths= stands for)."""

    cell: str
    mode: str = "padded"
    bidirectional: bool = False
    num_layers: int = 1
    dtype: torch.dtype = torch.float64
    bias: bool = True
    batch_first: bool = False
    h0: bool = False
    proj_size: int = 0
    hidden_size: int = H
    steps: int = T
    device: str = "cpu"

    @property
    def id(self):
        parts = [self.cell, self.mode, "bi" if self.bidirectional else "uni",
                 f"L{self.num_layers}", str(self.dtype).replace("torch.", ""),
                 "bias" if self.bias else "nobias", "bf" if self.batch_first else "tf",
                 "h0" if self.h0 else "noh0"]
        if self.proj_size:
            parts.append(f"proj{self.proj_size}")
        if (self.hidden_size, self.steps) != (H, T):
            parts.append(f"H{self.hidden_size}-T{self.steps}")
        if self.device != "cpu":
            parts.append(self.device)
        return "-".join(parts)

    def module_kwargs(self):
        kw = dict(num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                  bidirectional=self.bidirectional)
        if self.proj_size:
            kw["proj_size"] = self.proj_size
        return kw

    def make_pair(self):
        return make_pair(self.cell, hidden_size=self.hidden_size, dtype=self.dtype,
                         device=self.device, **self.module_kwargs())


def make_inputs(case: Case, b=B):
    """Random x (batch_first or time-major, 2-D when unbatched), lengths (on the CPU, as
    pack_padded_sequence wants them), h0 and c0, on case.device."""
    dtype, t, hidden = case.dtype, case.steps, case.hidden_size
    num_states = case.num_layers * (2 if case.bidirectional else 1)
    h_out = case.proj_size or hidden
    if case.mode == "unbatched":
        x = torch.randn(t, I, dtype=dtype)
        h0 = torch.randn(num_states, h_out, dtype=dtype)
        c0 = torch.randn(num_states, hidden, dtype=dtype)
    else:
        x = torch.randn((b, t, I) if case.batch_first else (t, b, I), dtype=dtype)
        h0 = torch.randn(num_states, b, h_out, dtype=dtype)
        c0 = torch.randn(num_states, b, hidden, dtype=dtype)
    lengths = [min(n, t) for n in LENGTHS[:b - 1]] + [t]
    if case.mode in ("packed", "lengths"):
        lengths = torch.tensor(lengths)
    elif case.mode == "sorted":
        lengths = torch.tensor(sorted(lengths, reverse=True))
    else:
        lengths = None
    x, h0, c0 = x.to(case.device), h0.to(case.device), c0.to(case.device)
    return dict(x=x, lengths=lengths, h0=h0 if case.h0 else None,
                c0=c0 if case.h0 and case.cell == "lstm" else None)


def run(model, case: Case, inputs):
    """Forward and backward of `model` on copies of `inputs`. Returns {name: tensor or None}
    with the outputs, and the gradients of x, h0, c0 and every parameter ("grad.<name>")."""
    x = inputs["x"].clone().requires_grad_()
    h0 = inputs["h0"].clone().requires_grad_() if inputs["h0"] is not None else None
    c0 = inputs["c0"].clone().requires_grad_() if inputs["c0"] is not None else None
    model.zero_grad(set_to_none=True)
    lengths = inputs["lengths"]
    keyword = case.mode == "lengths" and isinstance(model, birnn_ext.modules._FusedForward)
    arg = x
    if lengths is not None and not keyword:
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.cpu()  # pack_padded_sequence takes CPU lengths only
        arg = pack_padded_sequence(x, lengths, batch_first=case.batch_first,
                                   enforce_sorted=case.mode == "sorted")
    hx = None
    if h0 is not None:
        hx = (h0, c0) if case.cell == "lstm" else h0
    out, state = model(arg, hx, lengths=lengths) if keyword else model(arg, hx)
    if case.mode == "lengths" and not keyword:
        out = pad_packed_sequence(out, batch_first=case.batch_first,
                                  total_length=x.size(1 if case.batch_first else 0))[0]
    h_n, c_n = state if case.cell == "lstm" else (state, None)
    result = dict(h_n=h_n, c_n=c_n)
    if lengths is not None and case.mode != "lengths":
        assert isinstance(out, PackedSequence)
        result.update(output=out.data, batch_sizes=out.batch_sizes,
                      sorted_indices=out.sorted_indices, unsorted_indices=out.unsorted_indices)
    else:
        assert isinstance(out, torch.Tensor)
        result["output"] = out
    # A loss that weighs every output element differently, so no gradient hides in a sum.
    gen = torch.Generator().manual_seed(1234)
    loss = sum((t * torch.randn(t.shape, generator=gen).to(t.device, t.dtype)).sum()
               for t in (result["output"], h_n, c_n) if t is not None)
    loss.backward()
    result.update({"grad.x": x.grad, "grad.h0": h0.grad if h0 is not None else None,
                   "grad.c0": c0.grad if c0 is not None else None})
    for name, param in model.named_parameters():
        result[f"grad.{name}"] = param.grad
    return result


def assert_same(expected: dict, actual: dict, atol, rtol):
    """Every entry equal up to tolerance, with the same shape and dtype; None where None."""
    assert expected.keys() == actual.keys()
    for name, exp in expected.items():
        act = actual[name]
        if exp is None:
            assert act is None, f"{name}: expected None, got a tensor"
            continue
        assert act is not None, f"{name}: expected a tensor, got None"
        assert act.shape == exp.shape, f"{name}: shape {tuple(act.shape)} != {tuple(exp.shape)}"
        assert act.dtype == exp.dtype, f"{name}: dtype {act.dtype} != {exp.dtype}"
        assert torch.isfinite(act).all(), f"{name}: non-finite values (unwritten buffer?)"
        torch.testing.assert_close(act, exp, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def assert_same_nonfinite(expected: dict, actual: dict, atol, rtol):
    """As assert_same, for results that may hold NaN or inf: each of NaN, +inf and -inf sits
    at the same places in both, and the finite values are close, with atol taken relative
    to the tensor's largest finite value (float32's error grows with the values summed)."""
    assert expected.keys() == actual.keys()
    for name, exp in expected.items():
        act = actual[name]
        assert (act is None) == (exp is None), f"{name}: present in one result only"
        if exp is None:
            continue
        assert act.shape == exp.shape, f"{name}: shape {tuple(act.shape)} != {tuple(exp.shape)}"
        for what, mask in (("NaN", torch.isnan), ("+inf", torch.isposinf),
                           ("-inf", torch.isneginf)):
            if not torch.equal(mask(act), mask(exp)):
                where = (mask(act) != mask(exp)).nonzero().tolist()[:5]
                raise AssertionError(f"{name}: {what} at different places, e.g. {where}: "
                                     f"torch.nn {exp.flatten()[:8].tolist()} birnn_ext "
                                     f"{act.flatten()[:8].tolist()}")
        finite = torch.isfinite(exp)
        scale = max(1.0, exp[finite].abs().max().item()) if finite.any() else 1.0
        torch.testing.assert_close(act[finite].to(exp.dtype), exp[finite], atol=atol * scale,
                                   rtol=rtol, msg=lambda m: f"{name}: {m}")


def check_parity(case: Case, batch=B):
    """torch.nn and birnn_ext agree on every output and gradient for `case`."""
    ref, ours = case.make_pair()
    inputs = make_inputs(case, batch)
    expected = run(ref, case, inputs)
    actual = run(ours, case, inputs)
    assert_same(expected, actual, **TOL[case.dtype])


def cast(result: dict, dtype, device):
    """Every floating tensor of `result` cast to dtype and moved to device (others moved)."""
    return {k: (v.to(device, dtype) if v is not None and v.is_floating_point()
                else (v.to(device) if v is not None else None))
            for k, v in result.items()}


def check_low_precision(case: Case, ref, ours):
    """float16 / bfloat16: rounding makes torch.nn and birnn_ext both differ from the exact
    result, so each is measured against a float64 CPU run of the same weights and inputs;
    birnn_ext's error may be at most twice torch.nn's, plus a floor."""
    inputs = make_inputs(case)
    expected, actual = run(ref, case, inputs), run(ours, case, inputs)
    truth_case = dataclasses.replace(case, device="cpu", dtype=torch.float64)
    truth, _ = truth_case.make_pair()
    truth.load_state_dict({k: v.double().cpu() for k, v in ref.state_dict().items()})
    exact = run(truth, truth_case, cast(inputs, torch.float64, "cpu"))
    floor = 1e-2 if case.dtype == torch.float16 else 5e-2
    assert expected.keys() == actual.keys() == exact.keys()
    for name, value in exact.items():
        if value is None or not value.is_floating_point():
            assert (actual[name] is None) == (value is None), name
            if value is not None:
                assert torch.equal(actual[name].cpu(), value), name
            continue
        assert actual[name].dtype == expected[name].dtype == case.dtype, name
        assert torch.isfinite(actual[name]).all(), f"{name}: non-finite values"
        err_ref = (expected[name].double().cpu() - value).abs().max().item()
        err_our = (actual[name].double().cpu() - value).abs().max().item()
        scale = max(1.0, value.abs().max().item())
        assert err_our <= 2 * err_ref + floor * scale, (name, err_our, err_ref)


def covering(key: dict, others: dict):
    """Rows (dicts) holding every combination of the `key` factors, with the `others` filled
    in so that every pair of values of any two factors appears in at least one row: a
    pairwise covering array grown greedily, one factor at a time (IPO)."""
    rows = [dict(zip(key, combo)) for combo in itertools.product(*key.values())]
    done = list(key)
    for factor, values in others.items():
        uncovered = {(g, v_g, v) for g in done for v_g in (key | others)[g] for v in values}
        for row in rows:  # horizontal growth: the value covering the most new pairs
            gain = {v: sum((g, row[g], v) in uncovered for g in done if row[g] is not None)
                    for v in values}
            row[factor] = max(values, key=lambda v: gain[v])
            uncovered -= {(g, row[g], row[factor]) for g in done}
        for g, v_g, v in sorted(uncovered, key=repr):  # vertical growth: rows for the rest
            row = next((r for r in rows if r.get(factor) in (None, v) and r[g] in (None, v_g)),
                       None)
            if row is None:
                row = dict.fromkeys(done + [factor])
                rows.append(row)
            row[g], row[factor] = v_g, v
        done.append(factor)
    all_factors = key | others
    return [{f: (v if v is not None else all_factors[f][0]) for f, v in r.items()}
            for r in rows]


def op_inputs(cell, directions=2, bias=True, proj=0, lengths=(3, 1, 4), steps=4, hidden=3,
              input_size=2, dtype=torch.float64, device="cpu", requires_grad=False):
    """Random arguments of one layer op in schema order: [input, lengths, hx, cx, w_ih, w_hh,
    b_ih, b_hh, w_hr] (absent ones None). `lengths` None means every sequence is full."""
    batch = len(lengths) if lengths is not None else 3
    g_h, h_out = GATES[cell] * hidden, proj or hidden

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)

    return [
        rand(steps, batch, input_size),
        torch.tensor(lengths, device=device) if lengths is not None else None,
        rand(directions, batch, h_out),
        rand(directions, batch, hidden) if cell == "lstm" else None,
        rand(directions, g_h, input_size),
        rand(directions, g_h, h_out),
        rand(directions, g_h) if bias else None,
        rand(directions, g_h) if bias else None,
        rand(directions, h_out, hidden) if proj else None,
    ]


def layer_of_tensors(cell, args):
    """ops.layer as a function of the tensors among op_inputs' `args` (lengths held fixed):
    returns (fn, tensors) with fn(*tensors) -> the layer's outputs that are not None."""
    from birnn_ext import ops

    lengths = args[1]
    positions = [i for i, a in enumerate(args) if a is not None and i != 1]

    def fn(*tensors):
        full = [None] * len(args)
        full[1] = lengths
        for pos, t in zip(positions, tensors):
            full[pos] = t
        return tuple(o for o in ops.layer(cell, *full) if o is not None)

    return fn, [args[i] for i in positions]

