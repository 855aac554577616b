"""A layer's weights of both directions as one [2, ...] tensor without copying them.

The ops take each weight stacked over directions ([D, G*H, I] and so on). torch.stack copies
them at every call: 16 MiB for an LSTM layer of 512 units, 8-12% of a small batch's forward
on the CPU. Instead, `flatten_directions` (birnn_ext's flatten_parameters) puts the two
directions' parameters of each weight side by side in one block of memory, each parameter a
view of it, and `stacked_layer` hands the ops a view of that block: the very memory the parameters
are, so it can never be stale, whatever updated them (optimizers, load_state_dict, in-place
writes through .data). Where the parameters are not side by side (replaced by the user,
parametrized, or under torch.compile, which must not see two graph inputs alias one block)
it falls back to torch.stack.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn


def _side_by_side(first: Tensor, second: Tensor) -> bool:
    """Whether `second` starts where `first` ends, in the same memory, with the same layout.
    (Run for every weight at every call: the cheapest test that fails first.)"""
    return (second.data_ptr() == first.data_ptr() + first.nbytes
            and first.shape == second.shape and first.dtype == second.dtype
            and first.is_contiguous() and second.is_contiguous()
            and first.device == second.device and first.device.type != "meta"
            and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr())


def _block_of(first: Tensor) -> Tensor:
    """[2, *shape] over `first` and the tensor right after it in memory."""
    return first.as_strided((2, *first.shape), (first.numel(), *first.stride()))


# The attribute of a stacked view that names the second direction's parameter. A view shares
# the version counter of the parameter it starts in (the first direction's) only; the op
# that reads the view saves this one too (ops._setup_context), so that autograd's check of
# saved tensors raises, as torch.nn's backward does, when either direction's weight was
# changed in place between forward and backward, whichever gradients are asked for.
SECOND_DIRECTION = "_birnn_ext_second_direction"


class _StackedViews(torch.autograd.Function):
    """Several weights' two directions, each as one view of the block they lie in, in one
    autograd node for the whole layer (a node per weight cost 8-9 us each, a third of a
    small layer's call); each gradient splits back to its two parameters."""

    @staticmethod
    def forward(ctx, *pairs):  # first directions, then second directions
        return tuple(_block_of(first) for first in pairs[:len(pairs) // 2])

    @staticmethod
    def backward(ctx, *grads):
        return tuple(g[0] for g in grads) + tuple(g[1] for g in grads)


def _traced_or_transformed() -> bool:
    """Under torch.compile or torch.func (grad, vmap) the weights have no memory to view;
    under torch.jit.trace a view made by _StackedViews would be recorded as a Python call,
    which a traced module cannot save, and a reused view as a constant: torch.stack then."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._functorch.peek_interpreter_stack() is not None)


def _stack(per_direction: list[list[Tensor]], recorded: bool) -> tuple[list[Tensor], bool]:
    """stacked_layer's result, and whether every weight of it is a view (no copy)."""
    if len(per_direction) == 1:
        return [w.unsqueeze(0) for w in per_direction[0]], True
    firsts, seconds = per_direction
    if _traced_or_transformed():
        return [torch.stack(pair) for pair in zip(firsts, seconds)], False
    adjacent = [j for j, (a, b) in enumerate(zip(firsts, seconds)) if _side_by_side(a, b)]
    pairs = [firsts[j] for j in adjacent] + [seconds[j] for j in adjacent]
    trained = torch.is_grad_enabled() and any(w.requires_grad for w in pairs)
    if trained:
        views = _StackedViews.apply(*pairs)
    else:
        views = [_block_of(first) for first in pairs[:len(adjacent)]]
    if trained or recorded:
        for view, second in zip(views, pairs[len(adjacent):]):
            setattr(view, SECOND_DIRECTION, second)
    out = [None if j in adjacent else torch.stack((a, b))
           for j, (a, b) in enumerate(zip(firsts, seconds))]
    for j, view in zip(adjacent, views):
        out[j] = view
    return out, len(adjacent) == len(firsts)


def stacked_layer(per_direction: list[list[Tensor]], recorded: bool = False) -> list[Tensor]:
    """Weights stacked over directions: per_direction[d][j] is weight j of direction d; the
    result's j-th is [D, *shape], a view of the parameters' memory where the two directions
    lie side by side (flatten_directions), else a stacked copy. `recorded`: autograd records
    the op that reads them (it has an input that requires grad)."""
    return _stack(per_direction, recorded)[0]


def stacked(weights: list[Tensor]) -> Tensor:
    """One weight's directions stacked: [D, *shape] (stacked_layer for a single weight)."""
    return stacked_layer([[w] for w in weights])[0]


# Inference reuses a layer's stacked views from one call to the next: making them (the
# adjacency tests and an as_strided per weight) cost 20 us of a 60 us layer call at H=128,
# and as much again in the op that followed. They are views, never copies, so their values
# are always the parameters' own; they are reused only while every weight still has the
# memory, shape and strides it had when they were made (a view keeps its memory alive, so
# an address cannot be reused by another tensor meanwhile). Only without autograd: with it,
# each call makes views of the parameters themselves, so that autograd sees an in-place
# change of a weight between forward and backward. Held per module, weakly.
_INFERENCE_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _geometry(weights: list[Tensor]) -> tuple:
    return tuple((w.data_ptr(), w.shape, w.stride(), w.dtype) for w in weights)


def stacked_layer_of(module: nn.Module, layer: int, per_direction: list[list[Tensor]],
                     recorded: bool = False) -> list[Tensor]:
    """stacked_layer for `module`'s layer `layer`, reused between inference calls."""
    if torch.is_grad_enabled() or _traced_or_transformed():
        return stacked_layer(per_direction, recorded)
    geometry = _geometry([w for weights in per_direction for w in weights])
    reused = _INFERENCE_VIEWS.get(module, {}).get(layer)
    if reused is not None and reused[0] == geometry:
        return reused[1]
    out, all_views = _stack(per_direction, recorded=False)
    if all_views:
        _INFERENCE_VIEWS.setdefault(module, {})[layer] = (geometry, out)
    return out


def flatten_directions(module: nn.RNNBase) -> None:
    """Gives each weight's two direction parameters one [2, ...] block of memory, keeping
    their values, Parameter objects and everything that refers to them.

    Only leaf nn.Parameters of the same shape, dtype and device are moved; anything else
    (a plain tensor swapped in by torch.func.functional_call, a parametrization) is left
    where it is and stacked by copying."""
    _INFERENCE_VIEWS.pop(module, None)  # views of the memory the parameters leave
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
