"""The one build description (birnn_ext/_build.py) that setup.py and the JIT build share: its
sources, its CUDA arch flags (PTX for the newest arch by default), and that the JIT build and
setup.py get the same flags for the same archs. Nothing here compiles or needs a GPU."""

import os

import pytest

from birnn_ext import _build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_sources = pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "csrc")),
                                   reason="needs the source checkout's csrc/")


def test_default_archs_carry_ptx_of_the_newest():
    assert _build.gencode_flags(_build.DEFAULT_ARCHS) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    assert "PTX compute_90" in _build.describe_archs(_build.DEFAULT_ARCHS)
    assert "no PTX" in _build.describe_archs("8.0;9.0")


@pytest.mark.parametrize("bad", ["", "sm_90", "9", "9.0+ptx"])
def test_unreadable_arch_lists_are_refused(bad):
    with pytest.raises(ValueError):
        _build.gencode_flags(bad)


@needs_sources
def test_sources(monkeypatch):
    cpu = _build.sources(False, ROOT)
    cuda = _build.sources(True, ROOT)
    assert cpu[:2] == ["csrc/ops.cpp", "csrc/layer.cpp"]
    assert not any(s.startswith("csrc/cuda/") for s in cpu)
    on_disk = sorted(f for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                     if f.endswith((".cu", ".cpp")))
    assert sorted(os.path.basename(s) for s in cuda if s.startswith("csrc/cuda/")) == on_disk
    assert set(cpu) < set(cuda)


@needs_sources
def test_setup_and_jit_get_the_same_flags(monkeypatch):
    """With the same archs asked for, the JIT build compiles and links exactly as setup.py."""
    monkeypatch.setenv("FORCE_CUDA", "1")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", _build.DEFAULT_ARCHS)
    monkeypatch.delenv("BIRNN_EXT_NO_CUDA", raising=False)
    setup_cfg = _build.config(ROOT, jit=False)
    jit_cfg = _build.config(ROOT, jit=True)
    assert setup_cfg == jit_cfg
    assert setup_cfg["with_cuda"] and "-DWITH_CUDA" in setup_cfg["cxx"]
    assert set(_build.gencode_flags(_build.DEFAULT_ARCHS)) <= set(setup_cfg["nvcc"])
    assert any("cublas" in lib for lib in setup_cfg["libraries"])
    assert any(f.startswith("-l") and "cublas" in f for f in _build.ldflags(setup_cfg))


@needs_sources
def test_no_cuda_build(monkeypatch):
    monkeypatch.setenv("BIRNN_EXT_NO_CUDA", "1")
    cfg = _build.config(ROOT, jit=False)
    assert not cfg["with_cuda"] and cfg["nvcc"] == [] and cfg["libraries"] == []
    assert any(f.startswith("-DBIRNN_TORCH_VERSION=") for f in cfg["cxx"])
