"""Resident memory stays flat over many calls: nothing a call allocates outlives it.

A leak in a kernel (a buffer never freed, a packed weight cached per call, a tensor kept
alive by a reference cycle in the autograd wiring) grows the process by the same amount
every call, so it shows as growth over a long run after warm-up. LeakSanitizer (the
sanitizer lane, .ci/sanitize_lane.sh) catches lost C++ allocations; this test also catches
memory that is still referenced (caches, Python objects) and so invisible to it.

Counts: 10,000 training calls (forward + backward) and 10,000 inference calls of a small
layer, after 500 warm-up calls that let the allocator and torch's caches settle, once in
float32 (an LSTM: birnn_ext's own AVX-512 GEMMs where the CPU has them) and once in float64
(a GRU: ATen's and MKL's GEMMs, and the GRU's separate recurrent gradients). A leaked
[0]-sized tensor costs a few hundred bytes (TensorImpl and storage), 3-5 MiB over 10,000
calls, over the 3 MiB bound; so does any leaked buffer of 80 floats or more. RSS after
warm-up moves by well under 1 MiB without a leak (measured: glibc's heap reuses the same
blocks call after call). A call takes 0.2-0.5 ms on an idle 2-core machine, so the test
takes 10-20 s.
"""

import gc
import os

import pytest
import torch

import birnn_ext

CALLS = 10_000
WARMUP = 500
BOUND_MIB = 3.0


def rss_mib():
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def growth_mib(step):
    """RSS after CALLS calls of step() minus RSS after WARMUP calls."""
    for _ in range(WARMUP):
        step()
    gc.collect()
    before = rss_mib()
    for _ in range(CALLS):
        step()
    gc.collect()
    return rss_mib() - before


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_rss_flat_over_many_calls(dtype):
    assert birnn_ext.get_backend() != "python", "measures the compiled kernels"
    torch.manual_seed(0)
    cls = birnn_ext.LSTM if dtype == torch.float32 else birnn_ext.GRU
    model = cls(8, 16, bidirectional=True, dtype=dtype)
    x = torch.randn(5, 4, 8, dtype=dtype)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3, 2, 1]))

    def train_step():
        model.zero_grad(set_to_none=True)
        out, state = model(packed)
        (out.data.sum() + sum(s.sum() for s in (state if isinstance(state, tuple)
                                                 else (state,)))).backward()

    def inference_step():
        with torch.no_grad():
            model(packed)

    train = growth_mib(train_step)
    infer = growth_mib(inference_step)
    assert train < BOUND_MIB and infer < BOUND_MIB, (
        f"RSS grew by {train:.2f} MiB over {CALLS} training calls and {infer:.2f} MiB over "
        f"{CALLS} inference calls (bound {BOUND_MIB} MiB each)")
