"""The ops themselves: opcheck (schema, fake kernel, autograd registration, AOT dispatch) for
every op in both namespaces, identical schemas across the namespaces, lengths handling and
the ops' own argument errors."""

import pytest
import torch

import birnn_ext  # noqa: F401  (registers the fake kernels and autograd of both namespaces)
from birnn_ext import _backend, ops, reference
from helpers import CELLS, op_inputs

NAMESPACES = ("birnn_ext", "birnn_ext_ref")
# (directions, bias, proj, lengths): one bidirectional case with unsorted lengths, one plain.
VARIANTS = {"bi-len": (2, True, 0, (3, 1, 4)), "uni-full-nobias": (1, False, 0, None)}
LSTM_VARIANTS = {"bi-proj": (2, True, 2, (2, 4, 1))}


def op(namespace, cell, kind):
    return getattr(getattr(torch.ops, namespace), f"{cell}_{kind}").default


def _params():
    for ns in NAMESPACES:
        for cell in CELLS:
            variants = VARIANTS | (LSTM_VARIANTS if cell == "lstm" else {})
            for name, variant in variants.items():
                yield pytest.param(ns, cell, variant, id=f"{ns}-{cell}-{name}")


def _backward_args(ns, cell, args):
    """Real arguments of the backward op: a training forward's output and reserve."""
    output, h_n, c_n, reserve = op(ns, cell, "forward")(*args, True)
    grad_c_n = torch.randn_like(c_n) if cell == "lstm" else None
    return [torch.randn_like(output), torch.randn_like(h_n), grad_c_n, *args, output, reserve]


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("ns,cell,variant", list(_params()))
def test_opcheck_forward(ns, cell, variant, training):
    # Gradients only flow through a training forward (it writes the reserve).
    args = op_inputs(cell, *variant, requires_grad=training)
    torch.library.opcheck(op(ns, cell, "forward"), (*args, training))


@pytest.mark.parametrize("ns,cell,variant", list(_params()))
def test_opcheck_backward(ns, cell, variant):
    args = _backward_args(ns, cell, op_inputs(cell, *variant))
    torch.library.opcheck(op(ns, cell, "backward"), tuple(args))


@pytest.mark.parametrize("kind", ["forward", "backward"])
@pytest.mark.parametrize("cell", CELLS)
def test_schemas_identical_across_namespaces(cell, kind):
    compiled = op("birnn_ext", cell, kind)._schema
    reference = op("birnn_ext_ref", cell, kind)._schema
    assert compiled.name == f"birnn_ext::{cell}_{kind}"
    assert reference.name == f"birnn_ext_ref::{cell}_{kind}"
    strip = lambda schema: str(schema).split("(", 1)[1]  # noqa: E731  (drop the name)
    assert strip(compiled) == strip(reference)


@pytest.mark.parametrize("cell", CELLS)
def test_namespaces_agree(cell):
    """Forward and backward of the compiled ops equal the reference's, outputs past each
    length are exactly zero and h_n is each sequence's state at its last valid step."""
    args = op_inputs(cell, 2, True, 2 if cell == "lstm" else 0, (3, 0, 4, 1))
    cpp = op("birnn_ext", cell, "forward")(*args, True)
    ref = op("birnn_ext_ref", cell, "forward")(*args, True)
    for name, a, b in zip(("output", "h_n", "c_n"), cpp[:3], ref[:3]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=name)
    output, h_n = cpp[0], cpp[1]
    assert output.shape == (4, 4, 2 * (2 if cell == "lstm" else 3))
    assert (output[3:, 0] == 0).all() and (output[:, 1] == 0).all() and (output[1:, 3] == 0).all()
    torch.testing.assert_close(h_n[:, 1], args[2][:, 1], atol=0, rtol=0)  # length 0: h0
    hout = h_n.shape[-1]
    torch.testing.assert_close(h_n[0, 0], output[2, 0, :hout], atol=0, rtol=0)  # fwd: last step
    torch.testing.assert_close(h_n[1, 0], output[0, 0, hout:], atol=0, rtol=0)  # rev: step 0

    grads = {}
    for ns, fwd in (("birnn_ext", cpp), ("birnn_ext_ref", ref)):
        grad_c = torch.ones_like(fwd[2]) if cell == "lstm" else None
        grads[ns] = op(ns, cell, "backward")(torch.ones_like(fwd[0]), torch.ones_like(fwd[1]),
                                             grad_c, *args, fwd[0], fwd[3])
    for i, (a, b) in enumerate(zip(grads["birnn_ext"], grads["birnn_ext_ref"])):
        assert a.shape == b.shape, f"gradient {i}"
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=f"gradient {i}")


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("bad", [(3, 5, 1), (3, -1, 1)], ids=["above-T", "negative"])
def test_lengths_out_of_range(ns, bad):
    args = op_inputs("gru", lengths=bad)
    with pytest.raises(RuntimeError, match="lengths"):
        op(ns, "gru", "forward")(*args, False)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_lengths_wrong_dtype(ns):
    args = op_inputs("lstm")
    args[1] = args[1].to(torch.int32)
    with pytest.raises(RuntimeError, match="lengths"):
        op(ns, "lstm", "forward")(*args, False)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_lengths_wrong_device(ns):
    """lengths on another device than the input (meta stands in for a GPU here)."""
    args = op_inputs("rnn_tanh")
    args[1] = args[1].to("meta")
    with pytest.raises(RuntimeError, match="lengths"):
        op(ns, "rnn_tanh", "forward")(*args, False)


@pytest.mark.parametrize("ns", NAMESPACES)
def test_lengths_wrong_shape(ns):
    args = op_inputs("rnn_relu")
    args[1] = torch.tensor([3, 1])
    with pytest.raises(RuntimeError, match="lengths"):
        op(ns, "rnn_relu", "forward")(*args, False)


@pytest.mark.parametrize("backend_name", ["cpp", "python"])
def test_layer_lengths_errors_reach_the_user(backend_name):
    """ops.layer (the entry point the modules use) reports bad lengths through either backend."""
    birnn_ext.set_backend(backend_name)
    args = op_inputs("lstm", lengths=(3, 9, 1))
    with pytest.raises(RuntimeError, match="lengths"):
        ops.layer("lstm", *args)


def test_layer_unknown_cell():
    with pytest.raises(ValueError, match="cell"):
        ops.layer("lstmm", *op_inputs("lstm"))


@pytest.mark.parametrize("ns", NAMESPACES)
def test_backward_needs_training_reserve(ns):
    """The compiled backward needs the reserve of a training forward and says so; the
    reference recomputes and needs none."""
    args = op_inputs("lstm")
    output, h_n, c_n, reserve = op(ns, "lstm", "forward")(*args, False)
    call = lambda: op(ns, "lstm", "backward")(  # noqa: E731
        torch.ones_like(output), torch.ones_like(h_n), torch.ones_like(c_n), *args, output,
        reserve)
    if ns == "birnn_ext":
        assert reserve.numel() == 0
        with pytest.raises(RuntimeError, match="training"):
            call()
    else:
        call()


@pytest.mark.skipif(_backend.build_info() == {}, reason="needs the compiled module")
def test_one_list_of_cells():
    """The compiled module's cells (csrc/cells.h's registry, through build_info) are the
    Python side's, with the same gate counts, and every reserve slot has a name."""
    cells = _backend.build_info()["cells"]
    assert tuple(c["name"] for c in cells) == ops.CELLS == tuple(reference.GATES)
    for c in cells:
        assert c["gates"] == reference.GATES[c["name"]]
        assert len(c["reserve_slots"].split()) == c["reserve"]
    assert all(hasattr(torch.ops.birnn_ext, f"{c['name']}_{op}") for c in cells
               for op in ("forward", "backward"))
