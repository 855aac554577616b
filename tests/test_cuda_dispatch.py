"""The CUDA kernel-path dispatch (csrc/cuda/dispatch.cpp), asked through
birnn_ext.kernel_path(): it needs a CUDA build of birnn_ext but no GPU, so CI's CUDA lane runs
it against the wheel it builds. BIRNN_EXT_KERNEL is read on every call, here as in a layer."""

import pytest
import torch

import birnn_ext
from birnn_ext import _backend

pytestmark = pytest.mark.skipif(not _backend.build_info().get("cuda"),
                                reason="needs birnn_ext built with CUDA (CI's CUDA lane)")

SHAPE = dict(cell="LSTM", dtype=torch.float32, T=100, B=64, I=512, H=512, training=True)


@pytest.fixture(autouse=True)
def _compiled_backend():
    birnn_ext.set_backend("cuda")


@pytest.mark.parametrize("value", [None, "", "auto", "standard", " Standard "])
def test_auto_and_standard_choose_the_standard_path(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("BIRNN_EXT_KERNEL", raising=False)
    else:
        monkeypatch.setenv("BIRNN_EXT_KERNEL", value.strip())
    assert birnn_ext.kernel_path("cuda", **SHAPE) == "cuda-standard"
    assert birnn_ext.kernel_path("cuda") == "cuda-standard"  # shape unknown


def test_persistent_is_chosen_only_when_asked_for(monkeypatch):
    """`auto` never takes the persistent path (no GPU record has shown it correct yet);
    BIRNN_EXT_KERNEL=persistent names it, and refuses a layer beyond its on-chip limits
    (or, without a GPU, one whose limits cannot be read)."""
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "persistent")
    assert birnn_ext.kernel_path("cuda") == "cuda-persistent"  # shape unknown
    huge = dict(SHAPE, H=8192)
    with pytest.raises(RuntimeError):
        birnn_ext.kernel_path("cuda", **huge)
    if torch.cuda.is_available():
        assert birnn_ext.kernel_path("cuda", **dict(SHAPE, H=256, B=16)) == "cuda-persistent"
        with pytest.raises(RuntimeError, match="cannot run this layer"):
            birnn_ext.kernel_path("cuda", **huge)


def test_unknown_value_names_the_choices(monkeypatch):
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "fastest")
    with pytest.raises(RuntimeError, match="unknown BIRNN_EXT_KERNEL=fastest; expected one of: "
                                           "auto, standard, persistent"):
        birnn_ext.kernel_path("cuda", **SHAPE)


def test_cpu_path_is_unaffected(monkeypatch):
    monkeypatch.setenv("BIRNN_EXT_KERNEL", "fastest")
    assert birnn_ext.kernel_path("cpu").startswith("cpu-")
