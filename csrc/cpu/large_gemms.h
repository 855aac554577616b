// The large GEMMs of a layer on the CPU driver's own threads (see cpu_driver_does_gemms in
// csrc/birnn.h): each direction's task does its input projection before its time loop, and
// its share of dx, dW_ih and dW_hh after its backward loop, so the two directions never
// wait for each other and no GEMM runs between the op and the driver.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>

#include "../birnn.h"
#include "gemm.h"

namespace birnn::cpu {

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

// Direction d's input projection W_ih[d] x + b_ih[d], with W_ih[d] packed once.
class InputProjection {
 public:
  InputProjection(const ForwardArgs& a, int d);
  // out[(row - row0) * ldo, :G*H] for the input rows [row0, row1) of the T*B (t, b).
  void apply(int64_t row0, int64_t row1, float* out, int64_t ldo) const;

 private:
  const float* x_;     // [T*B, I]
  const float* bias_;  // [G*H], or null
  int64_t GH_, I_;
  PackedMatrix w_ih_;  // W_ih[d]^T
};

// Direction d's share of the backward GEMMs: grad_w_ih[d], grad_w_hh[d], and
// dx_d [T*B, I] = dgates_x[:, :, d] @ W_ih[d] (the caller sums dx over directions).
void backward_gemms(const BackwardArgs& a, int d, float* dx_d);

}  // namespace birnn::cpu
