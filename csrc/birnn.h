// birnn_ext's C++ interface: the ops (one forward and one backward per cell, each covering
// both directions of one layer) and the per-device recurrence drivers they call.
//
// Shapes. T steps, B batch, I input size, H hidden size, Hout = proj_size or H,
// D = 1 or 2 directions (direction 1 runs backwards in time), G gates (RNN 1, LSTM 4, GRU 3).
// Layer weights come stacked over directions: w_ih [D, G*H, I], w_hh [D, G*H, Hout],
// b_ih / b_hh [D, G*H], w_hr [D, Hout, H]; a unidirectional layer passes D = 1.
//
// Lengths. The ops take `lengths` [B] int64 on the CPU or on the input's device (or absent:
// every sequence has T steps) and check them on the host; the drivers get them on the
// input's device with their maximum (max_length). Steps t >= lengths[b] are padding: their outputs are zero, the state carries
// through them unchanged, and direction 1 of sequence b starts at step lengths[b]-1.
// So h_n / c_n are each sequence's state at its last valid step, as torch.nn returns
// for a PackedSequence.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "cells.h"

namespace birnn {

using OptTensor = std::optional<at::Tensor>;

// Everything both directions of one layer's forward recurrence touch. The op has already
// run the input projection, so the driver's per-step work is the recurrent GEMM and the
// cell's pointwise pass (plus the projection GEMM for an LSTM with proj_size).
struct ForwardArgs {
  CellKind cell;
  at::Tensor gates_x;  // [T, B, D, G*H] W_ih x + b_ih for every step, both directions,
                       // written by the op; with driver_gemms by the driver (D = 1) or
                       // undefined (D = 2: the driver projects chunks of steps as it goes)
  bool driver_gemms = false;  // see driver_does_gemms()
  at::Tensor input;    // [T, B, I]
  at::Tensor w_ih;     // [D, G*H, I]
  at::Tensor b_ih;     // [D, G*H], or undefined
  at::Tensor lengths;  // [B] int64, or undefined when every sequence is T long
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
  // When driver_gemms (see driver_does_gemms()) the driver also writes these three:
  bool driver_gemms = false;
  at::Tensor input;        // [T, B, I]
  at::Tensor w_ih;         // [D, G*H, I]
  at::Tensor grad_input;   // [T, B, I]
  at::Tensor grad_w_ih;    // [D, G*H, I]
  at::Tensor grad_w_hh;    // [D, G*H, Hout]
};

// Whether the CPU driver runs a layer's large GEMMs itself (the input projection; dx,
// dW_ih and dW_hh) with birnn_ext's own GEMM, each direction's share on that direction's
// thread, instead of the op running them as ATen GEMMs around the recurrence. True for
// float32 CPU tensors on a CPU with AVX2 or AVX-512 (csrc/cpu/gemm.h says why).
bool cpu_driver_does_gemms(const at::Tensor& input);

// Per-device recurrence drivers (csrc/cpu/, csrc/cuda/).
void forward_recurrence_cpu(const ForwardArgs& args);
void backward_recurrence_cpu(const BackwardArgs& args);
void forward_recurrence_cuda(const ForwardArgs& args);
void backward_recurrence_cuda(const BackwardArgs& args);

// CUDA lengths for the ops (csrc/cuda/lengths.cu): host_lengths [B] int64 (contiguous, on the
// CPU) copied to `device` with no host sync and safely under CUDA graph capture; and device
// lengths read back to the host (a sync, refused with a clear error during graph capture).
at::Tensor cuda_lengths_to_device(const at::Tensor& host_lengths, const at::Device& device);
at::Tensor cuda_lengths_to_host(const at::Tensor& lengths);

// The ops (csrc/layer.cpp); registered per device by the TORCH_LIBRARY_IMPL blocks.
//
// forward -> (output [T, B, D*Hout], h_n [D, B, Hout], c_n [D, B, H] (LSTM) or [0],
//             reserve [T, B, D, kReserve*H] when training, else [0])
//   input [T, B, I] time-major; hx [D, B, Hout]; cx [D, B, H] (LSTM only);
//   training: also write `reserve`, which the backward op needs.
template <CellKind Kind>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const at::Tensor& input, const OptTensor& lengths, const at::Tensor& hx,
    const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool training);

// backward -> (grad_input [T, B, I], grad_hx [D, B, Hout], grad_cx [D, B, H] or [0],
//              grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr)
//   each weight gradient has its weight's shape, or is [0] when that weight is absent.
//   grad_output [T, B, D*Hout], grad_h_n [D, B, Hout], grad_c_n [D, B, H] (LSTM);
//   output and reserve are the forward's (run with training=true).
template <CellKind Kind>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layer_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
               const OptTensor& grad_c_n, const at::Tensor& input, const OptTensor& lengths,
               const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
               const OptTensor& w_hr,
               const at::Tensor& output, const at::Tensor& reserve);

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
