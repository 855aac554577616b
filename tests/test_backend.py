"""Backend selection: set_backend / get_backend, the BIRNN_EXT_BACKEND variable, which op
namespace a module really calls, and `python -m birnn_ext.info`."""

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import birnn_ext
from birnn_ext import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT} | env, timeout=300)


@pytest.mark.parametrize("name,namespace", [("cpp", "birnn_ext"), ("python", "birnn_ext_ref")])
def test_module_runs_the_selected_namespace(name, namespace):
    assert birnn_ext.set_backend(name) == name
    assert birnn_ext.get_backend() == name
    model = birnn_ext.LSTM(3, 2, num_layers=2, bidirectional=True)
    with torch.no_grad(), _RecordOps() as record:
        model(torch.randn(4, 2, 3))
    calls = [n for n in record.names if n.startswith("birnn_ext")]
    assert calls == [f"{namespace}.lstm_forward.default"] * 2   # one call per layer


def test_auto_picks_the_compiled_module():
    expected = "cuda" if _backend.build_info().get("cuda") else "cpp"
    assert birnn_ext.set_backend("auto") == expected == birnn_ext.get_backend()


def test_unknown_backend_is_a_value_error():
    before = birnn_ext.get_backend()
    with pytest.raises(ValueError, match="bogus"):
        birnn_ext.set_backend("bogus")
    assert birnn_ext.get_backend() == before


def test_unavailable_cuda_backend_is_a_runtime_error():
    if _backend.build_info().get("cuda"):
        assert birnn_ext.set_backend("cuda") == "cuda"
    else:
        with pytest.raises(RuntimeError, match="cuda"):
            birnn_ext.set_backend("cuda")


@pytest.mark.parametrize("value,expected", [("python", "python"), ("cpp", "cpp")])
def test_environment_variable_picks_the_initial_backend(value, expected):
    result = _python("import birnn_ext; print(birnn_ext.get_backend())",
                     BIRNN_EXT_BACKEND=value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_info_command():
    result = subprocess.run([sys.executable, "-m", "birnn_ext.info"], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert birnn_ext.__version__ in out and torch.__version__ in out
    assert "cpp" in out and "python" in out
    active = [line for line in out.splitlines() if "active" in line.lower()]
    assert len(active) == 1 and birnn_ext.get_backend() in active[0]


@pytest.mark.parametrize("name", ["cpp", "python"])
def test_backward_under_a_dispatch_mode(name):
    """Forward and backward work under a TorchDispatchMode (as FlopCounterMode, debugging and
    tracing tools install) and give the same gradients as without one."""
    from torch.utils.flop_counter import FlopCounterMode

    birnn_ext.set_backend(name)
    model = birnn_ext.GRU(3, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    model(x)[0].sum().backward()
    expected = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    with FlopCounterMode(display=False):
        model(x)[0].sum().backward()
    got = [x.grad] + [p.grad for p in model.parameters()]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
