"""Memory stays flat over many calls: nothing a call allocates outlives it.

A leak in a kernel (a buffer never freed, a packed weight cached per call, a tensor kept
alive by a reference cycle in the autograd wiring) grows the process by the same amount
every call, so it shows as growth over a long run after warm-up. LeakSanitizer (the
sanitizer lane, .ci/sanitize_lane.sh) catches lost C++ allocations; this test also catches
memory that is still referenced (caches, Python objects) and so invisible to it.

What is measured: the bytes glibc's malloc has handed out and not taken back
(mallinfo2: uordblks + hblkhd), which counts every C++ allocation (tensors' storage and
TensorImpls, std::vectors, packed weights) to the byte, and the resident set size as a
backstop for memory that does not come from malloc (Python's arenas, mmap).

Counts: 2,000 training calls (forward + backward) and 2,000 inference calls of a small
layer, after 300 warm-up calls that let the allocator and torch's caches settle, once in
float32 (an LSTM: birnn_ext's own AVX-512 GEMMs where the CPU has them) and once in float64
(a GRU: ATen's and MKL's GEMMs, and the GRU's separate recurrent gradients). Without a leak
the heap moves by 0-2 KB over 2,000 calls (measured); one leaked [0]-sized tensor per call
moves it by 690 KB. The bound, 64 KiB, catches any leak of 32 bytes or more per call: finer
than RSS could over the issue's 10,000 calls (RSS moves by a few hundred KB on its own, so a
3 MiB bound there sees only leaks of 300 bytes or more per call), in a fifth of the time:
a call takes 0.3-1 ms on CI's 2 cores, so the test takes 5-15 s.
"""

import ctypes
import gc
import os

import pytest
import torch

import birnn_ext

CALLS = 2_000
WARMUP = 300
HEAP_BOUND_KIB = 64
RSS_BOUND_MIB = 3.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's mallinfo2 (glibc 2.33 and later), or None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc.mallinfo2
    except (OSError, AttributeError):
        return None


MALLINFO2 = _mallinfo2()


def heap_bytes():
    """Bytes malloc has handed out and not taken back: small blocks plus mmapped ones."""
    info = MALLINFO2()
    return info.uordblks + info.hblkhd


def rss_mib():
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def growth(step):
    """(heap KiB, RSS MiB) after CALLS calls of step() minus after WARMUP calls."""
    for _ in range(WARMUP):
        step()
    gc.collect()
    heap, rss = heap_bytes(), rss_mib()
    for _ in range(CALLS):
        step()
    gc.collect()
    return (heap_bytes() - heap) / 1024, rss_mib() - rss


@pytest.mark.skipif(MALLINFO2 is None or not os.path.exists("/proc/self/statm"),
                    reason="reads glibc's mallinfo2 and /proc (Linux with glibc 2.33+)")
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

    for name, step in (("training", train_step), ("inference", inference_step)):
        heap_kib, rss = growth(step)
        assert heap_kib < HEAP_BOUND_KIB and rss < RSS_BOUND_MIB, (
            f"over {CALLS} {name} calls the heap grew by {heap_kib:.1f} KiB (bound "
            f"{HEAP_BOUND_KIB}) and RSS by {rss:.2f} MiB (bound {RSS_BOUND_MIB})")
