// The large GEMMs of a layer on the CPU driver's own threads: the input projection, projected by each slice of units (step_team.h) for
// its own gate columns as its time loop goes, and after the backward loop dx, dW_ih and
// dW_hh in row parts, so that no GEMM runs between the op and the driver on one thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>

#include "../birnn.h"
#include "gemm.h"
#include "step_team.h"

namespace birnn::cpu {

// Whether the CPU driver runs a layer's large GEMMs itself (the input projection; dx, dW_ih
// and dW_hh) with birnn_ext's own GEMM instead of the op running them as ATen GEMMs around
// the recurrence: float32 on a CPU with AVX2 or AVX-512 (csrc/cpu/gemm.h says why).
bool driver_does_gemms(const at::Tensor& input);

// Which GEMMs run the backward's dx, dW_ih and dW_hh where driver_does_gemms, for a layer of
// `rows` = T*B: "own" (the driver's, on each direction's thread, as the forward's projection)
// or "aten" (the op's ATen GEMMs after the recurrence, backward_result: MKL where torch has
// it). BIRNN_EXT_CPU_BACKWARD_GEMMS = auto (default), own or aten chooses, read at every call;
// auto takes what this CPU measured fastest. Any other value throws, naming the valid ones.
const char* backward_gemm_engine(int64_t rows);
bool driver_does_backward_gemms(const at::Tensor& input);

// Sequence lengths, or T for every sequence when none were given.
struct Lengths {
  const int64_t* values;
  int64_t T;
  int64_t operator[](int64_t b) const { return values ? values[b] : T; }
  int64_t max(int64_t B) const {
    return values ? (B ? *std::max_element(values, values + B) : 0) : T;
  }
};

inline Lengths lengths_of(const at::Tensor& lengths, int64_t T) {
  return {lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr, T};
}

// Direction d's input projection W_ih[d] x + b_ih[d] for the gate columns of one slice of
// units, with those rows of W_ih[d] packed once.
class InputProjection {
 public:
  InputProjection(const ForwardArgs& a, int d, UnitSlice slice);
  // out[(row - row0) * ldo + c] for the slice's gate columns c of [0, G*H), for the input rows
  // [row0, row1) of the T*B (t, b); other columns are left alone.
  void apply(int64_t row0, int64_t row1, float* out, int64_t ldo) const;

 private:
  struct Run {
    int64_t first;        // first gate column of the run
    PackedMatrix w_ih;    // W_ih[d][first : first + count]^T
  };
  const float* x_;     // [T*B, I]
  const float* bias_;  // [G*H], or null
  int64_t I_;
  std::vector<Run> runs_;
};

// Part `part` of `parts` of direction d's backward GEMMs, split by output rows:
// grad_w_ih[d], grad_w_hh[d], and dx_d [T*B, I] = dgates_x[:, :, d] @ W_ih[d] (the caller
// sums dx over directions).
void backward_gemms(const BackwardArgs& a, int d, int part, int parts, float* dx_d);

}  // namespace birnn::cpu
