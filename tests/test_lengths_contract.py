"""The ops' lengths contract (csrc/birnn.h): lengths on the CPU are accepted whatever the
input's device (checked on the host, no device sync), and the modules hand the ops CPU
lengths. (Lengths on a third device are refused: tests/test_ops.py.)"""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import birnn_ext
from birnn_ext import ops
from helpers import make_pair, op_inputs


def test_modules_pass_lengths_on_the_cpu(monkeypatch, backend):
    seen = []
    layer = ops.layer

    def spy(cell, input, lengths, *rest):
        seen.append(lengths.device)
        return layer(cell, input, lengths, *rest)

    monkeypatch.setattr(ops, "layer", spy)
    _, ours = make_pair("gru", num_layers=2, bidirectional=True)
    x = pack_padded_sequence(torch.randn(5, 3, 5, dtype=torch.float64), [5, 2, 4],
                             enforce_sorted=False)
    ours(x)
    assert seen == [torch.device("cpu")] * 2


@pytest.mark.parametrize("namespace", ["birnn_ext", "birnn_ext_ref"])
def test_fake_kernels_take_host_lengths_with_any_input_device(namespace):
    """Meta stands in for a GPU: CPU lengths with a meta input are the contract's normal
    case (as under torch.compile with a CUDA input)."""
    birnn_ext.set_backend("cpp" if namespace == "birnn_ext" else "python")
    args = op_inputs("lstm", device="meta")
    args[1] = torch.tensor([3, 1, 4])
    out = getattr(torch.ops, namespace).lstm_forward(*args, True)
    assert out[0].device.type == "meta" and out[0].shape == (4, 3, 2 * 3)
