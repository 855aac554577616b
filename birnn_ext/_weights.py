"""A layer's weights of both directions as one [2, ...] tensor without copying them.

The ops take each weight stacked over directions ([D, G*H, I] and so on). torch.stack copies
them at every call: 16 MiB for an LSTM layer of 512 units, 8-12% of a small batch's forward
on the CPU. Instead, `flatten_directions` (birnn_ext's flatten_parameters) puts the two
directions' parameters of each weight side by side in one block of memory, each parameter a
view of it, and `stacked` hands the ops a view of that block: the very memory the parameters
are, so it can never be stale, whatever updated them (optimizers, load_state_dict, in-place
writes through .data). Where the parameters are not side by side (replaced by the user,
parametrized, or under torch.compile, which must not see two graph inputs alias one block)
it falls back to torch.stack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _side_by_side(first: Tensor, second: Tensor) -> bool:
    """Whether `second` starts where `first` ends, in the same memory, with the same layout."""
    return (first.shape == second.shape and first.dtype == second.dtype
            and first.device == second.device and first.is_contiguous()
            and second.is_contiguous() and first.device.type != "meta"
            and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
            and second.data_ptr() == first.data_ptr() + first.numel() * first.element_size())


def _block_of(first: Tensor) -> Tensor:
    """[2, *shape] over `first` and the tensor right after it in memory."""
    return first.as_strided((2, *first.shape), (first.numel(), *first.stride()))


class _StackedView(torch.autograd.Function):
    """Both directions as one view of the block they lie in; the gradient splits back."""

    @staticmethod
    def forward(ctx, first, second):
        return _block_of(first)

    @staticmethod
    def backward(ctx, grad):
        return grad[0], grad[1]


def stacked(weights: list[Tensor]) -> Tensor:
    """The directions' weights stacked: [D, *shape], a view when they lie side by side."""
    if len(weights) == 1:
        return weights[0].unsqueeze(0)
    first, second = weights
    if torch.compiler.is_compiling() or not _side_by_side(first, second):
        return torch.stack(weights)
    if torch.is_grad_enabled() and (first.requires_grad or second.requires_grad):
        return _StackedView.apply(first, second)
    return _block_of(first)


def flatten_directions(module: nn.RNNBase) -> None:
    """Gives each weight's two direction parameters one [2, ...] block of memory, keeping
    their values, Parameter objects and everything that refers to them.

    Only leaf nn.Parameters of the same shape, dtype and device are moved; anything else
    (a plain tensor swapped in by torch.func.functional_call, a parametrization) is left
    where it is and stacked by copying."""
    if not module.bidirectional or len(module._flat_weights) != len(module._flat_weights_names):
        return
    names = module._flat_weights_names
    params = dict(zip(names, module._flat_weights))
    with torch.no_grad():
        for name in names:
            if name.endswith("_reverse"):
                continue
            first, second = params[name], params.get(name + "_reverse")
            if not all(isinstance(p, nn.Parameter) and p.is_leaf for p in (first, second)):
                continue
            if (first.shape != second.shape or first.dtype != second.dtype
                    or first.device != second.device or _side_by_side(first, second)):
                continue
            block = torch.empty((2, *first.shape), dtype=first.dtype, device=first.device)
            block[0].copy_(first)
            block[1].copy_(second)
            first.data = block[0]
            second.data = block[1]
