// Just enough of CUDA, cuBLAS and c10::cuda for csrc/cuda/recurrence_cuda.cu to compile and
// run as plain C++ on CPU tensors (see emulate.py). Kernels run one thread at a time, in a
// shuffled order per launch, so a thread that reads another thread's output is caught;
// streams are eager (every launch completes before the next call returns).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

// CUDA keywords as plain C++.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct MockDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local MockDim3 blockIdx, blockDim, threadIdx;

using cudaStream_t = void*;
enum cudaDataType_t { CUDA_R_32F, CUDA_R_64F, CUDA_R_16F, CUDA_R_16BF };

// ---- cuBLAS: a column-major reference GEMM with a double accumulator -------------------
enum cublasOperation_t { CUBLAS_OP_N, CUBLAS_OP_T };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_64F };
enum cublasMath_t {
  CUBLAS_DEFAULT_MATH = 0,
  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16
};
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT };
using cublasHandle_t = int*;
#define TORCH_CUDABLAS_CHECK(EXPR) TORCH_CHECK((EXPR) == 0, "mock cuBLAS failed: " #EXPR)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

inline int mock_gemm_calls = 0;

inline int cublasSetMathMode(cublasHandle_t, cublasMath_t) { return 0; }

template <typename T, typename S>
void mock_gemm(cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, S alpha,
               const T* a, int lda, const T* b, int ldb, S beta, T* c, int ldc) {
  // cuBLAS's argument rules, so a wrong leading dimension fails here as it would there.
  TORCH_CHECK(m >= 0 && n >= 0 && k >= 0, "mock cuBLAS: negative size");
  TORCH_CHECK(lda >= std::max(1, op_a == CUBLAS_OP_N ? m : k), "mock cuBLAS: bad lda ", lda);
  TORCH_CHECK(ldb >= std::max(1, op_b == CUBLAS_OP_N ? k : n), "mock cuBLAS: bad ldb ", ldb);
  TORCH_CHECK(ldc >= std::max(1, m), "mock cuBLAS: bad ldc ", ldc);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        const double av = static_cast<double>(op_a == CUBLAS_OP_N ? a[i + int64_t(p) * lda]
                                                                  : a[p + int64_t(i) * lda]);
        const double bv = static_cast<double>(op_b == CUBLAS_OP_N ? b[p + int64_t(j) * ldb]
                                                                  : b[j + int64_t(p) * ldb]);
        acc += av * bv;
      }
      T& out = c[i + int64_t(j) * ldc];
      // beta == 0 must not read C (it may hold NaN poison), as in cuBLAS.
      const double old = beta == S(0) ? 0.0 : static_cast<double>(beta) * static_cast<double>(out);
      out = static_cast<T>(static_cast<S>(static_cast<double>(alpha) * acc + old));
    }
  }
}

inline int cublasGemmEx(cublasHandle_t, cublasOperation_t op_a, cublasOperation_t op_b, int m,
                        int n, int k, const void* alpha, const void* a, cudaDataType_t type_a,
                        int lda, const void* b, cudaDataType_t type_b, int ldb, const void* beta,
                        void* c, cudaDataType_t type_c, int ldc, cublasComputeType_t compute,
                        cublasGemmAlgo_t) {
  TORCH_CHECK(type_a == type_b && type_b == type_c, "mock cuBLAS: mixed types");
  ++mock_gemm_calls;
  if (compute == CUBLAS_COMPUTE_64F) {
    TORCH_CHECK(type_a == CUDA_R_64F, "mock cuBLAS: 64F compute needs double data");
    mock_gemm<double, double>(op_a, op_b, m, n, k, *static_cast<const double*>(alpha),
                              static_cast<const double*>(a), lda, static_cast<const double*>(b),
                              ldb, *static_cast<const double*>(beta), static_cast<double*>(c),
                              ldc);
    return 0;
  }
  TORCH_CHECK(type_a != CUDA_R_64F, "mock cuBLAS: double data needs 64F compute");
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  switch (type_a) {
    case CUDA_R_32F:
      mock_gemm<float, float>(op_a, op_b, m, n, k, al, static_cast<const float*>(a), lda,
                              static_cast<const float*>(b), ldb, be, static_cast<float*>(c), ldc);
      break;
    case CUDA_R_16F:
      mock_gemm<at::Half, float>(op_a, op_b, m, n, k, al, static_cast<const at::Half*>(a), lda,
                                 static_cast<const at::Half*>(b), ldb, be,
                                 static_cast<at::Half*>(c), ldc);
      break;
    default:
      mock_gemm<at::BFloat16, float>(op_a, op_b, m, n, k, al,
                                     static_cast<const at::BFloat16*>(a), lda,
                                     static_cast<const at::BFloat16*>(b), ldb, be,
                                     static_cast<at::BFloat16*>(c), ldc);
  }
  return 0;
}

// ---- c10::cuda / at::cuda: streams that only remember which one is current ---------------
namespace c10::cuda {

struct CUDAStream {
  int id = 0;  // 0: the default stream; pool streams count up from 1
  c10::DeviceIndex device_index() const { return 0; }
  operator cudaStream_t() const { return reinterpret_cast<void*>(static_cast<intptr_t>(id)); }
};

inline thread_local CUDAStream mock_current_stream{};
inline int mock_pool_counter = 0;
inline int mock_event_records = 0;
inline int mock_event_blocks = 0;

inline CUDAStream getCurrentCUDAStream() { return mock_current_stream; }
inline CUDAStream getStreamFromPool(bool, c10::DeviceIndex) {
  return CUDAStream{1 + (mock_pool_counter++ % 32)};
}
inline c10::DeviceIndex device_count() { return 1; }

struct CUDAStreamGuard {
  explicit CUDAStreamGuard(CUDAStream s) : saved(mock_current_stream) { mock_current_stream = s; }
  ~CUDAStreamGuard() { mock_current_stream = saved; }
  CUDAStream saved;
};

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

enum class CaptureStatus { None, Active };
inline CaptureStatus mock_capture_status = CaptureStatus::None;
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() { return mock_capture_status; }

}  // namespace c10::cuda

namespace at::cuda {

inline cublasHandle_t getCurrentCUDABlasHandle() {
  static int handle = 0;
  return &handle;
}

struct CUDAEvent {
  void record(const c10::cuda::CUDAStream&) { ++c10::cuda::mock_event_records; }
  void block(const c10::cuda::CUDAStream&) { ++c10::cuda::mock_event_blocks; }
};

}  // namespace at::cuda

// ---- kernel launches ---------------------------------------------------------------------
inline std::mt19937& mock_rng() {
  static std::mt19937 rng(1234);
  return rng;
}

// Runs every thread of the grid, in a random order.
template <typename Args>
void mock_launch(void (*kernel)(Args), unsigned blocks, int threads, size_t shared_bytes,
                 cudaStream_t, const Args& args) {
  TORCH_CHECK(blocks > 0 && threads > 0 && shared_bytes == 0, "mock launch: bad config");
  std::vector<int64_t> order(static_cast<int64_t>(blocks) * threads);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), mock_rng());
  blockDim.x = threads;
  for (int64_t i : order) {
    blockIdx.x = static_cast<unsigned>(i / threads);
    threadIdx.x = static_cast<unsigned>(i % threads);
    kernel(args);
  }
}
