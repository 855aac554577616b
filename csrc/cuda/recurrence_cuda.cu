// CUDA recurrence: the time loop of one layer, both directions at once.
//
// What. The same algorithm as csrc/cpu/recurrence_cpu.cpp, step for step: per step and
// direction, one cuBLAS GEMM for the recurrent product (gates_h [B, G*H] = h @ W_hh^T), then
// ONE fused kernel that runs the cell's pointwise math (csrc/cells.h) with one thread per
// (b, j). An LSTM with proj_size adds a GEMM (m @ W_hr^T) and a small kernel per step.
// Backward mirrors it: gather dh of the step, the cell's derivative, then
// carry += dgates_h @ W_hh with beta = 1.
//
// Why this shape. It is the plain, obviously-correct baseline: the math is shared with the
// CPU (so a mismatch between devices is a driver bug, not a formula bug), the GEMM is
// cuBLAS's (tensor cores, TF32 as torch is set), and the time loop is host-driven. A
// persistent kernel that keeps W_hh in shared memory across steps would be faster for small
// batches; this file is what such a kernel must agree with.
//
// Concurrency. The two directions never read each other's state, so each runs on its own
// stream from PyTorch's pool (two per host thread, drawn once), forked from the current
// stream with an event and joined back with events. The host issues step s of direction 0,
// then step s of direction 1, so both queues fill together. Scratch buffers are allocated on
// the current stream BEFORE the fork and are freed after the join: the caching allocator
// hands a freed block only to later work on the current stream, which the join orders after
// every side-stream use, so no recordStream is needed.
//
// CUDA graphs. Nothing here syncs with the host except the lengths check, which is skipped
// while the current stream is capturing (the kernels clamp lengths to [0, T] instead).
// Because the host never learns the longest length, fully padded steps are not skipped as
// the CPU driver skips them; they compute zeros that leave every result unchanged.
//
// Lengths. Steps t >= lengths[b] are padding: their output, reserve and dgates rows are
// written as zero and the state carries through them unchanged; direction 1 of sequence b
// starts at its own last step (previous_step() in csrc/birnn.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <climits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../birnn.h"
#include "../register.h"

namespace birnn {
namespace {

// ----------------------------------------------------------------------------------------
// kernels

// Length of sequence b, clamped into [0, T] so that bad lengths under graph capture (where
// the host cannot check them) can never index outside the buffers.
__device__ __forceinline__ int64_t seq_len(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t len = lengths[b];
  return len < 0 ? 0 : (len > T ? T : len);
}

// One forward step t of direction d. Per-direction pointers are already offset to d.
template <typename T>
struct ForwardStep {
  const int64_t* lengths;  // [B], or nullptr: every sequence is T long
  const T* gates_x;        // [T, B, D, G*H] W_ih x + b_ih
  T* gates_h;              // [B, G*H] h @ W_hh^T of this step (scratch, the GEMM's output)
  const T* b_hh;           // [G*H], or nullptr
  T* h;                    // [B, Hout] state: in h of the previous step, out h of this one
  T* c;                    // [B, H] LSTM state, or nullptr
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
  using A = at::opmath_type<T>;
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
  T* h_row = p.h + b * p.Hout;
  T* c_row = p.c != nullptr ? p.c + b * p.H : nullptr;
  const ForwardRow<T> r{p.gates_x + row * Cell::kGates * p.H,
                        p.gates_h + b * Cell::kGates * p.H,
                        p.b_hh,
                        h_row,
                        c_row,
                        kProj ? p.m + b * p.H : h_row,
                        c_row,
                        reserve_row};
  Cell::template forward<T, A>(r, j, p.H);
  if constexpr (!kProj) p.output[row * p.Hout + j] = h_row[j];
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
  const int64_t* lengths;  // [B], or nullptr
  const T* grad_output;    // [T, B, D, Hout] dLoss/doutput
  const T* output;         // [T, B, D, Hout] the forward's h of every step
  const T* h0;             // [B, Hout]
  const T* c0;             // [B, H] (LSTM), or nullptr
  const T* reserve;        // [T, B, D, kReserve*H]
  T* dm;                   // [B, H] proj only: dLoss/dm of this step (scratch, dh_total @ W_hr)
  T* dh_step;              // [B, Hout] no proj: dLoss/dh of this step (scratch)
  T* dh;                   // [B, Hout] carry: dLoss/dh reaching this step from step t+1
  T* dc;                   // [B, H] carry of dLoss/dc (LSTM), or nullptr
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
  using A = at::opmath_type<T>;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= p.B * p.Hout) return;
  const int64_t b = idx / p.Hout, k = idx % p.Hout;
  const int64_t at = ((p.t * p.B + b) * p.D + p.d) * p.Hout + k;
  if (p.t >= seq_len(p.lengths, b, p.steps)) {
    p.dh_total[at] = T(0);
    return;
  }
  T* carry = p.dh + b * p.Hout + k;
  p.dh_total[at] = T(A(p.grad_output[at]) + A(*carry));
  *carry = T(0);
}

// The cell's backward for one (b, j). Without projection it first gathers dh of the step
// itself (Hout == H, so thread j owns dh[b, j]). Afterwards the carry holds zero, or for a
// GRU the direct path z * dh, ready for carry += dgates_h @ W_hh.
template <typename Cell, typename T, bool kProj>
__global__ void backward_cell_kernel(const BackwardStep<T> p) {
  using A = at::opmath_type<T>;
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
  T* carry = p.dh + b * p.Hout;
  if constexpr (!kProj) {
    // This step's h feeds the output at t and the next step: both gradients meet here.
    p.dh_step[b * p.Hout + j] = T(A(p.grad_output[row * p.Hout + j]) + A(carry[j]));
    carry[j] = T(0);
  }
  const int64_t prev = previous_step(p.d, p.t, len);
  const int64_t prev_row = (prev * p.B + b) * p.D + p.d;
  const T* c_prev = nullptr;
  if constexpr (Cell::kCellSlot >= 0) {
    c_prev = prev < 0 ? p.c0 + b * p.H : p.reserve + prev_row * R + Cell::kCellSlot * p.H;
  }
  const BackwardRow<T> r{kProj ? p.dm + b * p.H : p.dh_step + b * p.Hout,
                         p.reserve + row * R,
                         p.output + row * p.Hout,
                         prev < 0 ? p.h0 + b * p.Hout : p.output + prev_row * p.Hout,
                         c_prev,
                         p.dc != nullptr ? p.dc + b * p.H : nullptr,
                         carry,
                         dgates_x_row,
                         dgates_h_row};
  Cell::template backward<T, A>(r, j, p.H);
}

// ----------------------------------------------------------------------------------------
// launchers

// Launches kernel over n threads (one per (b, j) or (b, k)) on stream, and checks it.
template <typename Args>
void launch(void (*kernel)(Args), int64_t n, cudaStream_t stream, const Args& args) {
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  TORCH_INTERNAL_ASSERT(blocks > 0 && blocks <= INT_MAX, "birnn_ext: bad grid for ", n);
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T> struct CudaDataType;
template <> struct CudaDataType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaDataType<double> { static constexpr cudaDataType_t value = CUDA_R_64F; };
template <> struct CudaDataType<at::Half> { static constexpr cudaDataType_t value = CUDA_R_16F; };
template <> struct CudaDataType<at::BFloat16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};

// Column-major cuBLAS GEMM on the CURRENT stream: C = op(A) op(B) + beta C, accumulating in
// at::opmath_type<T> (float for half/bfloat16). Float uses TF32 exactly when torch allows it
// for matmuls, and half/bfloat16 honour torch's reduced-precision-reduction switches, so the
// recurrent product rounds like torch's own mm. at::cuda::blas::gemm would do the same but
// is not exported from libtorch_cuda.
template <typename T>
void cublas_gemm(cublasOperation_t op_a, cublasOperation_t op_b, int64_t m, int64_t n,
                 int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 at::opmath_type<T> beta, T* c, int64_t ldc) {
  using A = at::opmath_type<T>;
  const A alpha = A(1);
  // getCurrentCUDABlasHandle binds the handle to the current stream (and its workspace).
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if constexpr (std::is_same_v<T, double>) {
    compute = CUBLAS_COMPUTE_64F;
  } else if constexpr (std::is_same_v<T, float>) {
    if (at::globalContext().allowTF32CuBLAS()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  }
  bool strict_reduction = false;
  if constexpr (std::is_same_v<T, at::Half>) {
    strict_reduction = at::globalContext().allowFP16ReductionCuBLAS() !=
                       at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  } else if constexpr (std::is_same_v<T, at::BFloat16>) {
    strict_reduction = at::globalContext().allowBF16ReductionCuBLAS() !=
                       at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  }
  if (strict_reduction) {
    TORCH_CUDABLAS_CHECK(cublasSetMathMode(
        handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                          CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  }
  constexpr cudaDataType_t type = CudaDataType<T>::value;
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, op_a, op_b, static_cast<int>(m),
                                    static_cast<int>(n), static_cast<int>(k), &alpha, a, type,
                                    static_cast<int>(lda), b, type, static_cast<int>(ldb), &beta,
                                    c, type, static_cast<int>(ldc), compute,
                                    CUBLAS_GEMM_DEFAULT));
  // As torch does after its own gemm; getCurrentCUDABlasHandle sets the mode again anyway.
  if (strict_reduction) TORCH_CUDABLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
}

// Row-major C[M, N] = A[M, K] @ B[N, K]^T + beta * C  (leading dims in elements), which is
// column-major C^T = B A^T: the same mapping as csrc/cpu/gemm_cpu.h.
template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             at::opmath_type<T> beta, T* C, int64_t ldc) {
  cublas_gemm<T>(CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, B, ldb, A, lda, beta, C, ldc);
}

// Row-major C[M, N] = A[M, K] @ B[K, N] + beta * C
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             at::opmath_type<T> beta, T* C, int64_t ldc) {
  cublas_gemm<T>(CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, B, ldb, A, lda, beta, C, ldc);
}

// Issues forward step s of direction d on the current stream.
template <typename Cell, typename T, bool kTraining, bool kProj>
void forward_step(ForwardStep<T> p, const T* w_hh, const T* w_hr, int64_t s) {
  const int64_t GH = Cell::kGates * p.H;
  p.t = p.d == 0 ? s : p.steps - 1 - s;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // gates_h [B, G*H] = h [B, Hout] @ W_hh[G*H, Hout]^T
  gemm_nt<T>(p.B, GH, p.Hout, p.h, p.Hout, w_hh, p.Hout, 0, p.gates_h, GH);
  launch(forward_cell_kernel<Cell, T, kTraining, kProj>, p.B * p.H, stream, p);
  if constexpr (kProj) {
    // output[t, :, d, :] [B, Hout] (row stride D*Hout) = m [B, H] @ W_hr[Hout, H]^T
    T* out_rows = p.output + (p.t * p.B * p.D + p.d) * p.Hout;
    gemm_nt<T>(p.B, p.Hout, p.H, p.m, p.H, w_hr, p.H, 0, out_rows, p.D * p.Hout);
    launch(projection_commit_kernel<T>, p.B * p.Hout, stream, p);
  }
}

// Issues backward step s of direction d on the current stream. Backward visits the steps in
// the reverse of the forward's order.
template <typename Cell, typename T, bool kProj>
void backward_step(BackwardStep<T> p, const T* w_hh, const T* w_hr, int64_t s) {
  const int64_t GH = Cell::kGates * p.H;
  p.t = p.d == 0 ? p.steps - 1 - s : s;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if constexpr (kProj) {
    launch(gather_dh_kernel<T>, p.B * p.Hout, stream, p);
    // dm [B, H] = dh_total[t, :, d, :] [B, Hout] (row stride D*Hout) @ W_hr[Hout, H]
    const T* dh_rows = p.dh_total + (p.t * p.B * p.D + p.d) * p.Hout;
    gemm_nn<T>(p.B, p.H, p.Hout, dh_rows, p.D * p.Hout, w_hr, p.H, 0, p.dm, p.H);
  }
  launch(backward_cell_kernel<Cell, T, kProj>, p.B * p.H, stream, p);
  // carry [B, Hout] += dgates_h[t, :, d, :] [B, G*H] (row stride D*G*H) @ W_hh[G*H, Hout]:
  // the gradient reaching the previous step's h.
  const T* dgates_h_rows = p.dgates_h + (p.t * p.B * p.D + p.d) * GH;
  gemm_nn<T>(p.B, p.Hout, GH, dgates_h_rows, p.D * GH, w_hh, p.Hout, 1, p.dh, p.Hout);
}

// The two directions' streams and the fork/join events, per host thread and device, made
// once and then reused by every call on that thread.
// - Streams: drawn from PyTorch's pool the first time only. The pool hands streams out
//   round-robin and cuBLAS keeps one workspace per (handle, stream), so fresh streams per
//   call would pile up workspaces (tens of MiB each on Hopper) for up to 32 pool streams.
// - Events: reuse is safe because cudaStreamWaitEvent waits for the record made before it,
//   whatever is recorded into the event later.
// thread_local, so two host threads never share an event (nor, usually, a stream); never
// freed, so no cudaEventDestroy runs while CUDA shuts down at exit.
struct DirectionStreams {
  std::array<c10::cuda::CUDAStream, 2> streams;
  at::cuda::CUDAEvent forked, joined[2];
};

DirectionStreams& direction_streams(c10::DeviceIndex device) {
  thread_local auto* per_device =
      new std::vector<std::unique_ptr<DirectionStreams>>(c10::cuda::device_count());
  std::unique_ptr<DirectionStreams>& ds = per_device->at(device);
  if (!ds) {
    ds.reset(new DirectionStreams{{c10::cuda::getStreamFromPool(false, device),
                                   c10::cuda::getStreamFromPool(false, device)}});
  }
  return *ds;
}

// Runs issue(d, s) for s = 0..steps-1, alternating directions, with direction d's work on its
// own pooled stream (made current while its work is issued) when there are two directions.
template <typename Issue>
void run_directions(int64_t D, int64_t steps, const Issue& issue) {
  if (D == 1) {
    for (int64_t s = 0; s < steps; ++s) issue(0, s);
    return;
  }
  const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
  DirectionStreams& ds = direction_streams(current.device_index());
  const auto& streams = ds.streams;
  ds.forked.record(current);  // everything the caller queued (gates_x, h0, ...) comes first
  for (const auto& stream : streams) ds.forked.block(stream);
  const auto join = [&] {
    for (int d = 0; d < 2; ++d) {
      ds.joined[d].record(streams[d]);
      ds.joined[d].block(current);
    }
  };
  try {
    for (int64_t s = 0; s < steps; ++s) {
      for (int d = 0; d < 2; ++d) {
        const c10::cuda::CUDAStreamGuard guard(streams[d]);
        issue(d, s);
      }
    }
  } catch (...) {
    join();  // even on error, nothing the caller frees may still be in use on a side stream
    throw;
  }
  join();
}

// The CPU path's lengths check, done on the host when that is allowed: it reads two numbers
// back (a sync), which a stream under CUDA graph capture must not do.
void check_lengths(const at::Tensor& lengths, int64_t T) {
  if (!lengths.defined() || lengths.numel() == 0) return;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return;  // the kernels clamp instead
  }
  const auto [lo_t, hi_t] = at::aminmax(lengths);
  const at::Tensor lo_hi = at::stack({lo_t, hi_t}).cpu();
  const int64_t lo = lo_hi.data_ptr<int64_t>()[0], hi = lo_hi.data_ptr<int64_t>()[1];
  TORCH_CHECK(lo >= 0 && hi <= T, "birnn_ext: lengths must lie in [0, T=", T,
              "], got values in [", lo, ", ", hi, "]");
}

// What the kernels and cuBLAS (int sizes, leading dims >= 1) need of the layer's sizes.
void check_sizes(int64_t B, int64_t H, int64_t Hout, int64_t D, int64_t G) {
  TORCH_CHECK(H > 0 && Hout > 0, "birnn_ext: hidden_size must be greater than zero");
  TORCH_CHECK(D * G * H <= INT_MAX && B * H <= INT_MAX && B * Hout <= INT_MAX,
              "birnn_ext: B = ", B, ", D * G * H = ", D * G * H,
              " is too large for the CUDA recurrence");
}

template <typename T>
T* ptr_or_null(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<T>() + offset : nullptr;
}

template <typename Cell, typename T, bool kTraining, bool kProj>
void forward_layer(const ForwardArgs& a, const at::Tensor& lengths) {
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  TORCH_INTERNAL_ASSERT(kProj || Hout == H, "birnn_ext: Hout != H without a projection");
  check_sizes(B, H, Hout, D, Cell::kGates);
  // Scratch, allocated before the fork (see the top of the file): [D, B, G*H] and [D, B, H].
  at::Tensor gates_h = at::empty({D, B, GH}, a.gates_x.options());
  at::Tensor m = kProj ? at::empty({D, B, H}, a.gates_x.options()) : at::Tensor();

  std::array<ForwardStep<T>, 2> dirs{};  // per direction
  for (int d = 0; d < D; ++d) {
    ForwardStep<T>& p = dirs[d];
    p.lengths = ptr_or_null<int64_t>(lengths, 0);
    p.gates_x = a.gates_x.data_ptr<T>();
    p.gates_h = gates_h.data_ptr<T>() + d * B * GH;
    p.b_hh = ptr_or_null<T>(a.b_hh, d * GH);
    p.h = a.h.data_ptr<T>() + d * B * Hout;
    p.c = ptr_or_null<T>(a.c, d * B * H);
    p.m = kProj ? m.data_ptr<T>() + d * B * H : nullptr;
    p.output = a.output.data_ptr<T>();
    p.reserve = kTraining ? a.reserve.data_ptr<T>() : nullptr;
    p.steps = T_, p.B = B, p.D = D, p.H = H, p.Hout = Hout, p.d = d;
  }
  const T* w_hh = a.w_hh.data_ptr<T>();  // [D, G*H, Hout]
  const T* w_hr = ptr_or_null<T>(a.w_hr, 0);  // [D, Hout, H]
  run_directions(D, T_, [&](int d, int64_t s) {
    forward_step<Cell, T, kTraining, kProj>(dirs[d], w_hh + d * GH * Hout,
                                            kProj ? w_hr + d * Hout * H : nullptr, s);
  });
}

template <typename Cell, typename T, bool kProj>
void backward_layer(const BackwardArgs& a, const at::Tensor& lengths) {
  const int64_t T_ = a.output.size(0), B = a.output.size(1), D = a.output.size(2);
  const int64_t Hout = a.output.size(3), GH = a.w_hh.size(1), H = GH / Cell::kGates;
  TORCH_INTERNAL_ASSERT(kProj || Hout == H, "birnn_ext: Hout != H without a projection");
  TORCH_INTERNAL_ASSERT(Cell::kSplitHiddenGrad || a.dgates_h.is_same(a.dgates_x));
  check_sizes(B, H, Hout, D, Cell::kGates);
  // Scratch, allocated before the fork: dLoss/dh of the step [D, B, Hout], or with a
  // projection dLoss/dm [D, B, H].
  at::Tensor scratch = at::empty({D, B, kProj ? H : Hout}, a.dgates_x.options());

  std::array<BackwardStep<T>, 2> dirs{};  // per direction
  for (int d = 0; d < D; ++d) {
    BackwardStep<T>& p = dirs[d];
    p.lengths = ptr_or_null<int64_t>(lengths, 0);
    p.grad_output = a.grad_output.data_ptr<T>();
    p.output = a.output.data_ptr<T>();
    p.h0 = a.h0.data_ptr<T>() + d * B * Hout;
    p.c0 = ptr_or_null<T>(a.c0, d * B * H);
    p.reserve = a.reserve.data_ptr<T>();
    p.dm = kProj ? scratch.data_ptr<T>() + d * B * H : nullptr;
    p.dh_step = kProj ? nullptr : scratch.data_ptr<T>() + d * B * Hout;
    p.dh = a.dh.data_ptr<T>() + d * B * Hout;
    p.dc = ptr_or_null<T>(a.dc, d * B * H);
    p.dgates_x = a.dgates_x.data_ptr<T>();
    p.dgates_h = a.dgates_h.data_ptr<T>();
    p.dh_total = kProj ? a.dh_total.data_ptr<T>() : nullptr;
    p.steps = T_, p.B = B, p.D = D, p.H = H, p.Hout = Hout, p.d = d;
  }
  const T* w_hh = a.w_hh.data_ptr<T>();       // [D, G*H, Hout]
  const T* w_hr = ptr_or_null<T>(a.w_hr, 0);  // [D, Hout, H]
  run_directions(D, T_, [&](int d, int64_t s) {
    backward_step<Cell, T, kProj>(dirs[d], w_hh + d * GH * Hout,
                                  kProj ? w_hr + d * Hout * H : nullptr, s);
  });
}

// Turns the run-time flags into template arguments; the projection exists for LSTM only.
template <typename Cell, typename T>
void forward_dispatch(const ForwardArgs& a, const at::Tensor& lengths) {
  const bool training = a.reserve.defined(), proj = a.w_hr.defined();
  if constexpr (std::is_same_v<Cell, LstmCell>) {
    if (proj) {
      return training ? forward_layer<Cell, T, true, true>(a, lengths)
                      : forward_layer<Cell, T, false, true>(a, lengths);
    }
  }
  TORCH_INTERNAL_ASSERT(!proj, "birnn_ext: a projection is LSTM-only");
  return training ? forward_layer<Cell, T, true, false>(a, lengths)
                  : forward_layer<Cell, T, false, false>(a, lengths);
}

template <typename Cell, typename T>
void backward_dispatch(const BackwardArgs& a, const at::Tensor& lengths) {
  if constexpr (std::is_same_v<Cell, LstmCell>) {
    if (a.w_hr.defined()) return backward_layer<Cell, T, true>(a, lengths);
  }
  TORCH_INTERNAL_ASSERT(!a.w_hr.defined(), "birnn_ext: a projection is LSTM-only");
  backward_layer<Cell, T, false>(a, lengths);
}

}  // namespace

void forward_recurrence_cuda(const ForwardArgs& a) {
  const c10::cuda::CUDAGuard device_guard(a.gates_x.device());
  const at::Tensor lengths = a.lengths.defined() ? a.lengths.contiguous() : at::Tensor();
  check_lengths(lengths, a.output.size(0));
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.gates_x.scalar_type(),
                                    "birnn_forward_cuda", [&] {
      forward_dispatch<Cell, scalar_t>(a, lengths);
    });
  });
}

void backward_recurrence_cuda(const BackwardArgs& a) {
  const c10::cuda::CUDAGuard device_guard(a.dgates_x.device());
  const at::Tensor lengths = a.lengths.defined() ? a.lengths.contiguous() : at::Tensor();
  check_lengths(lengths, a.output.size(0));
  dispatch_cell(a.cell, [&](auto cell) {
    using Cell = decltype(cell);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.dgates_x.scalar_type(),
                                    "birnn_backward_cuda", [&] {
      backward_dispatch<Cell, scalar_t>(a, lengths);
    });
  });
}

}  // namespace birnn

TORCH_LIBRARY_IMPL(birnn_ext, CUDA, m) {
  BIRNN_REGISTER_LAYER_OPS(m);
}
