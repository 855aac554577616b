// The standard CUDA path: the time loop of one layer on the host, both directions at once.
//
// What. The same algorithm as csrc/cpu/recurrence_cpu.cpp, step for step: per step and
// direction, one cuBLAS GEMM for the recurrent product (gates_h [B, G*H] = h @ W_hh^T), then
// ONE fused kernel that runs the cell's pointwise math (csrc/cells.h) with one thread per
// (b, j). An LSTM with proj_size adds a GEMM (m @ W_hr^T) and a small kernel per step.
// Backward mirrors it: the cell's derivative, then carry += dgates_h @ W_hh with beta = 1.
//
// Why this shape. It is the plain, obviously-correct baseline: the math is shared with the
// CPU (so a mismatch between devices is a driver bug, not a formula bug), the GEMM is
// cuBLAS's, and the time loop is host-driven (4 launches per step and direction). A
// persistent kernel that keeps W_hh on chip across steps would be faster at small batches;
// this file is what such a kernel must agree with. Streams, handles and the fork/join are the
// shared part's (common.cuh); the host issues step s of direction 0, then step s of
// direction 1, so both queues fill together.
//
// Carries. The state c and, in the backward, dh and dc are carried from step to step in the
// math type (float32 for half/bfloat16; cell_unit.cuh): the recurrent GEMMs write float32
// results and the cell kernels read and write float32 carries, while outputs, h (the GEMM's
// input, as in cuDNN) and the reserve stay in the layer's dtype.
//
// Lengths. `lengths` [B] int64 on the device, checked on the host by the op, whose longest
// value max_length the op passes down. Steps t >= lengths[b] are padding: their output,
// reserve and dgates rows are zero and the state carries through them unchanged; direction 1
// of sequence b starts at its own last step (previous_step() in csrc/birnn.h). Steps past
// max_length are padding for every sequence: their rows are zeroed in one fill each and the
// loop never visits them. Nothing here reads a value back to the host, so a layer can be
// captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <array>
#include <initializer_list>
#include <type_traits>

#include "cell_unit.cuh"
#include "common.cuh"
#include "dispatch.h"

namespace birnn {
namespace cuda {
namespace {

// ----------------------------------------------------------------------------------------
// kernels

// One forward step t of direction d. Per-direction pointers are already offset to d.
// C = Carry<T>: float for half/bfloat16, else T.
template <typename T>
struct ForwardStep {
  using C = Carry<T>;
  const int64_t* lengths;  // [B], or nullptr: every sequence is T long
  const T* gates_x;        // [T, B, D, G*H] W_ih x + b_ih
  C* gates_h;              // [B, G*H] h @ W_hh^T of this step (scratch, the GEMM's output)
  const T* b_hh;           // [G*H], or nullptr
  T* h;                    // [B, Hout] state: in h of the previous step, out h of this one
  C* c;                    // [B, H] LSTM cell state carry, or nullptr
  T* m;                    // [B, H] proj only: o * tanh(c), before the projection (scratch)
  T* output;               // [T, B, D, Hout]
  T* reserve;              // [T, B, D, kReserve*H] (training only)
  int64_t t, steps, B, D, H, Hout;  // steps: T, the padded length
  int d;
};

// The cell's forward for one (b, j). Without projection Hout == H, so thread j also writes
// output[t, b, d, j]; with projection it writes m and projection_commit_kernel the output.
template <typename Cell, typename T, bool kTraining, bool kProj>
__global__ void forward_cell_kernel(const ForwardStep<T> p) {
  using C = Carry<T>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= p.B * p.H) return;
  const int64_t b = idx / p.H, j = idx % p.H;
  const int64_t row = (p.t * p.B + b) * p.D + p.d;  // the (t, b, d) row of [T, B, D, *]
  T* reserve_row = kTraining ? p.reserve + row * Cell::kReserve * p.H : nullptr;

  if (p.t >= seq_len(p.lengths, b, p.steps)) {  // padding: zeros out, state untouched
    if constexpr (kProj) {
      p.m[b * p.H + j] = T(0);  // keeps the projection GEMM's input defined
    } else {
      p.output[row * p.Hout + j] = T(0);
    }
    if constexpr (kTraining) {
      for (int k = 0; k < Cell::kReserve; ++k) reserve_row[k * p.H + j] = T(0);
    }
    return;
  }
  UnitForward<Cell, C> u;
  const T* gates_x = p.gates_x + row * Cell::kGates * p.H;
  const C* gates_h = p.gates_h + b * Cell::kGates * p.H;
  for (int k = 0; k < Cell::kGates; ++k) {
    u.gates_x[k] = C(gates_x[k * p.H + j]);
    u.gates_h[k] = gates_h[k * p.H + j];
    u.b_hh[k] = p.b_hh != nullptr ? C(p.b_hh[k * p.H + j]) : C(0);
  }
  if constexpr (!kProj) u.h_prev = C(p.h[b * p.Hout + j]);  // Hout == H
  if (p.c != nullptr) u.c_prev = p.c[b * p.H + j];
  u.template run<kTraining>();

  if (p.c != nullptr) p.c[b * p.H + j] = u.c;
  if constexpr (kProj) {
    p.m[b * p.H + j] = T(u.h);
  } else {
    p.h[b * p.Hout + j] = T(u.h);
    p.output[row * p.Hout + j] = T(u.h);
  }
  if constexpr (kTraining) {
    for (int k = 0; k < Cell::kReserve; ++k) reserve_row[k * p.H + j] = T(u.reserve[k]);
  }
}

// Projection, after the GEMM wrote m @ W_hr^T into output[t, :, d, :]: valid rows become the
// new state h, padded rows are set back to zero (and h keeps its value).
template <typename T>
__global__ void projection_commit_kernel(const ForwardStep<T> p) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= p.B * p.Hout) return;
  const int64_t b = idx / p.Hout, k = idx % p.Hout;
  T* out = p.output + ((p.t * p.B + b) * p.D + p.d) * p.Hout + k;
  if (p.t >= seq_len(p.lengths, b, p.steps)) {
    *out = T(0);
  } else {
    p.h[b * p.Hout + k] = *out;
  }
}

// One backward step t of direction d. Per-direction pointers are already offset to d.
template <typename T>
struct BackwardStep {
  using C = Carry<T>;
  const int64_t* lengths;  // [B], or nullptr
  const T* grad_output;    // [T, B, D, Hout] dLoss/doutput
  const T* output;         // [T, B, D, Hout] the forward's h of every step
  const T* h0;             // [B, Hout]
  const T* c0;             // [B, H] (LSTM), or nullptr
  const T* reserve;        // [T, B, D, kReserve*H]
  C* dm;                   // [B, H] proj only: dLoss/dm of this step (scratch, dh_total @ W_hr)
  C* dh;                   // [B, Hout] carry: dLoss/dh reaching this step from step t+1
  C* dc;                   // [B, H] carry of dLoss/dc (LSTM), or nullptr
  T* dgates_x;             // [T, B, D, G*H]
  T* dgates_h;             // [T, B, D, G*H] (== dgates_x unless the cell splits them)
  T* dh_total;             // [T, B, D, Hout] proj only
  int64_t t, steps, B, D, H, Hout;  // steps: T, the padded length
  int d;
};

// Proj only, one thread per (b, k < Hout): dh_total[t, b, d] = grad_output + carry, and the
// carry restarts from zero; padded rows get zero and leave the carry alone.
template <typename T>
__global__ void gather_dh_kernel(const BackwardStep<T> p) {
  using C = Carry<T>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= p.B * p.Hout) return;
  const int64_t b = idx / p.Hout, k = idx % p.Hout;
  const int64_t at = ((p.t * p.B + b) * p.D + p.d) * p.Hout + k;
  if (p.t >= seq_len(p.lengths, b, p.steps)) {
    p.dh_total[at] = T(0);
    return;
  }
  C* carry = p.dh + b * p.Hout + k;
  p.dh_total[at] = T(C(p.grad_output[at]) + *carry);
  *carry = C(0);
}

// The cell's backward for one (b, j). Without projection it first gathers dh of the step
// itself (Hout == H, so thread j owns dh[b, j]). Afterwards the carry holds zero, or for a
// GRU the direct path z * dh, ready for carry += dgates_h @ W_hh.
template <typename Cell, typename T, bool kProj>
__global__ void backward_cell_kernel(const BackwardStep<T> p) {
  using C = Carry<T>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= p.B * p.H) return;
  const int64_t b = idx / p.H, j = idx % p.H;
  const int64_t GH = Cell::kGates * p.H, R = Cell::kReserve * p.H;
  const int64_t len = seq_len(p.lengths, b, p.steps);
  const int64_t row = (p.t * p.B + b) * p.D + p.d;
  T* dgates_x_row = p.dgates_x + row * GH;
  T* dgates_h_row = p.dgates_h + row * GH;

  if (p.t >= len) {  // padding: no gradient flows into its gates
    for (int k = 0; k < Cell::kGates; ++k) {
      dgates_x_row[k * p.H + j] = T(0);
      if constexpr (Cell::kSplitHiddenGrad) dgates_h_row[k * p.H + j] = T(0);
    }
    return;
  }
  UnitBackward<Cell, C> u;
  C* carry = p.dh + b * p.Hout;
  const int64_t prev = previous_step(p.d, p.t, len);
  const int64_t prev_row = (prev * p.B + b) * p.D + p.d;
  if constexpr (kProj) {
    u.dh = p.dm[b * p.H + j];  // dLoss/dm, from the projection's GEMM
  } else {
    // This step's h feeds the output at t and the next step: both gradients meet here.
    u.dh = C(p.grad_output[row * p.Hout + j]) + carry[j];
    u.h = C(p.output[row * p.Hout + j]);
    u.h_prev = C(prev < 0 ? p.h0[b * p.Hout + j] : p.output[prev_row * p.Hout + j]);
  }
  const T* reserve_row = p.reserve + row * R;
  for (int k = 0; k < Cell::kReserve; ++k) u.reserve[k] = C(reserve_row[k * p.H + j]);
  if constexpr (Cell::kCellSlot >= 0) {
    u.c_prev = C(prev < 0 ? p.c0[b * p.H + j]
                          : p.reserve[prev_row * R + Cell::kCellSlot * p.H + j]);
  }
  if (p.dc != nullptr) u.dc = p.dc[b * p.H + j];
  u.run();

  for (int k = 0; k < Cell::kGates; ++k) {
    dgates_x_row[k * p.H + j] = T(u.dgates_x[k]);
    if constexpr (Cell::kSplitHiddenGrad) dgates_h_row[k * p.H + j] = T(u.dgates_h[k]);
  }
  if (p.dc != nullptr) p.dc[b * p.H + j] = u.dc;
  // The carry restarts from the direct path (zero except for a GRU); with a projection
  // gather_dh_kernel has already reset it.
  if constexpr (!kProj) carry[j] = u.dh_prev;
}

// ----------------------------------------------------------------------------------------
// launchers

// What one direction's steps are issued with.
struct Lane {
  cudaStream_t stream;
  cublasHandle_t handle;  // bound to `stream` (DirectionFork)
  const GemmPrecision* prec;
};

// Issues forward step s (of max_len steps) of direction p.d on its lane.
template <typename Cell, typename T, bool kTraining, bool kProj>
void forward_step(ForwardStep<T> p, const T* w_hh, const T* w_hr, int64_t s, int64_t max_len,
                  const Lane& lane) {
  using C = Carry<T>;
  const int64_t GH = Cell::kGates * p.H;
  p.t = p.d == 0 ? s : max_len - 1 - s;
  // gates_h [B, G*H] = h [B, Hout] @ W_hh[G*H, Hout]^T
  gemm_nt<T, C>(lane.handle, *lane.prec, p.B, GH, p.Hout, p.h, p.Hout, w_hh, p.Hout, 0,
                p.gates_h, GH);
  launch_1d(forward_cell_kernel<Cell, T, kTraining, kProj>, p.B * p.H, lane.stream, p);
  if constexpr (kProj) {
    // output[t, :, d, :] [B, Hout] (row stride D*Hout) = m [B, H] @ W_hr[Hout, H]^T
    T* out_rows = p.output + (p.t * p.B * p.D + p.d) * p.Hout;
    gemm_nt<T, T>(lane.handle, *lane.prec, p.B, p.Hout, p.H, p.m, p.H, w_hr, p.H, 0, out_rows,
                  p.D * p.Hout);
    launch_1d(projection_commit_kernel<T>, p.B * p.Hout, lane.stream, p);
  }
}

// Issues backward step s of direction p.d: the forward's steps in reverse order.
template <typename Cell, typename T, bool kProj>
void backward_step(BackwardStep<T> p, const T* w_hh, const T* w_hr, int64_t s, int64_t max_len,
                   const Lane& lane) {
  using C = Carry<T>;
  const int64_t GH = Cell::kGates * p.H;
  p.t = p.d == 0 ? max_len - 1 - s : s;
  if constexpr (kProj) {
    launch_1d(gather_dh_kernel<T>, p.B * p.Hout, lane.stream, p);
    // dm [B, H] = dh_total[t, :, d, :] [B, Hout] (row stride D*Hout) @ W_hr[Hout, H]
    const T* dh_rows = p.dh_total + (p.t * p.B * p.D + p.d) * p.Hout;
    gemm_nn<T, C>(lane.handle, *lane.prec, p.B, p.H, p.Hout, dh_rows, p.D * p.Hout, w_hr, p.H,
                  0, p.dm, p.H);
  }
  launch_1d(backward_cell_kernel<Cell, T, kProj>, p.B * p.H, lane.stream, p);
  // carry [B, Hout] += dgates_h[t, :, d, :] [B, G*H] (row stride D*G*H) @ W_hh[G*H, Hout]:
  // the gradient reaching the previous step's h.
  const T* dgates_h_rows = p.dgates_h + (p.t * p.B * p.D + p.d) * GH;
  gemm_nn<T, C>(lane.handle, *lane.prec, p.B, p.Hout, GH, dgates_h_rows, p.D * GH, w_hh, p.Hout,
                1, p.dh, p.Hout);
}

// Runs issue(d, s, lane) for s = 0..steps-1, direction 0 then 1 at each s, so both direction
// streams fill together; each direction's lane is its forked stream and bound cuBLAS handle,
// with the precision torch's flags give now.
template <typename Issue>
void run_directions(int64_t D, int64_t steps, at::ScalarType dtype, const Issue& issue) {
  const GemmPrecision prec = GemmPrecision::from_torch();
  DirectionFork fork(static_cast<int>(D), dtype, prec);
  for (int64_t s = 0; s < steps; ++s) {
    for (int d = 0; d < D; ++d) issue(d, s, Lane{fork.stream(d), fork.handle(d), &prec});
  }
  fork.join();
}

// Rows [max_len, T) of each [T, ...] buffer, which no step visits: zero for every sequence.
void zero_tail(int64_t max_len, std::initializer_list<at::Tensor> buffers) {
  for (const at::Tensor& t : buffers) {
    if (t.defined() && max_len < t.size(0)) t.narrow(0, max_len, t.size(0) - max_len).zero_();
  }
}

template <typename Cell, typename T, bool kTraining, bool kProj>
void forward_layer(const ForwardArgs& a) {
  using C = Carry<T>;
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  const int64_t max_len = a.max_length;
  TORCH_INTERNAL_ASSERT(kProj || Hout == H, "birnn_ext: Hout != H without a projection");
  TORCH_INTERNAL_ASSERT(max_len >= 0 && max_len <= T_, "birnn_ext: bad max_length ", max_len);
  check_sizes(B, H, Hout, D, Cell::kGates);
  zero_tail(max_len, {a.output, a.reserve});
  if (max_len == 0) return;  // no valid step anywhere: h_n = h0, c_n = c0
  // Scratch and carries, allocated before the fork (common.cuh): [D, B, G*H], [D, B, H].
  const auto carry_opts = a.gates_x.options().dtype(at::toOpMathType(a.gates_x.scalar_type()));
  at::Tensor gates_h = at::empty({D, B, GH}, carry_opts);
  at::Tensor m = kProj ? at::empty({D, B, H}, a.gates_x.options()) : at::Tensor();
  const CarryBuffer c(a.c);

  std::array<ForwardStep<T>, 2> dirs{};  // per direction
  for (int d = 0; d < D; ++d) {
    ForwardStep<T>& p = dirs[d];
    p.lengths = ptr_or_null<int64_t>(a.lengths, 0);
    p.gates_x = a.gates_x.data_ptr<T>();
    p.gates_h = gates_h.data_ptr<C>() + d * B * GH;
    p.b_hh = ptr_or_null<T>(a.b_hh, d * GH);
    p.h = a.h.data_ptr<T>() + d * B * Hout;
    p.c = c.ptr<C>(d * B * H);
    p.m = kProj ? m.data_ptr<T>() + d * B * H : nullptr;
    p.output = a.output.data_ptr<T>();
    p.reserve = kTraining ? a.reserve.data_ptr<T>() : nullptr;
    p.steps = T_, p.B = B, p.D = D, p.H = H, p.Hout = Hout, p.d = d;
  }
  const T* w_hh = a.w_hh.data_ptr<T>();       // [D, G*H, Hout]
  const T* w_hr = ptr_or_null<T>(a.w_hr, 0);  // [D, Hout, H]
  run_directions(D, max_len, a.gates_x.scalar_type(), [&](int d, int64_t s, const Lane& lane) {
    forward_step<Cell, T, kTraining, kProj>(dirs[d], w_hh + d * GH * Hout,
                                            kProj ? w_hr + d * Hout * H : nullptr, s, max_len,
                                            lane);
  });
  c.write_back();
}

template <typename Cell, typename T, bool kProj>
void backward_layer(const BackwardArgs& a) {
  using C = Carry<T>;
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  const int64_t max_len = a.max_length;
  TORCH_INTERNAL_ASSERT(kProj || Hout == H, "birnn_ext: Hout != H without a projection");
  TORCH_INTERNAL_ASSERT(Cell::kSplitHiddenGrad || a.dgates_h.is_same(a.dgates_x));
  TORCH_INTERNAL_ASSERT(max_len >= 0 && max_len <= T_, "birnn_ext: bad max_length ", max_len);
  check_sizes(B, H, Hout, D, Cell::kGates);
  zero_tail(max_len, {a.dgates_x, Cell::kSplitHiddenGrad ? a.dgates_h : at::Tensor(),
                      kProj ? a.dh_total : at::Tensor()});
  if (max_len == 0) return;  // no valid step: dh0 = dh_n, dc0 = dc_n
  // Scratch and carries, allocated before the fork: dLoss/dm [D, B, H] with a projection.
  const auto carry_opts = a.dgates_x.options().dtype(at::toOpMathType(a.dgates_x.scalar_type()));
  at::Tensor dm = kProj ? at::empty({D, B, H}, carry_opts) : at::Tensor();
  const CarryBuffer dh(a.dh), dc(a.dc);

  std::array<BackwardStep<T>, 2> dirs{};  // per direction
  for (int d = 0; d < D; ++d) {
    BackwardStep<T>& p = dirs[d];
    p.lengths = ptr_or_null<int64_t>(a.lengths, 0);
    p.grad_output = a.grad_output.data_ptr<T>();
    p.output = a.output.data_ptr<T>();
    p.h0 = a.h0.data_ptr<T>() + d * B * Hout;
    p.c0 = ptr_or_null<T>(a.c0, d * B * H);
    p.reserve = a.reserve.data_ptr<T>();
    p.dm = kProj ? dm.data_ptr<C>() + d * B * H : nullptr;
    p.dh = dh.ptr<C>(d * B * Hout);
    p.dc = dc.ptr<C>(d * B * H);
    p.dgates_x = a.dgates_x.data_ptr<T>();
    p.dgates_h = a.dgates_h.data_ptr<T>();
    p.dh_total = kProj ? a.dh_total.data_ptr<T>() : nullptr;
    p.steps = T_, p.B = B, p.D = D, p.H = H, p.Hout = Hout, p.d = d;
  }
  const T* w_hh = a.w_hh.data_ptr<T>();       // [D, G*H, Hout]
  const T* w_hr = ptr_or_null<T>(a.w_hr, 0);  // [D, Hout, H]
  run_directions(D, max_len, a.dgates_x.scalar_type(), [&](int d, int64_t s, const Lane& lane) {
    backward_step<Cell, T, kProj>(dirs[d], w_hh + d * GH * Hout,
                                  kProj ? w_hr + d * Hout * H : nullptr, s, max_len, lane);
  });
  dh.write_back();
  dc.write_back();
}

// Turns the run-time flags into template arguments; the projection exists for LSTM only.
template <typename Cell, typename T>
void forward_flags(const ForwardArgs& a) {
  const bool training = a.reserve.defined(), proj = a.w_hr.defined();
  if constexpr (std::is_same_v<Cell, LstmCell>) {
    if (proj) {
      return training ? forward_layer<Cell, T, true, true>(a)
                      : forward_layer<Cell, T, false, true>(a);
    }
  }
  TORCH_INTERNAL_ASSERT(!proj, "birnn_ext: a projection is LSTM-only");
  return training ? forward_layer<Cell, T, true, false>(a)
                  : forward_layer<Cell, T, false, false>(a);
}

template <typename Cell, typename T>
void backward_flags(const BackwardArgs& a) {
  if constexpr (std::is_same_v<Cell, LstmCell>) {
    if (a.w_hr.defined()) return backward_layer<Cell, T, true>(a);
  }
  TORCH_INTERNAL_ASSERT(!a.w_hr.defined(), "birnn_ext: a projection is LSTM-only");
  backward_layer<Cell, T, false>(a);
}

}  // namespace

void standard_forward(const ForwardArgs& a) {
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.gates_x.scalar_type(),
                                    "birnn_standard_forward", [&] {
      forward_flags<Cell, scalar_t>(a);
    });
  });
}

void standard_backward(const BackwardArgs& a) {
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dgates_x.scalar_type(),
                                    "birnn_standard_backward", [&] {
      backward_flags<Cell, scalar_t>(a);
    });
  });
}

}  // namespace cuda
}  // namespace birnn
