"""Drop-in torch.nn.RNN / LSTM / GRU whose layers run through birnn_ext's fused ops.

The classes subclass torch.nn's and add no state: constructor, parameters, state_dict,
checks and error messages are the parent's. Only forward() differs: it brings every input
form (batched, unbatched, batch_first, PackedSequence, a padded batch with lengths=) to a
padded time-major batch plus per-sequence lengths, makes one op call per layer for both
directions, and returns what torch.nn returns. convert() turns existing torch.nn layers into these in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from . import _lengths, _weights, ops

_CELL_OF_MODE = {"RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu", "LSTM": "lstm", "GRU": "gru"}


class _FusedForward:
    """forward() shared by the three classes; mixed in before the torch.nn parent."""

    _input_dim_error: str  # torch.nn's message for a 1-D or 4-D input, per class

    def forward(self, input, hx=None, *, lengths=None):
        """torch.nn's forward, plus the keyword `lengths` for a padded batch of sequences of
        different lengths, without packing it.

        lengths: one length per sequence of a batched (3-D) input, each in [1, T], as a list
        of ints or an integer tensor on any device. The result is exactly torch.nn's for the
        batch packed with pack_padded_sequence(input, lengths, batch_first=...,
        enforce_sorted=False) and the output unpacked with pad_packed_sequence(...,
        total_length=T): output zero past each sequence's end, h_n (and c_n) at each
        sequence's last step, in the caller's batch order. The input is not sorted, packed
        or copied: the first layer reads it where it is. In training, inter-layer dropout draws its mask as torch.nn draws it on the
        packed data, so a seed gives torch.nn's mask (under torch.compile the mask is drawn
        on the padded output instead: compiled code draws its own random numbers anyway).
        The lengths are checked on the host, never clamped: a list or a CPU tensor costs no
        device sync; a tensor on a GPU is copied to the host once per call (a sync); the
        layer keeps its own copy. Under torch.compile the checks run inside an op, so
        lengths given as a tensor may change between calls without a graph break or a
        recompilation (a list's values are constants of the compiled graph: each new list
        recompiles). On a GPU, training with dropout copies the packed positions to the
        device each call (no sync), which CUDA graph capture refuses.
        """
        self._update_flat_weights()
        lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths= is for a padded batch; a PackedSequence carries "
                                 "its own lengths")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_batch_sizes(data, batch_sizes)
            if hx is not None:
                # hx is in the caller's batch order; the packed data is sorted by length.
                hx = self.permute_hidden(hx, sorted_indices)
            batch, unbatched, checked_input = int(batch_sizes[0]), False, data
        else:
            batch_sizes = sorted_indices = unsorted_indices = None
            if input.dim() not in (2, 3):
                raise ValueError(self._input_dim_error.format(input.dim()))
            unbatched = input.dim() == 2
            if unbatched and lengths is not None:
                raise ValueError("lengths= needs a batched (3-D) input; an unbatched input is "
                                 "one sequence of input.size(0) steps")
            batch_dim = 0 if self.batch_first else 1
            if unbatched:
                input = input.unsqueeze(batch_dim)
            hx = self._batched_hx(hx, unbatched)
            batch, checked_input = input.size(batch_dim), input
        if hx is None:
            hx = self._zero_state(batch, checked_input)
        self.check_forward_args(checked_input, hx, batch_sizes)
        self._check_devices(checked_input, hx)

        if packed:
            # Time-major padded batch in the packed (length-sorted) order, zero past each end:
            # the one copy in that the ops' padded contract needs (and one out, below), each
            # a single scatter or gather whose gradient is one too. (pad_packed_sequence
            # copies step by step, and autograd then copies the whole gradient once per step.)
            # The lengths stay on the CPU: the ops check them there and copy them to a GPU
            # without a host sync.
            positions, lengths = _lengths.padded_positions(batch_sizes)
            positions = _lengths.index_to_device(positions, data.device, "a PackedSequence input")
            x = data.new_zeros(len(batch_sizes) * batch, data.size(1))
            x = x.index_copy_(0, positions, data).view(len(batch_sizes), batch, data.size(1))
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            if lengths is not None:
                lengths = _lengths.host_lengths(lengths, x.size(1), x.size(0))
        h0, c0 = hx if lstm else (hx, None)
        dropout_rows = None
        if (lengths is not None and self.dropout > 0 and self.training and self.num_layers > 1
                and not torch.compiler.is_compiling()):
            dropout_rows = _lengths.packed_rows(lengths, x.size(0), not packed, x.device)
        out, h_n, c_n = self._run_layers(x, lengths, dropout_rows, h0, c0)
        hidden = (h_n, c_n) if lstm else h_n

        if packed:
            out_data = out.reshape(-1, out.size(2)).index_select(0, positions)
            return (PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(batch_dim)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if lstm else h_n.squeeze(1)
        return out, hidden

    def _batched_hx(self, hx, unbatched):
        """Checks hx's rank as torch.nn does and adds the batch dim to an unbatched one."""
        if hx is None:
            return None
        want = 2 if unbatched else 3
        form = "unbatched 2-D" if unbatched else "batched 3-D"
        if self.mode == "LSTM":
            if hx[0].dim() != want or hx[1].dim() != want:
                raise RuntimeError(
                    f"For {form} input, hx and cx should also be {want}-D but got "
                    f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            return (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if unbatched else hx
        if hx.dim() != want:
            raise RuntimeError(
                f"For {form} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        return hx.unsqueeze(1) if unbatched else hx

    def _check_devices(self, input, hx):
        """torch.nn's device checks (made in its C++ for torch.nn), same messages."""
        for param in self._flat_weights:
            if param is not None and param.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input "
                    f"tensor at {input.device} and parameter tensor at {param.device}")
        for state in (hx if isinstance(hx, tuple) else (hx,)):
            if state.device != input.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input "
                    f"tensor at {input.device} and hidden tensor at {state.device}")

    def _zero_state(self, batch, like):
        directions = 2 if self.bidirectional else 1
        h_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        shape = (self.num_layers * directions, batch)
        h0 = torch.zeros(*shape, h_size, dtype=like.dtype, device=like.device)
        if self.mode != "LSTM":
            return h0
        return h0, torch.zeros(*shape, self.hidden_size, dtype=like.dtype, device=like.device)

    def flatten_parameters(self) -> None:
        """Puts each weight's two direction parameters side by side in one block of memory,
        so a layer's call reads both without copying them (torch.nn's version packs the
        weights for cuDNN, which birnn_ext does not use). Called by torch.nn whenever the
        parameters are created, moved or replaced; values and Parameter objects are kept."""
        _weights.flatten_directions(self)

    def _weights_have_changed(self):
        """torch.nn's test (is each weight still the object _flat_weights holds?) without
        its hasattr and getattr per weight, 14 us of a small layer's call: on the classes
        here, which define no attribute of a weight's name, getattr finds a weight in the
        instance dict (where functional_call puts a plain tensor) or else among the
        parameters; anything else (a buffer, a submodule, nothing) and every subclass (a
        parametrization's is one, its weights properties) take torch.nn's own lookup."""
        if type(self) not in _REPLACEMENTS.values():
            return super()._weights_have_changed()
        instance, params = self.__dict__, self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names, strict=True):
            weight = instance[name] if name in instance else params.get(name)
            if weight is None:
                weight = getattr(self, name, None)
            if weight is not None and ref is not None and ref() is not weight:
                return True
        return False

    def __setstate__(self, state):
        # copy.deepcopy and pickle rebuild each Parameter on its own storage.
        super().__setstate__(state)
        self.flatten_parameters()

    def _layer_weights(self, layer, *states):
        """Layer `layer`'s weights stacked over directions: (w_ih, w_hh, b_ih, b_hh, w_hr),
        for a call on `states` (its input, h0 and c0).

        Read from _flat_weights, as torch.nn's forward reads them (_update_flat_weights
        has brought it up to date): by position, without a getattr per weight."""
        per_direction_count = len(self._all_weights[0])  # weight names per (layer, direction)
        directions = 2 if self.bidirectional else 1
        start = layer * directions * per_direction_count
        recorded = torch.is_grad_enabled() and any(
            s is not None and s.requires_grad for s in states)
        weights = _weights.stacked_layer_of(self, layer, [
            self._flat_weights[first:first + per_direction_count]
            for first in range(start, start + directions * per_direction_count,
                               per_direction_count)], recorded)
        # Each direction's names: weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr].
        biases = (weights[2], weights[3]) if self.bias else (None, None)
        w_hr = weights[-1] if self.proj_size > 0 else None
        return (weights[0], weights[1], *biases, w_hr)

    def _run_layers(self, x, lengths, dropout_rows, h0, c0):
        """All layers over the padded batch x [T, B, I]: (output, h_n, c_n)."""
        cell = _CELL_OF_MODE[self.mode]
        if self.num_layers == 1:  # h0 and c0 as they are, h_n and c_n as the op makes them
            return ops.layer(cell, x, lengths, h0, c0, *self._layer_weights(0, x, h0, c0))
        directions = 2 if self.bidirectional else 1
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            rows = slice(layer * directions, (layer + 1) * directions)
            h0_layer, c0_layer = h0[rows], (c0[rows] if c0 is not None else None)
            x, h, c = ops.layer(cell, x, lengths, h0_layer, c0_layer,
                                *self._layer_weights(layer, x, h0_layer, c0_layer))
            h_n.append(h)
            c_n.append(c)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = self._dropout(x, dropout_rows)
        return x, torch.cat(h_n), (torch.cat(c_n) if c0 is not None else None)

    def _dropout(self, x, packed_rows):
        """Inter-layer dropout drawn exactly as torch.nn draws it, so a seed gives the same
        mask: on the layer output as torch.nn holds it. For variable lengths (packed input,
        lengths=) torch.nn holds packed data [N, F], so the mask is drawn in that shape and
        each (step, sequence) reads its packed row (`packed_rows`, from
        _lengths.packed_rows); x itself is never packed. Past a sequence's end x is zero,
        whatever mask it meets. None: drawn on x (padded input, and under torch.compile)."""
        if packed_rows is None:
            return F.dropout(x, self.dropout, True)
        rows, count = packed_rows
        noise = F.dropout(x.new_ones(count, x.size(2)), self.dropout, True)  # 0 or 1/(1-p)
        return x * noise[rows]


def _check_batch_sizes(data, batch_sizes):
    """A PackedSequence can be built by hand with any batch_sizes. torch.nn's kernels reject
    most inconsistent ones (with incidental messages); the layers here place the packed rows
    by positions computed from batch_sizes alone, so a size that grows or rows that do not
    add up would be read as if they belonged to other sequences, or fail deep inside with an
    index error. So they are checked first, at the cost of one pass over T integers."""
    if batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64 or not batch_sizes.is_cpu:
        raise RuntimeError("birnn_ext: a PackedSequence's batch_sizes must be a 1-D int64 CPU "
                           f"tensor, got {batch_sizes.dim()}-D {batch_sizes.dtype} on "
                           f"{batch_sizes.device}")
    sizes = batch_sizes.tolist()
    # Trailing zeros (steps no sequence reaches; all of them for a batch of 0) are harmless,
    # and torch.nn accepts them.
    if (not sizes or sizes[-1] < 0 or any(a < b for a, b in zip(sizes, sizes[1:]))
            or sum(sizes) != data.size(0)):
        shown = str(sizes) if len(sizes) <= 12 else f"{sizes[:12]} (and {len(sizes) - 12} more)"
        raise RuntimeError(
            f"birnn_ext: a PackedSequence's batch_sizes {shown} do not describe its data of "
            f"{data.size(0)} rows: they must be non-negative, non-increasing and sum to the "
            "number of rows (as pack_padded_sequence makes them)")


class RNN(_FusedForward, nn.RNN):
    __doc__ = nn.RNN.__doc__
    _input_dim_error = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"


class LSTM(_FusedForward, nn.LSTM):
    __doc__ = nn.LSTM.__doc__
    _input_dim_error = "LSTM: Expected input to be 2D or 3D, got {}D instead"


class GRU(_FusedForward, nn.GRU):
    __doc__ = nn.GRU.__doc__
    _input_dim_error = "GRU: Expected input to be 2D or 3D, got {}D instead"


_REPLACEMENTS = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}


def convert(model: nn.Module) -> nn.Module:
    """Turns every torch.nn.RNN / LSTM / GRU in `model` (the model itself included, nested
    anywhere) into its birnn_ext class, in place, and returns the model.

    The module objects stay the same objects, so parameters, buffers, hooks and every
    reference to them are kept; only their class changes, which adds no state. Subclasses of
    the torch.nn layers are left alone: their forward may differ from torch.nn's.
    """
    for module in model.modules():
        replacement = _REPLACEMENTS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
            module.flatten_parameters()
    return model
