// What the ops (one forward and one backward per cell, each covering both directions of one
// layer) hand to a device's recurrence driver, documented shape by shape.
//
// Shapes. T steps, B batch, I input size, H hidden size, Hout = proj_size or H,
// D = 1 or 2 directions (direction 1 runs backwards in time), G gates (RNN 1, LSTM 4, GRU 3).
// Layer weights come stacked over directions: w_ih [D, G*H, I], w_hh [D, G*H, Hout],
// b_ih / b_hh [D, G*H], w_hr [D, Hout, H]; a unidirectional layer passes D = 1.
//
// Lengths. The ops take `lengths` [B] int64 on the CPU or on the input's device (or absent:
// every sequence has T steps) and check them on the host; the drivers get them on the
// input's device with their maximum (max_length). Steps t >= lengths[b] are padding: their
// outputs are zero, the state carries through them unchanged, and direction 1 of sequence b
// starts at step lengths[b]-1.
// So h_n / c_n are each sequence's state at its last valid step, as torch.nn returns
// for a PackedSequence.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "cells.h"

namespace birnn {

using OptTensor = std::optional<at::Tensor>;

// Everything both directions of one layer's forward recurrence touch.
struct ForwardArgs {
  CellKind cell;
  at::Tensor input;    // [T, B, I]
  at::Tensor w_ih;     // [D, G*H, I]
  at::Tensor b_ih;     // [D, G*H], or undefined
  at::Tensor gates_x;  // [T, B, D, G*H] W_ih x + b_ih for every step, both directions, as
                       // the op computed it; undefined when the device's driver projects the
                       // input itself (from input, w_ih and b_ih)
  at::Tensor lengths;  // [B] int64 on the input's device, or undefined when every sequence
                       // is T long
  int64_t max_length = -1;  // the longest of lengths: every step past it is padding (-1: T)
  at::Tensor w_hh;     // [D, G*H, Hout]
  at::Tensor b_hh;     // [D, G*H], or undefined
  at::Tensor w_hr;     // [D, Hout, H], or undefined (no projection)
  at::Tensor output;   // [T, B, D, Hout] written: h of every step, zero past each length
  at::Tensor h;        // [D, B, Hout] in: h0, out: h_n
  at::Tensor c;        // [D, B, H] in: c0, out: c_n (LSTM), else undefined
  at::Tensor reserve;  // [T, B, D, kReserve*H] written (zero past each length), or undefined
};

// Everything both directions of one layer's backward recurrence touch. Afterwards the op
// turns dgates_x / dgates_h into dx and the weight gradients with large GEMMs.
struct BackwardArgs {
  CellKind cell;
  at::Tensor grad_output;  // [T, B, D, Hout] dLoss/doutput
  at::Tensor lengths;      // as in ForwardArgs
  int64_t max_length = -1;  // as in ForwardArgs
  at::Tensor w_hh;         // [D, G*H, Hout]
  at::Tensor w_hr;         // [D, Hout, H], or undefined
  at::Tensor output;       // [T, B, D, Hout] the forward's output (h of every step)
  at::Tensor h0;           // [D, B, Hout]
  at::Tensor c0;           // [D, B, H] (LSTM), else undefined
  at::Tensor reserve;      // [T, B, D, kReserve*H] saved by the forward
  at::Tensor dh;           // [D, B, Hout] in: dLoss/dh_n, out: dLoss/dh0
  at::Tensor dc;           // [D, B, H] in: dLoss/dc_n, out: dLoss/dc0 (LSTM), else undefined
  at::Tensor dgates_x;     // [T, B, D, G*H] written, zero past each length
  at::Tensor dgates_h;     // [T, B, D, G*H] written; the same tensor as dgates_x unless GRU
  at::Tensor dh_total;     // [T, B, D, Hout] written: dLoss/dh of every step (projection only)
  at::Tensor input;        // [T, B, I]
  at::Tensor w_ih;         // [D, G*H, I]
  // Defined when the device's driver computes dx and the weight gradients itself (then it
  // writes them); undefined when the op computes them from dgates after the recurrence.
  at::Tensor grad_input;   // [T, B, I]
  at::Tensor grad_w_ih;    // [D, G*H, I]
  at::Tensor grad_w_hh;    // [D, G*H, Hout]
};

// Per-device recurrence drivers (csrc/cpu/, csrc/cuda/) are called by each device's op
// bodies (csrc/cpu/ops_cpu.cpp, csrc/cuda/dispatch.cpp), which csrc/layer.h helps build.

// Number of values per (t, b, d) row of `reserve`, in units of H.
inline int reserve_width(CellKind kind) {
  return dispatch_cell(kind, [](auto cell) { return decltype(cell)::kReserve; });
}

inline int num_gates(CellKind kind) {
  return dispatch_cell(kind, [](auto cell) { return decltype(cell)::kGates; });
}

// Index of the step that precedes step t of direction d for a sequence of length len,
// or -1 when t is that direction's first step (its previous state is h0 / c0).
BIRNN_HOST_DEVICE int64_t previous_step(int d, int64_t t, int64_t len) {
  if (d == 0) return t - 1;
  return t + 1 < len ? t + 1 : -1;
}

}  // namespace birnn
