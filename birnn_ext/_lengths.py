"""The `lengths=` argument of the layers' forward, and torch.nn's packed order for dropout.

`host_lengths` turns what the caller passed (a list or an integer tensor on any device) into
what the ops take: int64 [B] on the CPU, every value in [1, T]. The checks run on the host: a
list or a CPU tensor costs no device sync, a tensor on a GPU is copied to the host once per
call (a sync). Under torch.compile the value check runs inside an opaque op
(birnn_ext_py::check_lengths), so no Python-side .item() breaks the graph and the lengths'
values stay out of its guards (new lengths do not recompile).

`packed_rows` maps each (step, sequence) of a padded batch to its row in the data
torch.nn's pack_padded_sequence would make of it, so that inter-layer dropout can draw its
mask in the packed shape, as torch.nn does, without packing anything. `padded_positions` is
the other way round, for PackedSequence input: where each packed row sits in the padded
batch, so that the layer pads its input and packs its output with one scatter and one gather.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_range(lengths: Tensor, steps: int) -> None:
    """Every length in [1, steps]. 0 is refused as torch.nn's pack_padded_sequence refuses it:
    torch.nn has no result for an empty sequence to agree with."""
    if lengths.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(lengths))
    if lo < 1 or hi > steps:
        raise ValueError(
            f"lengths must lie in [1, T={steps}] (T: the input's number of steps), got values "
            f"in [{lo}, {hi}]" + ("; drop empty sequences from the batch (torch.nn's "
                                  "pack_padded_sequence refuses a length of 0 too)"
                                  if lo < 1 else ""))


@torch.library.custom_op("birnn_ext_py::check_lengths", mutates_args=())
def _check_lengths_op(lengths: Tensor, steps: int) -> Tensor:
    """_check_range as an op for torch.compile: it returns its input (a copy: an op's output
    may not alias its input) so that the layers depend on it and it cannot be dropped."""
    _check_range(lengths, steps)
    return lengths.clone()


@_check_lengths_op.register_fake
def _(lengths, steps):
    return torch.empty_like(lengths)


def _capturing_on(device) -> bool:
    """Whether `device` is a GPU whose current stream is capturing a CUDA graph (eager calls
    only: under torch.compile the copies are the compiled graph's business)."""
    return (torch.device(device).type == "cuda" and not torch.compiler.is_compiling()
            and torch.cuda.is_current_stream_capturing())


def host_lengths(lengths, batch: int, steps: int) -> Tensor:
    """`lengths` (a list of ints or an integer tensor on any device) as int64 [batch] on the
    CPU, checked: one value per sequence, each in [1, steps]. Never clamps."""
    if not isinstance(lengths, Tensor):
        try:
            # device="cpu": a default device set to a GPU must not send the list there and back.
            lengths = (torch.as_tensor(lengths, device="cpu") if len(lengths)
                       else torch.zeros(0, dtype=torch.int64))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError("lengths must be a 1-D integer tensor or a list of ints, one per "
                             f"sequence; got {type(lengths).__name__}: {exc}") from exc
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.size(0) != batch:
        raise ValueError(f"lengths must be 1-D with one length per sequence ({batch}), got "
                         f"shape {tuple(lengths.shape)}")
    if _capturing_on(lengths.device):
        # Reading them back would wait for the capturing stream (and invalidate the capture).
        raise RuntimeError(
            f"lengths on {lengths.device} cannot be read during CUDA graph capture (checking "
            "them needs their values on the host); pass them as a list or a CPU tensor: "
            "their values then become part of the captured graph")
    # A copy even when it is already int64 on the CPU: the ops save the lengths for the
    # backward, and the caller may refill its own tensor before that (a reused buffer).
    # From a GPU: the one device sync of the call.
    lengths = lengths.to("cpu", torch.int64, copy=True)
    if torch.compiler.is_compiling():
        return torch.ops.birnn_ext_py.check_lengths(lengths, steps)
    _check_range(lengths, steps)
    return lengths


def packed_rows(lengths: Tensor, steps: int, sort: bool, device) -> tuple[Tensor, int]:
    """([steps, B] int64 index on `device`, N): the row of packed data [N, ...] that each (step, sequence)
    of a time-major padded batch becomes in torch.nn's packing, and N = sum(lengths).

    Within a step, packed data holds the sequences still running in decreasing order of
    length, so sequence b sits at its rank in that order. `sort`: the batch is in the
    caller's order, ranked as pack_padded_sequence(enforce_sorted=False) ranks it (the very
    same torch.sort call, ties included); otherwise the batch is already in packed order.
    Positions past a sequence's end get row 0: the layers' output there is zero, so any row
    serves. Host-side arithmetic on [steps, B] integers, then one copy to `device`.
    """
    batch = lengths.size(0)
    valid = torch.arange(steps).unsqueeze(1) < lengths                  # [steps, B]
    batch_sizes = valid.sum(1)                                          # [steps]
    starts = batch_sizes.cumsum(0) - batch_sizes
    rank = torch.arange(batch)
    if sort:
        order = torch.sort(lengths, descending=True).indices
        rank = torch.empty_like(rank).scatter_(0, order, rank)
    rows = torch.where(valid, starts.unsqueeze(1) + rank, 0)
    return index_to_device(rows, device, "inter-layer dropout with variable lengths"), \
        int(batch_sizes.sum())


def index_to_device(index: Tensor, device, needed_for: str) -> Tensor:
    """A host-computed index on `device`, copied without a device sync (non_blocking: from
    pageable memory CUDA stages the data at once and does not wait for the stream). Such a
    copy cannot be recorded in a CUDA graph, so during capture it is refused with the reason
    instead of invalidating the capture."""
    if index.device == torch.device(device):
        return index
    if _capturing_on(device):
        raise RuntimeError(
            f"birnn_ext: {needed_for} copies an index computed on the host to {device} at "
            "every call, which cannot be captured in a CUDA graph; capture the layer in "
            "eval mode or with dropout=0, or with padded input and no lengths")
    return index.to(device, non_blocking=True)


def padded_positions(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """(positions [N], lengths [B]) for packed data with these batch_sizes ([T] int64 on the
    CPU, as a PackedSequence holds them): where each packed row sits in the time-major padded
    batch [T, B, ...] flattened to [T*B, ...], the batch in packed order (longest first), and
    each sequence's length. At step t, packed data holds sequences 0 .. batch_sizes[t]-1, so
    the valid (t, b) in row-major order are the packed rows in order. Host arithmetic on
    [T, B] integers."""
    valid = torch.arange(int(batch_sizes[0])) < batch_sizes.unsqueeze(1)  # [T, B]
    return valid.flatten().nonzero().squeeze(1), valid.sum(0)
