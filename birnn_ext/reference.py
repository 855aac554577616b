"""Pure-torch implementation of the op contract (csrc/birnn.h): the fallback when the compiled
module is unavailable, and the tests' second oracle.

It is written for clarity, not speed: a plain loop over steps, both directions in turn, the
lengths mask applied with torch.where. The backward re-runs the forward keeping each step's
values, then walks the steps back with the derivatives written out in plain torch ops (no
autograd inside a kernel: that breaks under dispatch modes such as opcheck's).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def _cell_step(cell: str, gates_x: Tensor, gates_h: Tensor, h: Tensor, c: Tensor | None):
    """One step of one direction for the whole batch. gates_* [B, G*H] include biases.
    Returns (h', c'); for an LSTM h' is o*tanh(c') before any projection."""
    if cell == "rnn_tanh":
        return torch.tanh(gates_x + gates_h), None
    if cell == "rnn_relu":
        return torch.relu(gates_x + gates_h), None
    if cell == "lstm":
        i, f, g, o = (gates_x + gates_h).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    x_r, x_z, x_n = gates_x.chunk(3, dim=1)
    h_r, h_z, h_n = gates_h.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, None


def _valid_rows(lengths, t, B, device):
    """[B, 1] bool: which sequences still run at step t."""
    if lengths is None:
        return torch.ones(B, 1, dtype=torch.bool, device=device)
    return (lengths > t).unsqueeze(1)


def _direction(cell, d, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, steps_out=None):
    """Runs direction d over all steps: (outputs [T, B, Hout], h_n [B, Hout], c_n [B, H]).
    With steps_out (a dict), also records each step's values for the backward."""
    T, B = input.shape[0], input.shape[1]
    gates_x = input @ w_ih[d].t()
    if b_ih is not None:
        gates_x = gates_x + b_ih[d]
    h, c = hx[d], (cx[d] if cx is not None else None)
    steps = range(T) if d == 0 else range(T - 1, -1, -1)
    outputs = [None] * T
    for t in steps:
        gates_h = h @ w_hh[d].t()
        if b_hh is not None:
            gates_h = gates_h + b_hh[d]
        m, c_new = _cell_step(cell, gates_x[t], gates_h, h, c)
        h_new = m @ w_hr[d].t() if w_hr is not None else m
        if steps_out is not None:
            steps_out[t] = dict(gates_x=gates_x[t], gates_h=gates_h, h_prev=h, c_prev=c,
                                m=m, c=c_new)
        valid = _valid_rows(lengths, t, B, input.device)
        h = torch.where(valid, h_new, h)
        if c is not None:
            c = torch.where(valid, c_new, c)
        outputs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
    return torch.stack(outputs), h, c


def _cell_step_backward(cell, step, dm, dc):
    """Derivatives of one step for the batch, given dLoss/dm (m: the cell's hidden output
    before any projection) and, for an LSTM, dLoss/dc from later steps.
    Returns (dgates_x, dgates_h, dh_prev through the direct path, dc_prev)."""
    pre = step["gates_x"] + step["gates_h"]
    if cell in ("rnn_tanh", "rnn_relu"):
        h = step["m"]
        # relu: torch's threshold_backward (0 where h <= 0, else dm; a NaN h passes dm on).
        dpre = dm * (1 - h * h) if cell == "rnn_tanh" else torch.where(h <= 0, 0, dm)
        return dpre, dpre, 0, None
    if cell == "lstm":
        i, f, g, o = pre.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        tanh_c = torch.tanh(step["c"])
        dc = dc + dm * o * (1 - tanh_c * tanh_c)
        dpre = torch.cat([dc * g * i * (1 - i), dc * step["c_prev"] * f * (1 - f),
                          dc * i * (1 - g * g), dm * tanh_c * o * (1 - o)], dim=1)
        return dpre, dpre, 0, dc * f
    x_r, x_z, x_n = step["gates_x"].chunk(3, dim=1)
    h_r, h_z, h_n = step["gates_h"].chunk(3, dim=1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    dn = dm * (1 - z) * (1 - n * n)
    dz = dm * (step["h_prev"] - n) * z * (1 - z)
    dr = dn * h_n * r * (1 - r)
    return (torch.cat([dr, dz, dn], dim=1), torch.cat([dr, dz, dn * r], dim=1), dm * z, None)


def _autocast_off(device):
    """The caller chose the dtype (ops.layer applies torch.nn's autocast policy): no op in
    here may be recast by an autocast that is still on."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def check_lengths_device(input, lengths):
    """lengths (or None) must be on the CPU or on the input's device; the C++ ops' message."""
    if lengths is not None and lengths.device.type != "cpu" and lengths.device != input.device:
        raise RuntimeError(f"birnn_ext: lengths is on {lengths.device} but input is on "
                           f"{input.device}; lengths must be on the CPU or on the input's "
                           "device")


def _check_lengths(input, lengths):
    """The C++ ops' checks on T and lengths (csrc/layer.cpp check_layer), same messages."""
    T, B = input.shape[0], input.shape[1]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if lengths is None:
        return
    check_lengths_device(input, lengths)
    if lengths.dtype != torch.int64:
        raise RuntimeError(f"birnn_ext: lengths must be int64, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise RuntimeError(f"birnn_ext: expected lengths of shape [{B}], got {list(lengths.shape)}")
    if B > 0 and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise RuntimeError(f"birnn_ext: lengths must lie in [0, T={T}], got values in "
                           f"[{int(lengths.min())}, {int(lengths.max())}]")


def forward(cell, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, training):
    """The forward op: (output [T, B, D*Hout], h_n, c_n or [0], reserve)."""
    T, B = input.shape[0], input.shape[1]
    _check_lengths(input, lengths)
    lengths = lengths.to(input.device) if lengths is not None else None
    D = w_ih.shape[0]
    with _autocast_off(input.device):
        runs = [_direction(cell, d, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
                for d in range(D)]
    output = torch.cat([r[0] for r in runs], dim=2)
    h_n = torch.stack([r[1] for r in runs])
    c_n = torch.stack([r[2] for r in runs]) if cell == "lstm" else input.new_empty(0)
    # Nothing is reserved: the backward recomputes (reserve width 0 in ops.RESERVE_WIDTH_REF).
    reserve = input.new_empty((T, B, D, 0) if training else (0,))
    return output, h_n, c_n, reserve


def _backward_direction(cell, d, grad_output, grad_h_n, grad_c_n, input, lengths, hx, cx,
                        w_ih, w_hh, b_ih, b_hh, w_hr, grad_input, grad_hx, grad_cx, grad_w):
    """Direction d's share of the backward, accumulated into the grad_* buffers."""
    T, B, h_out = input.shape[0], input.shape[1], hx.shape[2]
    steps = {}
    _direction(cell, d, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, steps)
    dh = grad_h_n[d]
    dc = grad_c_n[d] if cell == "lstm" else None
    for t in (range(T - 1, -1, -1) if d == 0 else range(T)):
        step, valid = steps[t], _valid_rows(lengths, t, B, input.device)
        # This step's h reaches both the output at t and the next step (masked rows: neither).
        dh_step = torch.where(valid, dh + grad_output[t, :, d * h_out:(d + 1) * h_out], 0)
        # Masked rows have zero gradients, but the values they multiply in the weight
        # gradients (m, h_prev: computed from a carried state; x: the caller's padding with
        # lengths=) may be inf or NaN, and 0 * inf is NaN where torch.nn, which never sees a
        # padded step, is finite: zero them.
        if w_hr is not None:
            grad_w["w_hr"][d] += dh_step.t() @ torch.where(valid, step["m"], 0)
            dm = dh_step @ w_hr[d]
        else:
            dm = dh_step
        dgx, dgh, dh_direct, dc_prev = _cell_step_backward(
            cell, step, dm, torch.where(valid, dc, 0) if dc is not None else None)
        dgx, dgh = torch.where(valid, dgx, 0), torch.where(valid, dgh, 0)
        grad_input[t] += dgx @ w_ih[d]
        grad_w["w_ih"][d] += dgx.t() @ torch.where(valid, input[t], 0)
        grad_w["w_hh"][d] += dgh.t() @ torch.where(valid, step["h_prev"], 0)
        if b_ih is not None:
            grad_w["b_ih"][d] += dgx.sum(0)
            grad_w["b_hh"][d] += dgh.sum(0)
        dh = torch.where(valid, dh_direct + dgh @ w_hh[d], dh)
        if dc is not None:
            dc = torch.where(valid, dc_prev, dc)
    grad_hx[d] = dh
    if dc is not None:
        grad_cx[d] = dc


def backward(cell, grad_output, grad_h_n, grad_c_n, input, lengths, hx, cx, w_ih, w_hh,
             b_ih, b_hh, w_hr, output, reserve):
    """The backward op: gradients of input, hx, cx and every weight ([0] for absent ones)."""
    del output, reserve  # recomputed
    _check_lengths(input, lengths)
    lengths = lengths.to(input.device) if lengths is not None else None
    grad_input = torch.zeros_like(input)
    grad_hx, grad_cx = torch.zeros_like(hx), (torch.zeros_like(cx) if cx is not None else None)
    grad_w = {name: torch.zeros_like(w) for name, w in
              dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr).items() if w is not None}
    with _autocast_off(input.device):
        for d in range(w_ih.shape[0]):
            _backward_direction(cell, d, grad_output, grad_h_n, grad_c_n, input, lengths, hx,
                                cx, w_ih, w_hh, b_ih, b_hh, w_hr, grad_input, grad_hx,
                                grad_cx, grad_w)
    # Absent inputs get a fresh [0] tensor each: op outputs must not alias one another.
    return tuple(g if g is not None else input.new_empty(0) for g in (
        grad_input, grad_hx, grad_cx, grad_w["w_ih"], grad_w["w_hh"], grad_w.get("b_ih"),
        grad_w.get("b_hh"), grad_w.get("w_hr")))
