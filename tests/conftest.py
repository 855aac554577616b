"""Shared fixtures: poisoned buffers, seeds, backend switching, the `cuda` marker."""

import os

# Before birnn_ext loads: the C++ ops fill every buffer a kernel must write with NaN first, so
# a value a kernel forgot to write cannot pass a test unnoticed.
os.environ["BIRNN_EXT_POISON"] = "1"

# torch.compile's on-disk cache does not tell apart code compiled for different CPU
# capabilities: a graph cached under AVX-512 and replayed with ATEN_CPU_CAPABILITY=avx2 (how
# an AVX2-only CPU is emulated on an AVX-512 one) returns wrong numbers, in plain torch code
# too. One cache folder per capability keeps the emulated runs honest.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import getpass
    import tempfile

    _capability = os.environ.get("ATEN_CPU_CAPABILITY", "default").lower()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_birnn_{_capability}")

import pytest  # noqa: E402
import torch  # noqa: E402

import birnn_ext  # noqa: E402

CPU_BACKENDS = ("cpp", "python")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        # The marker itself: item.keywords also holds the path's folder names (a checkout
        # in a folder named "cuda" would skip everything).
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so its random inputs are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_backend():
    """No test leaks its backend choice into the next one."""
    before = birnn_ext.get_backend()
    yield
    birnn_ext.set_backend(before)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    """Runs the test once per CPU backend: the compiled ops and the pure-Python fallback."""
    assert birnn_ext.set_backend(request.param) == request.param
    assert birnn_ext.get_backend() == request.param
    return request.param
