// The CPU driver's large GEMMs (large_gemms.h) on the AVX-512 GEMM of gemm_avx512.h.
#include "large_gemms.h"

#include <ATen/ATen.h>

#include <vector>

#include "gemm_avx512.h"
#include "gemm_cpu.h"

namespace birnn {

bool cpu_driver_does_gemms(const at::Tensor& input) {
  return input.is_cpu() && input.scalar_type() == at::kFloat && cpu::avx512::supported();
}

namespace cpu {

InputProjection::InputProjection(const ForwardArgs& a, int d)
    : x_(a.input.data_ptr<float>()),
      bias_(a.b_ih.defined() ? a.b_ih.data_ptr<float>() + d * a.w_ih.size(1) : nullptr),
      GH_(a.w_ih.size(1)),
      I_(a.w_ih.size(2)),
      panels_(packed_panels(a.w_ih.data_ptr<float>() + d * GH_ * I_, GH_, I_, true)) {}

void InputProjection::apply(int64_t row0, int64_t row1, float* out, int64_t ldo) const {
  avx512::gemm(row1 - row0, GH_, I_, x_ + row0 * I_, I_, 1, panels_.data_ptr<float>(), bias_,
               0.f, out, ldo);
}

void backward_gemms(const BackwardArgs& a, int d, float* dx_d) {
  const int64_t T = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_ih.size(1), I = a.w_ih.size(2);
  const int64_t TB = T * B;
  // This direction's columns of dgates [T*B, D, G*H], and the same seen transposed.
  const float* dgates_x = a.dgates_x.data_ptr<float>() + d * GH;
  const float* dgates_h = a.dgates_h.data_ptr<float>() + d * GH;

  // dx_d [T*B, I] = dgates_x @ W_ih[d]
  at::Tensor w = packed_panels(a.w_ih.data_ptr<float>() + d * GH * I, I, GH, false);
  avx512::gemm(TB, I, GH, dgates_x, D * GH, 1, w.data_ptr<float>(), nullptr, 0.f, dx_d, I);

  // grad_w_ih[d] [G*H, I] = dgates_x^T @ x
  at::Tensor x = packed_panels(a.input.data_ptr<float>(), I, TB, false);
  avx512::gemm(GH, I, TB, dgates_x, 1, D * GH, x.data_ptr<float>(), nullptr, 0.f,
               a.grad_w_ih.data_ptr<float>() + d * GH * I, I);

  // grad_w_hh[d] [G*H, Hout] = dgates_h^T @ h_prev, h_prev [T*B, Hout] the state each step
  // started from (h0 at the direction's first step). Padded steps have zero dgates; they
  // read a row of zeros, since their shifted state (a last h, or h0) may be inf or NaN and
  // 0 * inf is NaN, where torch.nn, which never sees a padded step, has a finite dW_hh.
  const Lengths len = lengths_of(a.lengths, T);
  const float* output = a.output.data_ptr<float>();
  const float* h0 = a.h0.data_ptr<float>() + d * B * Hout;
  const std::vector<float> zeros(Hout, 0.f);
  std::vector<const float*> h_prev(TB);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t prev = previous_step(d, t, len[b]);
      h_prev[t * B + b] = t >= len[b] ? zeros.data()
                          : prev < 0  ? h0 + b * Hout
                                      : output + ((prev * B + b) * D + d) * Hout;
    }
  }
  at::Tensor h = at::empty({avx512::panel_floats(Hout, TB)}, at::kFloat);
  avx512::pack_rows(h_prev.data(), Hout, TB, h.data_ptr<float>());
  avx512::gemm(GH, Hout, TB, dgates_h, 1, D * GH, h.data_ptr<float>(), nullptr, 0.f,
               a.grad_w_hh.data_ptr<float>() + d * GH * Hout, Hout);
}

}  // namespace cpu
}  // namespace birnn
