"""Pure-torch implementation of the op contract (csrc/birnn.h): the fallback when the compiled
module is unavailable, and the tests' second oracle.

It is written for clarity, not speed: a plain loop over steps, both directions in turn, the
lengths mask applied with torch.where. The backward does not restate any derivative: it
re-runs this forward under autograd and asks autograd for the gradients, so it is
independent of the C++ backward it is compared with.
"""

from __future__ import annotations

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


def _direction(cell, d, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr):
    """Runs direction d over all steps: (outputs [T, B, Hout], h_n [B, Hout], c_n [B, H])."""
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
        h_new, c_new = _cell_step(cell, gates_x[t], gates_h, h, c)
        if w_hr is not None:
            h_new = h_new @ w_hr[d].t()
        if lengths is None:
            valid = torch.ones(B, 1, dtype=torch.bool, device=input.device)
        else:
            valid = (lengths > t).unsqueeze(1)
        h = torch.where(valid, h_new, h)
        if c is not None:
            c = torch.where(valid, c_new, c)
        outputs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
    return torch.stack(outputs), h, c


def forward(cell, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, training):
    """The forward op: (output [T, B, D*Hout], h_n, c_n or [0], reserve)."""
    T, B = input.shape[0], input.shape[1]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if lengths is not None:
        if lengths.device != input.device:
            raise RuntimeError(
                f"birnn_ext: lengths is on {lengths.device} but input is on {input.device}; "
                "lengths must be on the input's device")
        if B > 0 and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise RuntimeError(f"birnn_ext: lengths must lie in [0, T={T}], got values in "
                               f"[{int(lengths.min())}, {int(lengths.max())}]")
    D = w_ih.shape[0]
    runs = [_direction(cell, d, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
            for d in range(D)]
    output = torch.cat([r[0] for r in runs], dim=2)
    h_n = torch.stack([r[1] for r in runs])
    c_n = torch.stack([r[2] for r in runs]) if cell == "lstm" else input.new_empty(0)
    # Nothing is reserved: the backward recomputes (reserve width 0 in ops.RESERVE_WIDTH_REF).
    reserve = input.new_empty((T, B, D, 0) if training else (0,))
    return output, h_n, c_n, reserve


def backward(cell, grad_output, grad_h_n, grad_c_n, input, lengths, hx, cx, w_ih, w_hh,
             b_ih, b_hh, w_hr, output, reserve):
    """The backward op: gradients of every floating input, by autograd through forward()."""
    del output, reserve  # recomputed below
    leaves = [t.detach().requires_grad_(True) if t is not None else None
              for t in (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)]
    with torch.enable_grad():
        out, h_n, c_n, _ = forward(cell, leaves[0], lengths, *leaves[1:7], leaves[7],
                                   training=False)
        outs, grads = [out, h_n], [grad_output, grad_h_n]
        if cell == "lstm":
            outs.append(c_n)
            grads.append(grad_c_n)
        wrt = [t for t in leaves if t is not None]
        got = iter(torch.autograd.grad(outs, wrt, grads, allow_unused=True))
    empty = input.new_empty(0)
    result = []
    for leaf in leaves:
        g = next(got) if leaf is not None else None
        if g is None:
            g = torch.zeros_like(leaf) if leaf is not None else empty
        result.append(g)
    return tuple(result)
