// CPU recurrence: the time loop of one layer, both directions.
//
// Threads (step_team.h): each direction's hidden units form one slice, or several when one
// direction's recurrent weight is too large for a core's L2 cache; the directions run at the
// same time when the threads suffice, else one after the other. A step of one slice is one
// small GEMM (the recurrent product for the whole batch, for the slice's gate columns), then
// one pass of the cell's pointwise math (csrc/cells.h) over the slice's units of every batch
// row still inside its sequence. Rows past their length are written as zero and carry their
// state unchanged.
//
// Every slice's product reads all of the previous step's h, so h is double-buffered: step s
// reads h_buf[s % 2] and writes h_buf[(s + 1) % 2], and no slice overwrites what another is
// still reading. The cell state c and the backward carries are read and written only at the
// slice's own units, in place.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <vector>

#include "../birnn.h"
#include "../layer.h"
#include "large_gemms.h"
#include "recurrence_cpu.h"
#include "memory.h"
#include "pointwise.h"
#include "step_team.h"
#include "step_weight.h"
#include "tasks.h"

namespace birnn {
namespace {

using cpu::Lengths;
using cpu::lengths_of;
using cpu::Plan;
using cpu::StepTeam;
using cpu::StepWeight;
using cpu::UnitSlice;

// A scratch buffer of n values from torch's CPU allocator: 64-byte aligned, so the SIMD loads
// and stores of the GEMMs and the pointwise pass never straddle two cache lines, and left
// uninitialised (every value is written before it is read).
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n = 0)
      : tensor_(at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value))),
        data_(tensor_.data_ptr<T>()) {}
  T* data() const { return data_; }

 private:
  at::Tensor tensor_;
  T* data_;
};

// A weight of the recurrent product restricted to one slice's gate columns: one StepWeight
// per run of gate rows (cpu::gate_rows), each writing its own columns of the output.
template <typename T>
class SliceWeight {
 public:
  // op(W)[:, columns of the slice] for the forward: W [G*H, K] used transposed.
  SliceWeight(const T* w, int64_t G, int64_t H, int64_t K, UnitSlice slice) {
    for (const cpu::GateRows& rows : cpu::gate_rows(G, H, slice)) {
      runs_.push_back({rows.first, StepWeight<T>(w + rows.first * K, K, rows.count, K, true)});
    }
  }
  // out[rows, the slice's columns] = x[rows, K] @ op(W) + beta * out
  void apply(int64_t rows, const T* x, int64_t ldx, T beta, T* out, int64_t ldout) const {
    for (const Run& run : runs_) run.weight.apply(rows, x, ldx, beta, out + run.first, ldout);
  }

 private:
  struct Run {
    int64_t first;  // first output column
    StepWeight<T> weight;
  };
  std::vector<Run> runs_;
};

// Where the forward's input projections come from: the op's gates_x [T, B, D, G*H], or,
// when the driver runs the GEMMs for two directions (large_gemms.h), chunks of this
// direction's steps that each slice projects for its own gate columns just before its time
// loop reaches them. A chunk is small enough to stay in cache from the GEMM that writes it to
// the steps that read it; a whole gates_x is not, and came back from memory at every step
// (benchmarks/NOTES.md, CPU version 9).
template <typename T>
class InputGates {
 public:
  InputGates(const ForwardArgs& a, int d, int64_t GH, UnitSlice slice)
      : T_(a.output.size(0)), B_(a.output.size(1)), D_(a.output.size(2)), GH_(GH), d_(d) {
    if constexpr (std::is_same_v<T, float>) {
      if (!a.gates_x.defined()) {  // csrc/cpu/ops_cpu.cpp: two directions project as they go
        constexpr int64_t kChunkBytes = 1 << 20, kMinRows = 64;
        const int64_t step_bytes = B_ * GH_ * int64_t(sizeof(float));
        chunk_steps_ = std::clamp<int64_t>(
            std::max(kChunkBytes / step_bytes, (kMinRows + B_ - 1) / B_), 1, T_);
        chunk_ = Scratch<float>(chunk_steps_ * B_ * GH_);
        projection_.emplace(a, d, slice);
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
  Scratch<float> chunk_;  // [chunk_steps, B, G*H], the slice's columns written
};

// One direction's forward time loop: unit(s, i) runs step s of slice i; there are T units.
template <typename Cell, typename T>
class ForwardLoop {
 public:
  ForwardLoop(const ForwardArgs& a, int d, const std::vector<UnitSlice>& slices)
      : a_(a), d_(d), slices_(slices),
        T_(a.output.size(0)), B_(a.output.size(1)), D_(a.output.size(2)),
        Hout_(a.output.size(3)), GH_(a.w_hh.size(1)), H_(GH_ / Cell::kGates),
        proj_(a.w_hr.defined()), len_(lengths_of(a.lengths, T_)), max_len_(len_.max(B_)),
        b_hh_(a.b_hh.defined() ? a.b_hh.data_ptr<T>() + d * GH_ : nullptr),
        c_(a.c.defined() ? a.c.data_ptr<T>() + d * B_ * H_ : nullptr),
        reserve_(a.reserve.defined() ? a.reserve.data_ptr<T>() : nullptr),
        h_spare_(B_ * Hout_), gates_h_(B_ * GH_) {
    TORCH_INTERNAL_ASSERT(!proj_ || slices.size() == 1, "a projection needs every unit");
    h_buf_[0] = a.h.data_ptr<T>() + d * B_ * Hout_;
    h_buf_[1] = h_spare_.data();
    if (proj_) {
      // m @ W_hr^T, W_hr [Hout, H]
      projection_.emplace(a.w_hr.data_ptr<T>() + d * Hout_ * H_, H_, Hout_, H_, true);
      m_ = Scratch<T>(B_ * H_);
    }
  }

  int64_t units() const { return T_; }

  void unit(int64_t s, int i) {
    const UnitSlice u = slices_[i];
    const UnitSlice o = out_units(i);
    const int64_t t = d_ == 0 ? s : T_ - 1 - s;
    const int64_t R = Cell::kReserve * H_;
    T* h_prev = h_buf_[s % 2];                    // [B, Hout] the state this step reads
    T* h_next = h_buf_[(s + 1) % 2];              // [B, Hout] the state it writes
    T* output = a_.output.data_ptr<T>();          // [T, B, D, Hout]
    const bool any_valid = t < max_len_;
    if (s == 0) pack_slice(i);
    if (any_valid) {
      gates_x_[i]->prepare(s);
      recurrent_[i]->apply(B_, h_prev, Hout_, T(0), gates_h_.data(), GH_);
    }
    for (int64_t b = 0; b < B_; ++b) {
      const int64_t row = (t * B_ + b) * D_ + d_;
      T* out_row = output + row * Hout_;
      T* reserve_row = reserve_ ? reserve_ + row * R : nullptr;
      T* h_row = h_next + b * Hout_;
      if (t >= len_[b]) {
        // Padding: zero output and reserve, the state carried through unchanged.
        std::fill(out_row + o.u0, out_row + o.u1, T(0));
        for (int k = 0; reserve_row && k < Cell::kReserve; ++k) {
          std::fill(reserve_row + k * H_ + u.u0, reserve_row + k * H_ + u.u1, T(0));
        }
        std::copy(h_prev + b * Hout_ + o.u0, h_prev + b * Hout_ + o.u1, h_row + o.u0);
        continue;
      }
      T* c_row = c_ ? c_ + b * H_ : nullptr;
      const ForwardRow<T> r{gates_x_[i]->row(t, b), gates_h_.data() + b * GH_, b_hh_,
                            h_prev + b * Hout_, c_row, proj_ ? m_.data() + b * H_ : h_row,
                            c_row, reserve_row};
      cpu::forward_row<Cell, T>(r, u.u0, u.u1, H_);
      if (!proj_) std::copy(h_row + u.u0, h_row + u.u1, out_row + u.u0);
    }
    if (proj_ && any_valid) {
      // h = m @ W_hr^T for every row (one slice covers all units), then the padded rows'
      // carried state over it again.
      projection_->apply(B_, m_.data(), H_, T(0), h_next, Hout_);
      for (int64_t b = 0; b < B_; ++b) {
        T* h_row = h_next + b * Hout_;
        if (t >= len_[b]) {
          std::copy(h_prev + b * Hout_, h_prev + (b + 1) * Hout_, h_row);
        } else {
          std::copy(h_row, h_row + Hout_, output + ((t * B_ + b) * D_ + d_) * Hout_);
        }
      }
    }
  }

  // The slice's columns of h and of the output: its units, or all Hout outputs of the
  // projection (whose one slice covers every unit).
  UnitSlice out_units(int i) const { return proj_ ? UnitSlice{0, Hout_} : slices_[i]; }

  // After the last step: h_n into a.h, where step T left it in the spare buffer.
  void finish() {
    if (T_ % 2 == 1) std::copy(h_buf_[1], h_buf_[1] + B_ * Hout_, h_buf_[0]);
  }

 private:
  // Packs slice i's weights (W_hh's and W_ih's rows of its gate columns) at its first step,
  // on the thread that runs that step: the slices pack in parallel, and each slice's panels
  // are first touched by the core that reads them at every step. Packing every slice here,
  // in the constructor, ran on one thread while the others waited: 13% of the samples of an
  // LSTM inference at B=1, H=256 (benchmarks/NOTES.md, CPU version 19). Steps of one slice
  // are ordered by the step team's barrier, so the later steps see what this one built. The
  // buffers are allocated on a team thread, outside the caller's thread-local state (inference
  // mode, profiler): harmless for plain scratch memory. An allocation that throws reaches the
  // caller through run_tasks (StepTeam stops the other threads' waiting).
  void pack_slice(int i) {
    const T* w_hh = a_.w_hh.data_ptr<T>() + d_ * GH_ * Hout_;  // [G*H, Hout]
    recurrent_[i].emplace(w_hh, Cell::kGates, H_, Hout_, slices_[i]);  // h @ W_hh^T
    gates_x_[i].emplace(a_, d_, GH_, slices_[i]);
  }

  const ForwardArgs& a_;
  const int d_;
  const std::vector<UnitSlice>& slices_;
  const int64_t T_, B_, D_, Hout_, GH_, H_;
  const bool proj_;
  const Lengths len_;
  const int64_t max_len_;
  const T* b_hh_;     // [G*H] or null
  T* c_;              // [B, H] cell state (LSTM), or null
  T* reserve_;        // [T, B, D, R], or null in inference
  Scratch<T> h_spare_;  // [B, Hout] the second h buffer
  T* h_buf_[2];
  Scratch<T> gates_h_;  // [B, G*H] h @ W_hh^T of this step, each slice its own columns
  // per slice, built by pack_slice at its first step
  std::vector<std::optional<SliceWeight<T>>> recurrent_ =
      std::vector<std::optional<SliceWeight<T>>>(slices_.size());
  std::vector<std::optional<InputGates<T>>> gates_x_ =
      std::vector<std::optional<InputGates<T>>>(slices_.size());
  std::optional<StepWeight<T>> projection_;      // W_hr (LSTM with proj_size)
  Scratch<T> m_;                                 // [B, H] o * tanh(c), before projection
};

// One direction's backward time loop, in units: unit u first finishes step u-1 (its slice's
// columns of carry += dgates_h @ W_hh, which needs every slice's dgates of that step), then
// runs the pointwise backward of step u for its slice's units. Steps are in the reverse of
// the forward's order; there are T + 1 units.
template <typename Cell, typename T>
class BackwardLoop {
 public:
  BackwardLoop(const BackwardArgs& a, int d, const std::vector<UnitSlice>& slices)
      : a_(a), d_(d), slices_(slices),
        T_(a.output.size(0)), B_(a.output.size(1)), D_(a.output.size(2)),
        Hout_(a.output.size(3)), GH_(a.w_hh.size(1)), H_(GH_ / Cell::kGates),
        proj_(a.w_hr.defined()), len_(lengths_of(a.lengths, T_)), max_len_(len_.max(B_)),
        dh_step_(proj_ ? 0 : B_ * Hout_), dm_(proj_ ? B_ * H_ : 0) {
    TORCH_INTERNAL_ASSERT(!proj_ || slices.size() == 1, "a projection needs every unit");
    if (proj_) {
      // dh @ W_hr, W_hr [Hout, H]
      projection_.emplace(a.w_hr.data_ptr<T>() + d * Hout_ * H_, H_, H_, Hout_, false);
    }
  }

  int64_t units() const { return T_ + 1; }

  void unit(int64_t u, int i) {
    if (u == 0) pack_slice(i);
    if (u > 0) finish_step(u - 1, i);
    if (u < T_) pointwise(u, i);
  }

  void finish() {}

 private:
  int64_t time_of(int64_t s) const { return d_ == 0 ? T_ - 1 - s : s; }

  // dgates_h @ W_hh[:, the slice's columns of h], packed at the slice's first unit on the
  // thread that runs it, as ForwardLoop::pack_slice does.
  void pack_slice(int i) {
    const T* w_hh = a_.w_hh.data_ptr<T>() + d_ * GH_ * Hout_;  // [G*H, Hout]
    const UnitSlice o = out_units(i);
    recurrent_[i].emplace(w_hh + o.u0, Hout_, o.size(), GH_, false);
  }

  // The slice's columns of h, dh and the output (ForwardLoop::out_units).
  UnitSlice out_units(int i) const { return proj_ ? UnitSlice{0, Hout_} : slices_[i]; }

  // carry[:, slice] += dgates_h[t] @ W_hh[:, slice]: the gradient reaching the previous
  // step's h.
  void finish_step(int64_t s, int i) {
    const int64_t t = time_of(s);
    if (t >= max_len_) return;
    T* dh = a_.dh.data_ptr<T>() + d_ * B_ * Hout_;
    const T* dgates_h = a_.dgates_h.data_ptr<T>() + (t * B_ * D_ + d_) * GH_;
    recurrent_[i]->apply(B_, dgates_h, D_ * GH_, T(1), dh + out_units(i).u0, Hout_);
  }

  void pointwise(int64_t s, int i) {
    using A = at::opmath_type<T>;
    const UnitSlice u = slices_[i];
    const UnitSlice o = out_units(i);
    const int64_t t = time_of(s);
    const int64_t R = Cell::kReserve * H_;
    const T* grad_output = a_.grad_output.data_ptr<T>();                 // [T, B, D, Hout]
    const T* output = a_.output.data_ptr<T>();                           // [T, B, D, Hout]
    const T* h0 = a_.h0.data_ptr<T>() + d_ * B_ * Hout_;                 // [B, Hout]
    const T* c0 = a_.c0.defined() ? a_.c0.data_ptr<T>() + d_ * B_ * H_ : nullptr;
    const T* reserve = a_.reserve.data_ptr<T>();                         // [T, B, D, R]
    T* dh = a_.dh.data_ptr<T>() + d_ * B_ * Hout_;   // [B, Hout] carry: dLoss/dh from step t+1
    T* dc = a_.dc.defined() ? a_.dc.data_ptr<T>() + d_ * B_ * H_ : nullptr;  // [B, H] carry
    T* dgates_x = a_.dgates_x.data_ptr<T>();                             // [T, B, D, G*H]
    T* dgates_h = a_.dgates_h.data_ptr<T>();
    T* dh_total = proj_ ? a_.dh_total.data_ptr<T>() : nullptr;           // [T, B, D, Hout]
    const bool split = Cell::kSplitHiddenGrad;

    for (int64_t b = 0; b < B_; ++b) {
      const int64_t row = (t * B_ + b) * D_ + d_;
      T* dh_row = proj_ ? dh_total + row * Hout_ : dh_step_.data() + b * Hout_;
      if (t >= len_[b]) {
        std::fill(dh_row + o.u0, dh_row + o.u1, T(0));
        for (int64_t g = 0; g < Cell::kGates; ++g) {
          const int64_t c0_ = row * GH_ + g * H_;
          std::fill(dgates_x + c0_ + u.u0, dgates_x + c0_ + u.u1, T(0));
          if (split) std::fill(dgates_h + c0_ + u.u0, dgates_h + c0_ + u.u1, T(0));
        }
        continue;
      }
      // This step's h feeds the output at t and the next step: both gradients meet here.
      T* carry = dh + b * Hout_;
      const T* g = grad_output + row * Hout_;
      for (int64_t k = o.u0; k < o.u1; ++k) {
        dh_row[k] = T(A(g[k]) + A(carry[k]));
        carry[k] = T(0);
      }
    }
    if (t >= max_len_) return;
    if (proj_) {
      projection_->apply(B_, dh_total + (t * B_ * D_ + d_) * Hout_, D_ * Hout_, T(0), dm_.data(),
                         H_);
    }
    for (int64_t b = 0; b < B_; ++b) {
      if (t >= len_[b]) continue;
      const int64_t row = (t * B_ + b) * D_ + d_;
      const int64_t prev = previous_step(d_, t, len_[b]);
      const int64_t prev_row = (prev * B_ + b) * D_ + d_;
      const T* c_prev = nullptr;
      if constexpr (Cell::kCellSlot >= 0) {
        c_prev = prev < 0 ? c0 + b * H_ : reserve + prev_row * R + Cell::kCellSlot * H_;
      }
      const BackwardRow<T> r{proj_ ? dm_.data() + b * H_ : dh_step_.data() + b * Hout_,
                             reserve + row * R,
                             output + row * Hout_,
                             prev < 0 ? h0 + b * Hout_ : output + prev_row * Hout_,
                             c_prev,
                             dc ? dc + b * H_ : nullptr,
                             dh + b * Hout_,
                             dgates_x + row * GH_,
                             dgates_h + row * GH_};
      cpu::backward_row<Cell, T>(r, u.u0, u.u1, H_);
    }
  }

  const BackwardArgs& a_;
  const int d_;
  const std::vector<UnitSlice>& slices_;
  const int64_t T_, B_, D_, Hout_, GH_, H_;
  const bool proj_;
  const Lengths len_;
  const int64_t max_len_;
  Scratch<T> dh_step_;  // [B, Hout] total dLoss/dh of this step (no projection)
  Scratch<T> dm_;       // [B, H] that gradient through W_hr (projection)
  // per slice: W_hh[:, its units], packed at the slice's first unit
  std::vector<std::optional<StepWeight<T>>> recurrent_ =
      std::vector<std::optional<StepWeight<T>>>(slices_.size());
  std::optional<StepWeight<T>> projection_;  // W_hr
};

Plan plan_of(const at::Tensor& output, const at::Tensor& w_hh, const at::Tensor& w_hr,
             int gates) {
  const int64_t D = output.size(2), Hout = output.size(3), H = w_hh.size(1) / gates;
  return cpu::plan_layer(D, gates, H, Hout, w_hh.element_size(), !w_hr.defined());
}

// Runs the directions' loops under `plan`: make(d) builds direction d's loop, whose units()
// steps run as loop.unit(step, slice) on a StepTeam per direction, then loop.finish().
template <typename Loop, typename Make>
void run_directions(int64_t D, const Plan& plan, const Make& make) {
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<std::unique_ptr<StepTeam>> teams;
  for (int d = 0; d < D; ++d) {
    loops.push_back(make(d));
    teams.push_back(std::make_unique<StepTeam>(loops.back()->units(), plan.slices));
  }
  auto run = [&](int d, int home) {
    teams[d]->run(home, [&](int64_t u, int i) { loops[d]->unit(u, i); });
  };
  if (plan.directions_concurrent) {
    cpu::run_tasks(int(D) * plan.slices, [&](int task) { run(task / plan.slices, task % plan.slices); });
  } else {
    cpu::run_tasks(plan.slices, [&](int home) {
      for (int d = 0; d < D; ++d) run(d, home);
    });
  }
  for (auto& loop : loops) loop->finish();
}

}  // namespace

namespace cpu {

void forward_recurrence_cpu(const ForwardArgs& given) {
  ForwardArgs a = given;
  const int64_t D = a.output.size(2), rows = a.output.size(0) * a.output.size(1);
  if (!a.gates_x.defined() && D == 1) {
    // One direction: project every step first, with every thread, in row blocks (two
    // directions project on their own threads as they go: InputGates).
    const int blocks = std::max(1, at::get_num_threads());
    const int64_t GH = a.w_ih.size(1);
    a.gates_x = driver_buffer({a.output.size(0), a.output.size(1), 1, GH}, a.output.options());
    const cpu::InputProjection projection(a, 0, {0, GH / num_gates(a.cell)});
    cpu::run_tasks(blocks, [&](int i) {
      const int64_t row0 = rows * i / blocks, row1 = rows * (i + 1) / blocks;
      projection.apply(row0, row1, a.gates_x.data_ptr<float>() + row0 * GH, GH);
    });
  }
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    const Plan plan = plan_of(a.output, a.w_hh, a.w_hr, Cell::kGates);
    const std::vector<UnitSlice> slices = cpu::unit_slices(a.w_hh.size(1) / Cell::kGates, plan.slices);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.output.scalar_type(),
                                    "birnn_forward_cpu", [&] {
      using Loop = ForwardLoop<Cell, scalar_t>;
      run_directions<Loop>(D, plan, [&](int d) { return std::make_unique<Loop>(a, d, slices); });
    });
  });
}

void backward_recurrence_cpu(const BackwardArgs& a) {
  const int64_t D = a.output.size(2);
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    const Plan plan = plan_of(a.output, a.w_hh, a.w_hr, Cell::kGates);
    const std::vector<UnitSlice> slices = cpu::unit_slices(a.w_hh.size(1) / Cell::kGates, plan.slices);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dgates_x.scalar_type(),
                                    "birnn_backward_cpu", [&] {
      using Loop = BackwardLoop<Cell, scalar_t>;
      run_directions<Loop>(D, plan, [&](int d) { return std::make_unique<Loop>(a, d, slices); });
    });
  });
  if (!a.grad_input.defined()) return;  // the op computes dx and the weight gradients
  // dx, dW_ih and dW_hh: every direction in row parts, one part per thread.
  const int parts = std::max<int>(1, at::get_num_threads() / int(D));
  // Direction 1's part of dx, summed into grad_input once both are done.
  const at::Tensor dx_1 = D == 2 ? at::empty_like(a.grad_input) : at::Tensor();
  if (dx_1.defined()) cpu::advise_huge_pages(dx_1);
  cpu::run_tasks(int(D) * parts, [&](int task) {
    const int d = task / parts;
    cpu::backward_gemms(a, d, task % parts, parts, (d == 0 ? a.grad_input : dx_1).data_ptr<float>());
  });
  if (dx_1.defined()) a.grad_input.add_(dx_1);
}

}  // namespace cpu
}  // namespace birnn
