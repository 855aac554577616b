// What every CUDA kernel path of the recurrence shares (csrc/cuda/standard.cu today, a
// persistent kernel later): launching and checking kernels, cuBLAS calls with torch's
// precision flags, the two direction streams with their cuBLAS handles, and the float32
// carries of reduced-precision layers.
//
// Why a shared part. Every path runs the two directions of a layer at once on two streams
// forked from the caller's, calls cuBLAS with the same precision policy, and must behave under
// a non-default current stream and CUDA graph capture. Written once here, a path is only its
// kernels and the order it issues them in.
//
// Direction streams. Each host thread draws two streams from PyTorch's pool once per device
// and keeps them, with one cuBLAS handle and workspace per direction bound to its stream
// (DirectionContext); a thread that exits hands its context on to the next new thread. A call forks both streams from the current one with an event, binds each
// handle to its stream ONCE, issues its work, and joins back with events (DirectionFork), even
// when it throws. Fresh pool streams per call would pile up cuBLAS workspaces (one per handle
// and stream); torch's own handle is one per thread, so two directions issued from one thread
// would rebind it before every GEMM.
//
// Scratch. Buffers are allocated on the CURRENT stream before the fork and freed after the
// join: the caching allocator hands a freed block only to later work on the current stream,
// which the join orders after every side-stream use, so no recordStream is needed.
//
// Graph capture. Creating the per-thread streams, events, handles and workspaces allocates
// device memory, which a capturing stream forbids: the first call on a thread and device must
// run eagerly (torch's own cuBLAS calls need the same warm-up before capture). A first call
// made during capture raises a clear error before touching the stream, so the capture is
// aborted, never corrupted.
//
// CPU emulation. tests/test_cuda_emulation.py compiles common.cu, standard.cu and lengths.cu,
// their own source, as plain C++ against CPU torch and compares the standard path with the
// CPU ops. Its header (tests/cuda_emulation/cuda_mock.h, included first) defines
// BIRNN_CUDA_EMULATION and stand-ins for CUDA, cuBLAS and c10::cuda; under that macro, and only
// there, the sources differ: they skip their CUDA headers, launch_1d hands the grid to
// birnn_emulation::launch (every thread a plain call, in a shuffled order) instead of
// <<<...>>>, and the cuBLAS workspaces are CPU tensors (common.cu).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#if !defined(BIRNN_CUDA_EMULATION)  // the CPU emulation (above) has stand-ins for these
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <array>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "../birnn.h"

namespace birnn {
namespace cuda {

// ----------------------------------------------------------------------------------------
// device helpers

// Length of sequence b (lengths are checked on the host before any kernel runs; the clamp
// into [0, T] only keeps a broken invariant from indexing outside the buffers).
__device__ __forceinline__ int64_t seq_len(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t len = lengths[b];
  return len < 0 ? 0 : (len > T ? T : len);
}

// ----------------------------------------------------------------------------------------
// launching

constexpr int kThreadsPerBlock = 256;

// Launches kernel(args) with one thread per element of [0, n) on `stream`, and checks it.
template <typename Args>
void launch_1d(void (*kernel)(Args), int64_t n, cudaStream_t stream, const Args& args) {
  const int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_INTERNAL_ASSERT(blocks > 0 && blocks <= INT_MAX, "birnn_ext: bad grid for ", n);
#if defined(BIRNN_CUDA_EMULATION)  // every kernel the CPU emulation runs starts here
  birnn_emulation::launch(kernel, static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream,
                          args);
#else
  kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, 0, stream>>>(args);
#endif
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// What the kernels and cuBLAS (int sizes, leading dims >= 1) need of a layer's sizes.
void check_sizes(int64_t B, int64_t H, int64_t Hout, int64_t D, int64_t G);

template <typename T>
T* ptr_or_null(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<T>() + offset : nullptr;
}

// ----------------------------------------------------------------------------------------
// float32 carries

// The type a layer carries its state and gradients in from step to step: float for
// float16/bfloat16 (rounding a carry to 16 bits every step makes the error grow with the
// sequence length), else the storage type itself.
template <typename T>
using Carry = at::opmath_type<T>;

// `t` as a carry: t itself when T is already the carry type, else a float32 copy made on the
// current stream (write_back() copies it into t after the join).
struct CarryBuffer {
  at::Tensor storage, carry;
  CarryBuffer() = default;
  explicit CarryBuffer(const at::Tensor& t)
      : storage(t),
        carry(!t.defined() || t.scalar_type() == at::toOpMathType(t.scalar_type())
                  ? t
                  : t.to(at::toOpMathType(t.scalar_type()))) {}
  template <typename C>
  C* ptr(int64_t offset) const { return carry.defined() ? carry.data_ptr<C>() + offset : nullptr; }
  void write_back() const {
    if (carry.defined() && !carry.is_same(storage)) storage.copy_(carry);
  }
};

// ----------------------------------------------------------------------------------------
// cuBLAS

// The precision torch's flags give a layer's GEMMs, read once per call.
// - float32: TF32 exactly when torch lets cuDNN's RNNs use it
//   (torch.backends.cudnn.rnn.fp32_precision, default "tf32"; legacy
//   torch.backends.cudnn.allow_tf32), read per operator through at::Float32Op::RNN. A
//   drop-in for cuDNN's RNN follows the flag that governs that RNN; the legacy
//   allowTF32CuBLAS() would also raise whenever the legacy and new matmul flags disagree.
// - float16/bfloat16: accumulate in float32; reductions in the output type only when torch
//   allows them for its own GEMMs (allow_fp16/bf16_reduced_precision_reduction).
struct GemmPrecision {
  bool tf32 = false;              // float32 GEMMs may use TF32 tensor cores
  bool fp16_reduced = true;       // half GEMMs may reduce in half
  bool bf16_reduced = true;       // bfloat16 GEMMs may reduce in bfloat16
  static GemmPrecision from_torch();
};

template <typename T> struct CudaDataType;
template <> struct CudaDataType<float> { static constexpr cudaDataType_t value = CUDA_R_32F; };
template <> struct CudaDataType<double> { static constexpr cudaDataType_t value = CUDA_R_64F; };
template <> struct CudaDataType<at::Half> { static constexpr cudaDataType_t value = CUDA_R_16F; };
template <> struct CudaDataType<at::BFloat16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};

// Column-major cuBLAS GEMM on `handle` (already bound to its stream): C = op(A) op(B) + beta C,
// A and B of storage type T, C of type Out (T, or the float carry of a half/bfloat16 layer),
// accumulating in at::opmath_type<T>.
template <typename T, typename Out>
void cublas_gemm(cublasHandle_t handle, const GemmPrecision& prec, cublasOperation_t op_a,
                 cublasOperation_t op_b, int64_t m, int64_t n, int64_t k, const T* a,
                 int64_t lda, const T* b, int64_t ldb, at::opmath_type<T> beta, Out* c,
                 int64_t ldc) {
  static_assert(std::is_same_v<Out, T> || std::is_same_v<Out, at::opmath_type<T>>,
                "birnn_ext: a GEMM writes the storage or the carry type");
  using A = at::opmath_type<T>;
  const A alpha = A(1);
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  if constexpr (std::is_same_v<T, double>) {
    compute = CUBLAS_COMPUTE_64F;
  } else if constexpr (std::is_same_v<T, float>) {
    if (prec.tf32) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  }
  TORCH_CUDABLAS_CHECK(cublasGemmEx(
      handle, op_a, op_b, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha,
      a, CudaDataType<T>::value, static_cast<int>(lda), b, CudaDataType<T>::value,
      static_cast<int>(ldb), &beta, c, CudaDataType<Out>::value, static_cast<int>(ldc), compute,
      CUBLAS_GEMM_DEFAULT));
}

// Row-major C[M, N] = A[M, K] @ B[N, K]^T + beta * C  (leading dims in elements), which is
// column-major C^T = B A^T: the same mapping as csrc/cpu/blas.h.
template <typename T, typename Out>
void gemm_nt(cublasHandle_t handle, const GemmPrecision& prec, int64_t M, int64_t N, int64_t K,
             const T* A, int64_t lda, const T* B, int64_t ldb, at::opmath_type<T> beta, Out* C,
             int64_t ldc) {
  cublas_gemm<T, Out>(handle, prec, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, B, ldb, A, lda, beta, C,
                      ldc);
}

// Row-major C[M, N] = A[M, K] @ B[K, N] + beta * C
template <typename T, typename Out>
void gemm_nn(cublasHandle_t handle, const GemmPrecision& prec, int64_t M, int64_t N, int64_t K,
             const T* A, int64_t lda, const T* B, int64_t ldb, at::opmath_type<T> beta, Out* C,
             int64_t ldc) {
  cublas_gemm<T, Out>(handle, prec, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, B, ldb, A, lda, beta, C,
                      ldc);
}

// ----------------------------------------------------------------------------------------
// direction streams

// One host thread's streams, events, cuBLAS handles and workspaces for one device (see the
// top of the file). Made once, kept for the life of the thread, then handed to a later thread
// (common.cu); never freed, so nothing is destroyed while CUDA shuts down at exit.
struct DirectionContext {
  std::array<c10::cuda::CUDAStream, 2> streams;
  std::array<cublasHandle_t, 2> handles{};
  std::array<at::Tensor, 2> workspaces;  // cuBLAS workspace of handles[d], used on streams[d]
  at::cuda::CUDAEvent forked, joined[2];
};

// Forks the direction streams from the current stream for one layer call, binds direction
// d's cuBLAS handle to streams[d] with `prec`'s math mode for `dtype`, and joins them back into
// the current stream in join() or, if the call throws first, in the destructor. Work issued
// for direction d goes to stream(d) and GEMMs to handle(d). A unidirectional layer uses the
// direction-0 stream alone (so each handle and workspace only ever serves its own stream).
class DirectionFork {
 public:
  DirectionFork(int directions, at::ScalarType dtype, const GemmPrecision& prec);
  ~DirectionFork();
  DirectionFork(const DirectionFork&) = delete;
  DirectionFork& operator=(const DirectionFork&) = delete;

  cudaStream_t stream(int d) const { return ctx_->streams[d].stream(); }
  cublasHandle_t handle(int d) const { return ctx_->handles[d]; }
  // Orders everything issued on the direction streams before later work on the current
  // stream. Call it once all work is issued.
  void join();

 private:
  DirectionContext* ctx_;
  c10::cuda::CUDAStream current_;
  int directions_;
  bool joined_ = false;
};

}  // namespace cuda
}  // namespace birnn
