// CPU recurrence: the time loop of one layer, both directions at once.
//
// Each direction is one task (cpu::run_tasks: on torch's OpenMP team, one after the other
// with a single thread). Inside a task a step is one small GEMM (the recurrent product for
// the whole batch), then one pass of the cell's pointwise math (csrc/cells.h) over the
// batch rows still inside their sequence. Rows past their length are written as zero and
// leave the state untouched.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../birnn.h"
#include "../register.h"
#include "large_gemms.h"
#include "pointwise.h"
#include "step_weight.h"
#include "tasks.h"

namespace birnn {
namespace {

using cpu::Lengths;
using cpu::lengths_of;
using cpu::StepWeight;

// Where the forward's input projections come from: the op's gates_x [T, B, D, G*H], or,
// when the driver runs the GEMMs for two directions (large_gemms.h), chunks of this
// direction's steps that it projects just before its time loop reaches them. A chunk is
// small enough to stay in cache from the GEMM that writes it to the steps that read it; a
// whole gates_x is not (52 MB at B = 64, H = 256) and came back from memory at every step.
template <typename T>
class InputGates {
 public:
  InputGates(const ForwardArgs& a, int d, int64_t GH)
      : T_(a.output.size(0)), B_(a.output.size(1)), D_(a.output.size(2)), GH_(GH), d_(d) {
    if constexpr (std::is_same_v<T, float>) {
      if (a.driver_gemms && D_ == 2) {
        constexpr int64_t kChunkBytes = 1 << 20, kMinRows = 64;
        const int64_t step_bytes = B_ * GH_ * int64_t(sizeof(float));
        chunk_steps_ = std::clamp<int64_t>(
            std::max(kChunkBytes / step_bytes, (kMinRows + B_ - 1) / B_), 1, T_);
        chunk_.resize(chunk_steps_ * B_ * GH_);
        projection_.emplace(a, d);
        return;
      }
    }
    gates_x_ = a.gates_x.data_ptr<T>();
  }

  // Call before reading step s (the direction's s-th step) of any row; steps in order.
  void prepare(int64_t s) {
    if constexpr (std::is_same_v<T, float>) {
      if (!projection_ || s < chunk_end_) return;
      const int64_t n = std::min(chunk_steps_, T_ - s);
      chunk_end_ = s + n;
      first_t_ = d_ == 0 ? s : T_ - s - n;  // the chunk's steps, as a range of t
      projection_->apply(first_t_ * B_, (first_t_ + n) * B_, chunk_.data(), GH_);
    }
  }

  // [G*H] for batch row b of time step t (of the prepared chunk).
  const T* row(int64_t t, int64_t b) const {
    if constexpr (std::is_same_v<T, float>) {
      if (projection_) return chunk_.data() + ((t - first_t_) * B_ + b) * GH_;
    }
    return gates_x_ + ((t * B_ + b) * D_ + d_) * GH_;
  }

 private:
  int64_t T_, B_, D_, GH_;
  int d_;
  const T* gates_x_ = nullptr;
  std::optional<cpu::InputProjection> projection_;
  int64_t chunk_steps_ = 0, chunk_end_ = 0, first_t_ = 0;
  std::vector<float> chunk_;  // [chunk_steps, B, G*H]
};

template <typename Cell, typename T>
void forward_direction(const ForwardArgs& a, int d) {
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  const int64_t R = Cell::kReserve * H;
  const bool proj = a.w_hr.defined();
  const Lengths len = lengths_of(a.lengths, T_);
  const int64_t max_len = len.max(B);

  const T* w_hh = a.w_hh.data_ptr<T>() + d * GH * Hout;                   // [G*H, Hout]
  const T* b_hh = a.b_hh.defined() ? a.b_hh.data_ptr<T>() + d * GH : nullptr;
  const T* w_hr = proj ? a.w_hr.data_ptr<T>() + d * Hout * H : nullptr;   // [Hout, H]
  InputGates<T> gates_x(a, d, GH);
  T* output = a.output.data_ptr<T>();                                     // [T, B, D, Hout]
  T* h = a.h.data_ptr<T>() + d * B * Hout;                                // [B, Hout] state
  T* c = a.c.defined() ? a.c.data_ptr<T>() + d * B * H : nullptr;         // [B, H] state
  T* reserve = a.reserve.defined() ? a.reserve.data_ptr<T>() : nullptr;  // [T, B, D, R]

  const StepWeight<T> recurrent(w_hh, GH, Hout, /*transposed=*/true);  // h @ W_hh^T
  const std::optional<StepWeight<T>> projection =
      proj ? std::make_optional<StepWeight<T>>(w_hr, Hout, H, true) : std::nullopt;  // m @ W_hr^T
  std::vector<T> gates_h(B * GH);                 // [B, G*H] h @ W_hh^T of this step
  std::vector<T> m(proj ? B * H : 0);             // [B, H] o * tanh(c), before projection
  std::vector<T> h_proj(proj ? B * Hout : 0);     // [B, Hout] m @ W_hr^T

  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = d == 0 ? s : T_ - 1 - s;
    const bool any_valid = t < max_len;
    if (any_valid) {
      gates_x.prepare(s);
      recurrent.apply(B, h, Hout, T(0), gates_h.data(), GH);
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (t * B + b) * D + d;
      T* out_row = output + row * Hout;
      T* reserve_row = reserve ? reserve + row * R : nullptr;
      if (t >= len[b]) {
        std::fill(out_row, out_row + Hout, T(0));
        if (reserve_row) std::fill(reserve_row, reserve_row + R, T(0));
        continue;
      }
      T* h_row = h + b * Hout;
      T* c_row = c ? c + b * H : nullptr;
      const ForwardRow<T> r{gates_x.row(t, b), gates_h.data() + b * GH, b_hh, h_row, c_row,
                            proj ? m.data() + b * H : h_row, c_row, reserve_row};
      cpu::forward_row<Cell, T>(r, H);
      if (!proj) std::copy(h_row, h_row + Hout, out_row);
    }
    if (proj && any_valid) {
      projection->apply(B, m.data(), H, T(0), h_proj.data(), Hout);
      for (int64_t b = 0; b < B; ++b) {
        if (t >= len[b]) continue;
        const T* src = h_proj.data() + b * Hout;
        std::copy(src, src + Hout, h + b * Hout);
        std::copy(src, src + Hout, output + ((t * B + b) * D + d) * Hout);
      }
    }
  }
}

template <typename Cell, typename T>
void backward_direction(const BackwardArgs& a, int d) {
  using A = at::opmath_type<T>;
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  const int64_t R = Cell::kReserve * H;
  const bool proj = a.w_hr.defined();
  const bool split = Cell::kSplitHiddenGrad;
  const Lengths len = lengths_of(a.lengths, T_);
  const int64_t max_len = len.max(B);

  const T* w_hh = a.w_hh.data_ptr<T>() + d * GH * Hout;                 // [G*H, Hout]
  const T* w_hr = proj ? a.w_hr.data_ptr<T>() + d * Hout * H : nullptr; // [Hout, H]
  const T* grad_output = a.grad_output.data_ptr<T>();                   // [T, B, D, Hout]
  const T* output = a.output.data_ptr<T>();                             // [T, B, D, Hout]
  const T* h0 = a.h0.data_ptr<T>() + d * B * Hout;                      // [B, Hout]
  const T* c0 = a.c0.defined() ? a.c0.data_ptr<T>() + d * B * H : nullptr;
  const T* reserve = a.reserve.data_ptr<T>();                           // [T, B, D, R]
  T* dh = a.dh.data_ptr<T>() + d * B * Hout;      // [B, Hout] carry: dLoss/dh from step t+1
  T* dc = a.dc.defined() ? a.dc.data_ptr<T>() + d * B * H : nullptr;   // [B, H] carry
  T* dgates_x = a.dgates_x.data_ptr<T>();                               // [T, B, D, G*H]
  T* dgates_h = a.dgates_h.data_ptr<T>();
  T* dh_total = proj ? a.dh_total.data_ptr<T>() : nullptr;              // [T, B, D, Hout]

  const StepWeight<T> recurrent(w_hh, Hout, GH, /*transposed=*/false);  // dgates_h @ W_hh
  const std::optional<StepWeight<T>> projection =
      proj ? std::make_optional<StepWeight<T>>(w_hr, H, Hout, false) : std::nullopt;  // dh @ W_hr
  std::vector<T> dh_step(proj ? 0 : B * Hout);  // [B, Hout] total dLoss/dh of this step
  std::vector<T> dm(proj ? B * H : 0);          // [B, H] that gradient through W_hr

  // Backward visits the steps in the reverse of the forward's order.
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = d == 0 ? T_ - 1 - s : s;
    const bool any_valid = t < max_len;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (t * B + b) * D + d;
      T* dh_row = proj ? dh_total + row * Hout : dh_step.data() + b * Hout;
      if (t >= len[b]) {
        std::fill(dh_row, dh_row + Hout, T(0));
        std::fill(dgates_x + row * GH, dgates_x + (row + 1) * GH, T(0));
        if (split) std::fill(dgates_h + row * GH, dgates_h + (row + 1) * GH, T(0));
        continue;
      }
      // This step's h feeds the output at t and the next step: both gradients meet here.
      T* carry = dh + b * Hout;
      const T* g = grad_output + row * Hout;
      for (int64_t k = 0; k < Hout; ++k) {
        dh_row[k] = T(A(g[k]) + A(carry[k]));
        carry[k] = T(0);
      }
    }
    if (!any_valid) continue;
    if (proj) {
      projection->apply(B, dh_total + (t * B * D + d) * Hout, D * Hout, T(0), dm.data(), H);
    }
    for (int64_t b = 0; b < B; ++b) {
      if (t >= len[b]) continue;
      const int64_t row = (t * B + b) * D + d;
      const int64_t prev = previous_step(d, t, len[b]);
      const int64_t prev_row = (prev * B + b) * D + d;
      const T* c_prev = nullptr;
      if constexpr (Cell::kCellSlot >= 0) {
        c_prev = prev < 0 ? c0 + b * H : reserve + prev_row * R + Cell::kCellSlot * H;
      }
      const BackwardRow<T> r{proj ? dm.data() + b * H : dh_step.data() + b * Hout,
                             reserve + row * R,
                             output + row * Hout,
                             prev < 0 ? h0 + b * Hout : output + prev_row * Hout,
                             c_prev,
                             dc ? dc + b * H : nullptr,
                             dh + b * Hout,
                             dgates_x + row * GH,
                             dgates_h + row * GH};
      cpu::backward_row<Cell, T>(r, H);
    }
    // carry += dgates_h @ W_hh: the gradient reaching the previous step's h.
    recurrent.apply(B, dgates_h + (t * B * D + d) * GH, D * GH, T(1), dh, Hout);
  }
}

}  // namespace

void forward_recurrence_cpu(const ForwardArgs& a) {
  const int64_t D = a.output.size(2), rows = a.output.size(0) * a.output.size(1);
  if (a.driver_gemms && D == 1) {
    // One direction: project every step first, with every thread, in row blocks (two
    // directions project on their own threads as they go: InputGates).
    const int blocks = std::max(1, at::get_num_threads());
    const cpu::InputProjection projection(a, 0);
    const int64_t GH = a.gates_x.size(3);
    cpu::run_tasks(blocks, [&](int i) {
      const int64_t row0 = rows * i / blocks, row1 = rows * (i + 1) / blocks;
      projection.apply(row0, row1, a.gates_x.data_ptr<float>() + row0 * GH, GH);
    });
  }
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.output.scalar_type(),
                                    "birnn_forward_cpu", [&] {
      cpu::run_tasks(D, [&](int d) { forward_direction<Cell, scalar_t>(a, d); });
    });
  });
}

void backward_recurrence_cpu(const BackwardArgs& a) {
  const int64_t D = a.output.size(2);
  // Direction 1's part of dx, summed into grad_input once both are done.
  const at::Tensor dx_1 = a.driver_gemms && D == 2 ? at::empty_like(a.grad_input) : at::Tensor();
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dgates_x.scalar_type(),
                                    "birnn_backward_cpu", [&] {
      cpu::run_tasks(D, [&](int d) {
        backward_direction<Cell, scalar_t>(a, d);
        if (a.driver_gemms) {
          cpu::backward_gemms(a, d, (d == 0 ? a.grad_input : dx_1).data_ptr<float>());
        }
      });
    });
  });
  if (dx_1.defined()) a.grad_input.add_(dx_1);
}

}  // namespace birnn

TORCH_LIBRARY_IMPL(birnn_ext, CPU, m) {
  BIRNN_REGISTER_LAYER_OPS(m);
}
