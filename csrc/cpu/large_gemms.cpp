// The CPU driver's large GEMMs (large_gemms.h) on birnn_ext's own GEMM (gemm.h).
#include "large_gemms.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include <ATen/ATen.h>

#include <vector>

#include "gemm.h"

namespace birnn {
namespace cpu {

bool driver_does_gemms(const at::Tensor& input) {
  return input.scalar_type() == at::kFloat && cpu_isa() != Isa::Scalar;
}

namespace {

// Below this many rows (T*B: dx's M, the weight gradients' K) the driver's own GEMMs are as
// fast as MKL's even where MKL is at its best, and they save the op's pass after the loop.
constexpr int64_t kAtenMinRows = 256;

}  // namespace

const char* backward_gemm_engine(int64_t rows) {
  const char* env = std::getenv("BIRNN_EXT_CPU_BACKWARD_GEMMS");
  const std::string value = env ? env : "";
  if (value == "own") return "own";
  if (value == "aten") return "aten";
  TORCH_CHECK(value.empty() || value == "auto", "birnn_ext: BIRNN_EXT_CPU_BACKWARD_GEMMS=",
              value, " is not one of auto, own, aten");
  // auto: MKL where it was measured faster than the own kernel (benchmarks/NOTES.md, CPU
  // version 15): an Intel CPU (on the AVX-512 path, and on the AVX2 one with MKL capped at
  // AVX2 as on an AVX2-only Intel CPU), large enough products. On AMD CPUs MKL takes a
  // generic path (18-89 GFLOP/s), far behind the own kernel.
  const bool mkl_fast = at::hasMKL() && cpu_is_intel();
  return mkl_fast && rows >= kAtenMinRows ? "aten" : "own";
}

bool driver_does_backward_gemms(const at::Tensor& input) {
  if (!driver_does_gemms(input)) return false;
  const int64_t rows = input.dim() == 3 ? input.size(0) * input.size(1) : 0;
  return std::strcmp(backward_gemm_engine(rows), "own") == 0;
}

InputProjection::InputProjection(const ForwardArgs& a, int d, UnitSlice slice)
    : x_(a.input.data_ptr<float>()),
      bias_(a.b_ih.defined() ? a.b_ih.data_ptr<float>() + d * a.w_ih.size(1) : nullptr),
      I_(a.w_ih.size(2)) {
  const int64_t GH = a.w_ih.size(1), G = num_gates(a.cell);
  const float* w_ih = a.w_ih.data_ptr<float>() + d * GH * I_;  // [G*H, I]
  for (const GateRows& rows : gate_rows(G, GH / G, slice)) {
    runs_.push_back({rows.first, PackedMatrix(w_ih + rows.first * I_, I_, rows.count, I_,
                                              /*transposed=*/true)});
  }
}

void InputProjection::apply(int64_t row0, int64_t row1, float* out, int64_t ldo) const {
  for (const Run& run : runs_) {
    run.w_ih.multiply(row1 - row0, x_ + row0 * I_, I_, 1, bias_ ? bias_ + run.first : nullptr,
                      0.f, out + run.first, ldo);
  }
}

void backward_gemms(const BackwardArgs& a, int d, int part, int parts, float* dx_d) {
  const int64_t T = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_ih.size(1), I = a.w_ih.size(2);
  const int64_t TB = T * B;
  // This part's rows of dx [T*B, ...] and of the weight gradients [G*H, ...].
  const int64_t tb0 = TB * part / parts, tb1 = TB * (part + 1) / parts;
  const int64_t g0 = GH * part / parts, g1 = GH * (part + 1) / parts;
  // This direction's columns of dgates [T*B, D, G*H], and the same seen transposed.
  const float* dgates_x = a.dgates_x.data_ptr<float>() + d * GH;
  const float* dgates_h = a.dgates_h.data_ptr<float>() + d * GH;

  // dx_d [T*B, I] = dgates_x @ W_ih[d]
  const PackedMatrix w_ih(a.w_ih.data_ptr<float>() + d * GH * I, I, I, GH, false);
  w_ih.multiply(tb1 - tb0, dgates_x + tb0 * D * GH, D * GH, 1, nullptr, 0.f, dx_d + tb0 * I, I);

  // Padded steps (t >= lengths[b]) have zero dgates, and read a row of zeros below for x
  // and for h_prev: what sits there may be inf or NaN (the caller's padding with lengths=; a
  // last h or h0 shifted into a padded step), 0 * inf is NaN, and torch.nn, which never sees
  // a padded step, has finite weight gradients.
  const Lengths len = lengths_of(a.lengths, T);
  const std::vector<float> zeros(std::max(I, Hout), 0.f);

  // grad_w_ih[d] [G*H, I] = dgates_x^T @ x
  const float* input = a.input.data_ptr<float>();
  float* grad_w_ih = a.grad_w_ih.data_ptr<float>() + (d * GH + g0) * I;
  if (a.lengths.defined()) {
    std::vector<const float*> x_rows(TB);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        x_rows[t * B + b] = t >= len[b] ? zeros.data() : input + (t * B + b) * I;
      }
    }
    const PackedMatrix x(x_rows.data(), I, TB);
    x.multiply(g1 - g0, dgates_x + g0, 1, D * GH, nullptr, 0.f, grad_w_ih, I);
  } else {
    const PackedMatrix x(input, I, I, TB, false);
    x.multiply(g1 - g0, dgates_x + g0, 1, D * GH, nullptr, 0.f, grad_w_ih, I);
  }

  // grad_w_hh[d] [G*H, Hout] = dgates_h^T @ h_prev, h_prev [T*B, Hout] the state each step
  // started from (h0 at the direction's first step).
  const float* output = a.output.data_ptr<float>();
  const float* h0 = a.h0.data_ptr<float>() + d * B * Hout;
  std::vector<const float*> h_prev(TB);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t prev = previous_step(d, t, len[b]);
      h_prev[t * B + b] = t >= len[b] ? zeros.data()
                          : prev < 0  ? h0 + b * Hout
                                      : output + ((prev * B + b) * D + d) * Hout;
    }
  }
  const PackedMatrix h(h_prev.data(), Hout, TB);
  h.multiply(g1 - g0, dgates_h + g0, 1, D * GH, nullptr, 0.f,
             a.grad_w_hh.data_ptr<float>() + (d * GH + g0) * Hout, Hout);
}

}  // namespace cpu
}  // namespace birnn
