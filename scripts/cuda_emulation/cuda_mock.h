// Just enough of CUDA, cuBLAS and c10::cuda for csrc/cuda/ (amalgamated by emulate.py) to
// compile and run as plain C++ on CPU tensors. Kernels run one thread at a time, in a
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

// A column-major reference GEMM with a double accumulator, any input type with an output of
// the same type or (half/bfloat16 inputs) float, as cublasGemmEx allows; cuBLAS's argument
// rules are checked, so a wrong leading dimension, type or handle fails here as it would there.
inline double mock_read(const void* p, cudaDataType_t t, int64_t i) {
  switch (t) {
    case CUDA_R_64F: return static_cast<const double*>(p)[i];
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    case CUDA_R_16F: return static_cast<float>(static_cast<const at::Half*>(p)[i]);
    default: return static_cast<float>(static_cast<const at::BFloat16*>(p)[i]);
  }
}
inline void mock_write(void* p, cudaDataType_t t, int64_t i, double v) {
  switch (t) {
    case CUDA_R_64F: static_cast<double*>(p)[i] = v; break;
    case CUDA_R_32F: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case CUDA_R_16F: static_cast<at::Half*>(p)[i] = at::Half(static_cast<float>(v)); break;
    default: static_cast<at::BFloat16*>(p)[i] = at::BFloat16(static_cast<float>(v));
  }
}
inline int cublasGemmEx(cublasHandle_t handle, cublasOperation_t op_a, cublasOperation_t op_b,
                        int m, int n, int k, const void* alpha, const void* a, cudaDataType_t type_a,
                        int lda, const void* b, cudaDataType_t type_b, int ldb, const void* beta,
                        void* c, cudaDataType_t type_c, int ldc, cublasComputeType_t compute,
                        cublasGemmAlgo_t) {
  TORCH_CHECK(handle != nullptr && *handle > 0, "mock cuBLAS: handle never created");
  TORCH_CHECK(type_a == type_b, "mock cuBLAS: mixed input types");
  const bool half_in = type_a == CUDA_R_16F || type_a == CUDA_R_16BF;
  TORCH_CHECK(type_c == type_a || (type_c == CUDA_R_32F && half_in),
              "mock cuBLAS: unsupported output type");
  TORCH_CHECK((compute == CUBLAS_COMPUTE_64F) == (type_a == CUDA_R_64F),
              "mock cuBLAS: compute type");
  TORCH_CHECK(compute != CUBLAS_COMPUTE_32F_FAST_TF32 || type_a == CUDA_R_32F,
              "mock cuBLAS: tf32 needs float");
  TORCH_CHECK(m >= 0 && n >= 0 && k >= 0, "mock cuBLAS: negative size");
  TORCH_CHECK(lda >= std::max(1, op_a == CUBLAS_OP_N ? m : k), "mock cuBLAS: bad lda ", lda);
  TORCH_CHECK(ldb >= std::max(1, op_b == CUBLAS_OP_N ? k : n), "mock cuBLAS: bad ldb ", ldb);
  TORCH_CHECK(ldc >= std::max(1, m), "mock cuBLAS: bad ldc ", ldc);
  ++mock_gemm_calls;
  const bool f64 = compute == CUBLAS_COMPUTE_64F;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        const int64_t ia = op_a == CUBLAS_OP_N ? i + int64_t(p) * lda : p + int64_t(i) * lda;
        const int64_t ib = op_b == CUBLAS_OP_N ? p + int64_t(j) * ldb : j + int64_t(p) * ldb;
        const double av = mock_read(a, type_a, ia), bv = mock_read(b, type_b, ib);
        acc += av * bv;
      }
      const int64_t at_ = i + int64_t(j) * ldc;
      const double old = be == 0 ? 0.0 : be * mock_read(c, type_c, at_);
      mock_write(c, type_c, at_, al * acc + old);
    }
  }
  return 0;
}
// Handles are numbered from 1 as they are created (never freed, as in the driver).
inline int cublasCreate(cublasHandle_t* h) {
  static int n = 0;
  *h = new int(++n);
  return 0;
}
inline int cublasSetStream(cublasHandle_t, cudaStream_t) { return 0; }
inline int cublasSetWorkspace(cublasHandle_t, void*, size_t) { return 0; }
namespace at::cuda { inline size_t getChosenWorkspaceSize() { return 1024; } }

// ---- c10::cuda / at::cuda: streams that only remember which one is current ---------------
namespace c10::cuda {

struct CUDAStream {
  int id = 0;  // 0: the default stream; pool streams count up from 1
  c10::DeviceIndex device_index() const { return 0; }
  operator cudaStream_t() const { return reinterpret_cast<void*>(static_cast<intptr_t>(id)); }
  cudaStream_t stream() const { return *this; }
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
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex) { return mock_current_stream; }

enum class CaptureStatus { None, Active };
inline CaptureStatus mock_capture_status = CaptureStatus::None;
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() { return mock_capture_status; }

}  // namespace c10::cuda

namespace at::cuda {


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
