"""The custom ops: schemas for the Python fallback, fake kernels, autograd, autocast, and the
differentiable entry point `layer()` that the modules call once per layer.

Two namespaces carry the same schemas:
  torch.ops.birnn_ext      defined in C++ (csrc/ops.cpp), CPU and CUDA kernels
  torch.ops.birnn_ext_ref  defined here, implemented by birnn_ext/reference.py
Both get the same fake kernels and autograd from this file, so the fallback honours the
very same contract (opcheck, torch.compile) as the compiled kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend, _weights, reference

# The cells, as the pure-torch implementation knows them (the compiled module's list, from
# csrc/cells.h's registry, must be the same: _compiled_reserve_widths checks it).
GATES = reference.GATES
CELLS = tuple(GATES)
RESERVE_WIDTH_REF = dict.fromkeys(CELLS, 0)  # the reference recomputes; it reserves nothing
# The cells torch.nn runs in the autocast dtype, per device type: on CUDA every cell goes to
# cuDNN, which autocast casts; on the CPU torch.nn.GRU keeps float32 outputs.
AUTOCAST_CELLS = {"cuda": frozenset(CELLS), "cpu": frozenset({"rnn_tanh", "rnn_relu", "lstm"})}

FORWARD_SCHEMA = (
    "(Tensor input, Tensor? lengths, Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, "
    "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool training) "
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)")
BACKWARD_SCHEMA = (
    "(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor input, Tensor? lengths, "
    "Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? w_hr, Tensor output, Tensor reserve) -> (Tensor grad_input, Tensor grad_hx, "
    "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, "
    "Tensor grad_w_hr)")

_ref_lib = torch.library.Library("birnn_ext_ref", "DEF")  # kept alive: owns the ref ops


def _define_reference_ops():
    for cell in CELLS:
        _ref_lib.define(f"{cell}_forward{FORWARD_SCHEMA}")
        _ref_lib.define(f"{cell}_backward{BACKWARD_SCHEMA}")
        _ref_lib.impl(f"{cell}_forward",
                      lambda *args, cell=cell: reference.forward(cell, *args),
                      "CompositeExplicitAutograd")
        _ref_lib.impl(f"{cell}_backward",
                      lambda *args, cell=cell: reference.backward(cell, *args),
                      "CompositeExplicitAutograd")


def _check_devices(input, lengths, *tensors):
    """The device checks the real kernels make, for the fake kernels: without them a meta
    tensor among CPU ones would route the call here and return uninitialised memory."""
    reference.check_lengths_device(input, lengths)
    for t in tensors:
        if t is not None and t.device != input.device:
            raise RuntimeError(f"birnn_ext: a tensor is on {t.device} but input is on "
                               f"{input.device}; all tensors must be on the same device")


def _fake_forward(cell, reserve_width):
    def fake(input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, training):
        _check_devices(input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
        T, B = input.shape[0], input.shape[1]
        D, H = w_ih.shape[0], w_ih.shape[1] // GATES[cell]
        h_out = w_hr.shape[1] if w_hr is not None else H
        c_n = input.new_empty((D, B, H) if cell == "lstm" else (0,))
        reserve = input.new_empty((T, B, D, reserve_width * H) if training else (0,))
        return input.new_empty((T, B, D * h_out)), hx.new_empty(hx.shape), c_n, reserve
    return fake


def _fake_backward(grad_output, grad_h_n, grad_c_n, input, lengths, hx, cx, w_ih, w_hh,
                   b_ih, b_hh, w_hr, output, reserve):
    _check_devices(input, lengths, grad_output, grad_h_n, grad_c_n, hx, cx, w_ih, w_hh, b_ih,
                   b_hh, w_hr, output, reserve)

    def like(t):
        return t.new_empty(t.shape) if t is not None else input.new_empty(0)
    return (like(input), like(hx), like(cx), like(w_ih), like(w_hh), like(b_ih), like(b_hh),
            like(w_hr))


def _setup_context(ctx, inputs, output):
    input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, _training = inputs
    # No reserve-sized tensor of zeros for the reserve's gradient, which nothing ever has: an
    # LSTM's reserve is 5H values per (t, b, d), and filling it cost 16 ms of a 210 ms
    # backward (B=64, H=256; benchmarks/NOTES.md, CPU version 17). The other outputs' missing
    # gradients become zeros in backward.
    ctx.set_materialize_grads(False)
    # A stacked view of both directions' parameters carries the second one, saved too, so
    # that an in-place change of it before the backward raises (_weights.SECOND_DIRECTION).
    seconds = [getattr(w, _weights.SECOND_DIRECTION, None) for w in (w_ih, w_hh, b_ih, b_hh, w_hr)]
    ctx.save_for_backward(input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                          output[0], output[3], *[w for w in seconds if w is not None])


def _differentiable_grads(cell, inputs, grad_outputs):
    """Gradients that autograd can differentiate again (backward with create_graph=True, as
    for a gradient penalty): autograd through the reference forward. Slow, but exact."""
    input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr = inputs
    with torch.enable_grad():
        output, h_n, c_n, _ = reference.forward(cell, input, lengths, hx, cx, w_ih, w_hh, b_ih,
                                                b_hh, w_hr, training=False)
        outs = [output, h_n] + ([c_n] if cell == "lstm" else [])
        wrt = [t for t in inputs if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(outs, wrt, grad_outputs[:len(outs)], create_graph=True,
                                       allow_unused=True))
    return tuple(next(got) if t is not None and t.requires_grad else None for t in inputs)


def _autograd_backward(backward_op, cell):
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_reserve):
        # (Unpacking checks every saved tensor's version, the second directions' too.)
        input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, reserve = ctx.saved_tensors[:11]
        # Outputs the loss did not use have no gradient (_setup_context): zero, as autograd
        # would have made them.
        if grad_output is None:
            grad_output = torch.zeros_like(out)
        if grad_h_n is None:
            grad_h_n = torch.zeros_like(hx)
        if grad_c_n is None and cell == "lstm":
            grad_c_n = hx.new_zeros((hx.shape[0], hx.shape[1], w_ih.shape[1] // GATES[cell]))
        if torch.is_grad_enabled():
            inputs = (input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
            return _differentiable_grads(cell, inputs, (grad_output, grad_h_n, grad_c_n)) + (None,)
        grads = backward_op(grad_output, grad_h_n, grad_c_n if cell == "lstm" else None,
                            input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, reserve)
        g_in, g_hx, g_cx, g_wih, g_whh, g_bih, g_bhh, g_whr = grads
        return (g_in, None, g_hx, g_cx if cx is not None else None, g_wih, g_whh,
                g_bih if b_ih is not None else None, g_bhh if b_hh is not None else None,
                g_whr if w_hr is not None else None, None)
    return backward


# The autograd formula registered for each forward op, also as autograd.Functions per
# (namespace, cell) for eager calls (layer() below). Through the op's own registration each
# call with autograd first runs torch.library's fill_defaults, which rebuilds the schema's
# argument list once per argument: 29 us, more than the whole op at T=1 and H=128. The
# Functions have the very same setup_context and backward; their forward calls the op with
# grad mode off (a Function's forward always runs so), which goes straight to the kernel.
# The Function calls setup_context from its own forward: one with a separate setup_context
# pays 20 us in inspect.signature at every call. (torch.func transforms take the reference
# instead, layer() below.)
_EAGER_FUNCTIONS: dict[tuple[str, str], type] = {}


def _eager_function(forward_op, setup_context, backward):
    def forward(ctx, *args):
        output = forward_op(*args)
        setup_context(ctx, args, output)
        return output

    return type("BirnnExtLayer", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward)})


def _register_python_side(namespace, reserve_widths):
    ops = getattr(torch.ops, namespace)
    for cell in CELLS:
        fwd, bwd = f"{namespace}::{cell}_forward", f"{namespace}::{cell}_backward"
        torch.library.register_fake(fwd)(_fake_forward(cell, reserve_widths[cell]))
        torch.library.register_fake(bwd)(_fake_backward)
        backward = _autograd_backward(getattr(ops, f"{cell}_backward"), cell)
        torch.library.register_autograd(fwd, backward, setup_context=_setup_context)
        _EAGER_FUNCTIONS[namespace, cell] = _eager_function(
            getattr(ops, f"{cell}_forward").default, _setup_context, backward)


_compiled_side_registered = False


def _compiled_reserve_widths() -> dict[str, int]:
    """Values per (t, b, d) row of the compiled ops' `reserve`, in units of H, per cell, from
    the module's build info (csrc/cells.h's kReserve)."""
    cells = _backend.build_info()["cells"]
    names = tuple(c["name"] for c in cells)
    if names != CELLS or any(c["gates"] != GATES[c["name"]] for c in cells):
        raise RuntimeError(f"birnn_ext: the compiled module's cells {names} do not match the "
                           f"Python side's {CELLS}: rebuild the extension")
    return {c["name"]: c["reserve"] for c in cells}


def _register_compiled_side():
    """Fake kernels and autograd for the C++ ops, once their module is loaded."""
    global _compiled_side_registered
    if not _compiled_side_registered and _backend.compiled_module() is not None:
        _register_python_side("birnn_ext", _compiled_reserve_widths())
        _compiled_side_registered = True


_define_reference_ops()
_register_python_side("birnn_ext_ref", RESERVE_WIDTH_REF)
if _backend.get_backend() != "python":
    _register_compiled_side()


def _namespace() -> str:
    """The ops' namespace of the active backend."""
    if _backend.get_backend() == "python":
        return "birnn_ext_ref"
    _register_compiled_side()
    return "birnn_ext"


def forward_op(cell: str):
    """The forward op of `cell` in the namespace of the active backend."""
    return getattr(getattr(torch.ops, _namespace()), f"{cell}_forward").default


def _autocast(t: Tensor | None, dtype: torch.dtype):
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def layer(cell: str, input: Tensor, lengths: Tensor | None, hx: Tensor, cx: Tensor | None,
          w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
          w_hr: Tensor | None):
    """One layer, both directions, differentiable: (output [T, B, D*Hout], h_n, c_n).

    input [T, B, I] time-major; lengths [B] int64 or None (all T), on the CPU (checked there,
    with no device sync; a CUDA layer gets them without one) or on input's device (read back
    to the host once per call: a sync, refused during CUDA graph capture);
    weights stacked over directions: w_ih [D, G*H, I], w_hh [D, G*H, Hout], b_* [D, G*H],
    w_hr [D, Hout, H]. c_n is None unless cell == "lstm".
    """
    if cell not in GATES:
        raise ValueError(f"birnn_ext: unknown cell {cell!r}; expected one of {CELLS}")
    tensors = (input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
    device_type = input.device.type
    if cell in AUTOCAST_CELLS.get(device_type, ()) and torch.is_autocast_enabled(device_type):
        # As torch.nn's layer under autocast: run in the autocast dtype (float64 left alone).
        dtype = torch.get_autocast_dtype(device_type)
        tensors = tuple(_autocast(t, dtype) for t in tensors)
        with torch.autocast(device_type, enabled=False):
            return layer(cell, tensors[0], lengths, *tensors[1:])
    transformed = torch._C._functorch.peek_interpreter_stack() is not None
    if transformed and not torch.compiler.is_compiling():
        # Under a torch.func transform: the pure-PyTorch reference, which every transform
        # differentiates and batches natively. Through the op, vjp and jacrev gave zeros for
        # the input (the op's double-backward formula ran at the wrong functorch level),
        # grad of grad a wrong second derivative, hessian an error, vmap a loop per model.
        output, h_n, c_n, _ = reference.forward(cell, input, lengths, hx, cx, w_ih, w_hh, b_ih,
                                                b_hh, w_hr, training=False)
        return output, h_n, (c_n if cell == "lstm" else None)
    tracing = torch.jit.is_tracing()
    # Traced, the flag is a constant of the graph, which must serve every later call,
    # whatever its grad mode and whichever tensors then need gradients: always a reserve.
    training = tracing or (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors))
    args = (input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, training)
    # The eager Function is for eager calls only: torch.compile traces the op itself, and
    # torch.jit.trace records a Function as a Python call that a traced module cannot save.
    if training and not tracing and not torch.compiler.is_compiling():
        output, h_n, c_n, _ = _EAGER_FUNCTIONS[_namespace(), cell].apply(*args)
    else:
        output, h_n, c_n, _ = forward_op(cell)(*args)
    return output, h_n, (c_n if cell == "lstm" else None)
