// A cell's pointwise math (csrc/cells.h) on ONE hidden unit held in registers, for kernels
// in which one thread owns one (b, j): the standard path's cell kernels, and any later path.
//
// Why. The cells read and write through row pointers of one type T, indexed k*H + j. A kernel
// that carries its state in float32 while storing outputs in half or bfloat16 needs two types
// at once. So the thread loads its unit's values (gate k of unit j, at k*H + j of each row)
// into small local arrays of the math type C, runs the cell on them with H = 1, j = 0 (index
// k), and stores the results where and in the type each belongs. With constant indices the
// arrays live in registers; the arithmetic is the cell's own, in C, so a CUDA result differs
// from the CPU's only in where values are rounded.
#pragma once

#include "../cells.h"

namespace birnn {
namespace cuda {

// Inputs and outputs of Cell::forward for one unit, in the math type C.
template <typename Cell, typename C>
struct UnitForward {
  C gates_x[Cell::kGates];   // in: W_ih x + b_ih of each gate
  C gates_h[Cell::kGates];   // in: W_hh h of each gate (bias not included)
  C b_hh[Cell::kGates];      // in: the recurrent bias of each gate (zero without a bias)
  C h_prev = C(0);           // in: previous h (read by GRU)
  C c_prev = C(0);           // in: previous c (LSTM)
  C h = C(0), c = C(0);      // out: new h (LSTM: m = o * tanh(c)), new c (LSTM)
  C reserve[Cell::kReserve > 0 ? Cell::kReserve : 1];  // out: what the backward needs

  // Every pointer is known at compile time (a run-time choice such as "b_hh or nullptr"
  // would put the arrays in local memory instead of registers).
  template <bool kTraining>
  __device__ __forceinline__ void run() {
    const ForwardRow<C> row{gates_x, gates_h, b_hh, &h_prev, &c_prev,
                            &h,      &c,      kTraining ? reserve : nullptr};
    Cell::template forward<C, C>(row, 0, 1);
  }
};

// Inputs and outputs of Cell::backward for one unit, in the math type C.
template <typename Cell, typename C>
struct UnitBackward {
  C dh = C(0);               // in: dLoss/dh of this step (LSTM: dLoss/dm)
  C reserve[Cell::kReserve > 0 ? Cell::kReserve : 1];  // in: saved by the forward
  C h = C(0);                // in: this step's h (RNN)
  C h_prev = C(0);           // in: previous h (GRU)
  C c_prev = C(0);           // in: previous c (LSTM)
  C dc = C(0);               // in: dLoss/dc from the future; out: dLoss/dc_prev (LSTM)
  C dh_prev = C(0);          // out: the direct path into dLoss/dh_prev (GRU), else stays 0
  C dgates_x[Cell::kGates];  // out
  C dgates_h[Cell::kGates];  // out (GRU only; the other cells' dgates_h is dgates_x)

  __device__ __forceinline__ void run() {
    const BackwardRow<C> row{&dh, reserve, &h, &h_prev, &c_prev, &dc, &dh_prev, dgates_x,
                             dgates_h};
    Cell::template backward<C, C>(row, 0, 1);
  }
};

}  // namespace cuda
}  // namespace birnn
