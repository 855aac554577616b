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


def _bad_settings():
    """BIRNN_EXT_BACKEND values `import birnn_ext` must refuse here, with the error type."""
    settings = [("bogus", ValueError), ("c++", ValueError)]
    if not _backend.build_info().get("cuda"):  # a CPU-only build cannot honour "cuda"
        settings.append(("cuda", RuntimeError))
    return settings


@pytest.mark.parametrize("value,error", _bad_settings())
def test_bad_environment_value_fails_the_import_clearly(value, error):
    result = _python("import birnn_ext", BIRNN_EXT_BACKEND=value)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(error.__name__ + ":"), result.stderr
    assert f"BIRNN_EXT_BACKEND={value!r}" in last
    assert "auto, cuda, cpp, python" in last   # what would work


@pytest.mark.parametrize("value,error", _bad_settings())
def test_info_reports_a_bad_environment_value(value, error):
    """The diagnostic runs where the import fails: it names the problem, exits with status 2
    and still reports the machine and what auto would pick."""
    result = subprocess.run([sys.executable, "-m", "birnn_ext.info"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300,
                            env=os.environ | {"PYTHONPATH": ROOT, "BIRNN_EXT_BACKEND": value})
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PROBLEM") and f"BIRNN_EXT_BACKEND={value!r}" in lines[0]
    assert "auto, cuda, cpp, python" in lines[0]
    expected = "cuda" if _backend.build_info().get("cuda") else "cpp"
    assert any(line.startswith("active backend") and f" {expected} (auto" in line
               for line in lines), result.stdout
    assert any(line.startswith("CPU kernel path") for line in lines)


def test_info_names_the_machine():
    result = subprocess.run([sys.executable, "-m", "birnn_ext.info"], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": ROOT},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    from birnn_ext import info

    isa = info.cpu_isa()
    assert info.cpu_model() in result.stdout
    assert f"torch {torch.backends.cpu.get_cpu_capability()}" in result.stdout
    assert f"CPU kernel path  {birnn_ext.kernel_path('cpu')}" in result.stdout
    assert not result.stdout.startswith("PROBLEM")
    if isa["cpu"] is not None:   # x86 Linux: the flags torch's own choice rests on
        assert isa["cpu"] in result.stdout
        rank = {"DEFAULT": 0, "AVX": 0, "AVX2": 1, "AVX512": 2}
        assert rank.get(isa["torch"], 0) <= rank[isa["cpu"]], \
            f"torch runs {isa['torch']}, wider than the CPU flags' {isa['cpu']}"


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


@pytest.mark.skipif(_backend.build_info() == {}, reason="needs the compiled module")
def test_info_reports_a_bad_cpu_simd_value():
    """A bad BIRNN_EXT_CPU_SIMD fails every CPU op call; the diagnostic still runs, says so
    and exits with status 2."""
    result = subprocess.run([sys.executable, "-m", "birnn_ext.info"], capture_output=True,
                            text=True, cwd=ROOT, timeout=300,
                            env=os.environ | {"PYTHONPATH": ROOT, "BIRNN_EXT_CPU_SIMD": "sse9"})
    assert result.returncode == 2, result.stderr
    assert result.stdout.startswith("PROBLEM") and "BIRNN_EXT_CPU_SIMD=sse9" in result.stdout
    assert "CPU kernel path  -" in result.stdout
