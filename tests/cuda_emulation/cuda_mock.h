// Just enough of CUDA, cuBLAS and c10::cuda for csrc/cuda/'s standard path (common.cu,
// standard.cu, lengths.cu: their own source, see the *_cu.cpp files here) to compile and run
// as plain C++ on CPU tensors, for tests/test_cuda_emulation.py.
//
// Include it first: it defines BIRNN_CUDA_EMULATION, under which csrc/cuda/ skips its CUDA
// headers (common.cuh, common.cu, lengths.cu), launch_1d calls birnn_emulation::launch
// instead of `kernel<<<...>>>` (common.cuh), and the cuBLAS workspaces are CPU tensors
// (common.cu). Nothing else in the sources changes.
//
// Kernels run one thread at a time, every thread of the grid, in a freshly shuffled order per
// launch, so a thread that reads what another thread of the same launch writes sees it only
// sometimes, and the results stop matching. Streams are eager (a launch or GEMM is done when
// the call returns), so ordering between streams is not tested; what is checked is the
// protocol around them: work goes to a pool stream only between its fork and its join, a
// cuBLAS handle has a workspace set after its last cublasSetStream (which resets it), and the
// GEMMs get cuBLAS's argument rules.
//
// The stand-ins for torch's c10::cuda / at::cuda live in an inline namespace, so their
// symbols never collide with the real ones when this is built against a CUDA build of torch.
#pragma once

#define BIRNN_CUDA_EMULATION 1

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <vector>

// CUDA keywords as plain C++.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct MockDim3 {
  unsigned x = 0, y = 0, z = 0;
};
// The running emulated thread's indices (set by birnn_emulation::launch).
inline thread_local MockDim3 blockIdx, blockDim, threadIdx;

using cudaStream_t = void*;
enum cudaDataType_t { CUDA_R_32F, CUDA_R_64F, CUDA_R_16F, CUDA_R_16BF };

namespace birnn_emulation {

// What the emulated calls did since the last reset (tests/cuda_emulation/harness.cpp
// hands them to the test).
struct Counters {
  int64_t gemms = 0;          // cublasGemmEx calls
  int64_t event_records = 0;  // CUDAEvent::record
  int64_t event_blocks = 0;   // CUDAEvent::block (a stream waits on an event)
  int64_t pool_streams = 0;   // streams handed out by getStreamFromPool
};
inline Counters counters;

// Pool streams (ids from 1) that have waited on an event and not recorded one since: forked
// from the current stream and not yet joined back. Only such a stream may get work.
inline std::map<int, bool> stream_open;

inline void check_stream_takes_work(cudaStream_t stream, const char* what) {
  const int id = static_cast<int>(reinterpret_cast<intptr_t>(stream));
  TORCH_CHECK(id == 0 || stream_open[id], "CUDA emulation: ", what, " on pool stream ", id,
              " outside its fork/join (work issued before the fork or after the join)");
}

inline std::mt19937& rng() {
  static std::mt19937 generator(1234);
  return generator;
}

// kernel<<<blocks, threads, shared_bytes, stream>>>(args): every thread of the grid, one at a
// time, in a shuffled order.
template <typename Args>
void launch(void (*kernel)(Args), unsigned blocks, int threads, size_t shared_bytes,
            cudaStream_t stream, const Args& args) {
  TORCH_CHECK(blocks > 0 && threads > 0 && threads <= 1024 && shared_bytes == 0,
              "CUDA emulation: bad launch configuration");
  check_stream_takes_work(stream, "kernel launch");
  std::vector<int64_t> order(static_cast<int64_t>(blocks) * threads);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng());
  blockDim.x = threads;
  for (const int64_t i : order) {
    blockIdx.x = static_cast<unsigned>(i / threads);
    threadIdx.x = static_cast<unsigned>(i % threads);
    kernel(args);
  }
}

}  // namespace birnn_emulation

// ---- cuBLAS: a column-major reference GEMM with a double accumulator --------------------
enum cublasOperation_t { CUBLAS_OP_N, CUBLAS_OP_T };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_COMPUTE_64F };
enum cublasMath_t {
  CUBLAS_DEFAULT_MATH = 0,
  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16
};
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT };

// A handle: the stream it is bound to and whether a workspace was set since that binding.
struct MockCublasContext {
  cudaStream_t stream = nullptr;
  bool workspace = false;
};
using cublasHandle_t = MockCublasContext*;
#define TORCH_CUDABLAS_CHECK(EXPR) TORCH_CHECK((EXPR) == 0, "CUDA emulation: cuBLAS failed: " #EXPR)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

// Handles live as long as the driver's, which never frees them.
inline int cublasCreate(cublasHandle_t* handle) {
  *handle = new MockCublasContext;
  return 0;
}
// As in cuBLAS, binding a stream drops the handle's user workspace.
inline int cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  handle->workspace = false;
  return 0;
}
inline int cublasSetWorkspace(cublasHandle_t handle, void* workspace, size_t bytes) {
  handle->workspace = workspace != nullptr && bytes > 0;
  return 0;
}
inline int cublasSetMathMode(cublasHandle_t, cublasMath_t) { return 0; }

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

// Any input type with an output of the same type or (half/bfloat16 inputs) float, as
// cublasGemmEx allows. cuBLAS's argument rules are checked, so a wrong leading dimension,
// type or compute type fails here as it would there.
inline int cublasGemmEx(cublasHandle_t handle, cublasOperation_t op_a, cublasOperation_t op_b,
                        int m, int n, int k, const void* alpha, const void* a,
                        cudaDataType_t type_a, int lda, const void* b, cudaDataType_t type_b,
                        int ldb, const void* beta, void* c, cudaDataType_t type_c, int ldc,
                        cublasComputeType_t compute, cublasGemmAlgo_t) {
  TORCH_CHECK(handle != nullptr, "CUDA emulation: cuBLAS handle never created");
  TORCH_CHECK(handle->workspace,
              "CUDA emulation: no cuBLAS workspace since the handle's last cublasSetStream");
  birnn_emulation::check_stream_takes_work(handle->stream, "cuBLAS GEMM");
  TORCH_CHECK(type_a == type_b, "CUDA emulation: cuBLAS: mixed input types");
  const bool half_in = type_a == CUDA_R_16F || type_a == CUDA_R_16BF;
  TORCH_CHECK(type_c == type_a || (type_c == CUDA_R_32F && half_in),
              "CUDA emulation: cuBLAS: unsupported output type");
  TORCH_CHECK((compute == CUBLAS_COMPUTE_64F) == (type_a == CUDA_R_64F),
              "CUDA emulation: cuBLAS: compute type");
  TORCH_CHECK(compute != CUBLAS_COMPUTE_32F_FAST_TF32 || type_a == CUDA_R_32F,
              "CUDA emulation: cuBLAS: tf32 needs float");
  TORCH_CHECK(m >= 0 && n >= 0 && k >= 0, "CUDA emulation: cuBLAS: negative size");
  TORCH_CHECK(lda >= std::max(1, op_a == CUBLAS_OP_N ? m : k), "CUDA emulation: bad lda ", lda);
  TORCH_CHECK(ldb >= std::max(1, op_b == CUBLAS_OP_N ? k : n), "CUDA emulation: bad ldb ", ldb);
  TORCH_CHECK(ldc >= std::max(1, m), "CUDA emulation: bad ldc ", ldc);
  ++birnn_emulation::counters.gemms;
  const bool f64 = compute == CUBLAS_COMPUTE_64F;
  const double al = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double be = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        const int64_t ia = op_a == CUBLAS_OP_N ? i + int64_t(p) * lda : p + int64_t(i) * lda;
        const int64_t ib = op_b == CUBLAS_OP_N ? p + int64_t(j) * ldb : j + int64_t(p) * ldb;
        acc += mock_read(a, type_a, ia) * mock_read(b, type_b, ib);
      }
      const int64_t ic = i + int64_t(j) * ldc;
      // beta == 0: C is not read (it may hold NaN), as in cuBLAS.
      const double old = be == 0 ? 0.0 : be * mock_read(c, type_c, ic);
      mock_write(c, type_c, ic, al * acc + old);
    }
  }
  return 0;
}

// ---- c10::cuda / at::cuda: streams that only remember which one is current ---------------
namespace c10::cuda {
inline namespace birnn_emulation_stand_ins {

struct CUDAStream {
  int id = 0;  // 0: the default stream; pool streams count up from 1
  c10::DeviceIndex device_index() const { return 0; }
  operator cudaStream_t() const { return reinterpret_cast<void*>(static_cast<intptr_t>(id)); }
  cudaStream_t stream() const { return *this; }
};

inline thread_local CUDAStream current_stream{};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return current_stream; }
inline CUDAStream getStreamFromPool(bool, c10::DeviceIndex) {
  static int drawn = 0;  // torch's pool hands out its 32 streams in turn
  ++::birnn_emulation::counters.pool_streams;
  return CUDAStream{1 + drawn++ % 32};
}
inline c10::DeviceIndex device_count() { return 1; }

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};

enum class CaptureStatus { None, Active };
inline CaptureStatus capture_status = CaptureStatus::None;  // set by the harness
inline CaptureStatus currentStreamCaptureStatusMayInitCtx() { return capture_status; }

}  // namespace birnn_emulation_stand_ins
}  // namespace c10::cuda

namespace at::cuda {
inline namespace birnn_emulation_stand_ins {

inline size_t getChosenWorkspaceSize() { return 1024; }

// record() on a pool stream ends its fork (the join records there); block() on one opens it
// (the fork makes it wait on the current stream).
struct CUDAEvent {
  void record(const c10::cuda::CUDAStream& s) {
    ++::birnn_emulation::counters.event_records;
    if (s.id != 0) ::birnn_emulation::stream_open[s.id] = false;
  }
  void block(const c10::cuda::CUDAStream& s) {
    ++::birnn_emulation::counters.event_blocks;
    if (s.id != 0) ::birnn_emulation::stream_open[s.id] = true;
  }
};

}  // namespace birnn_emulation_stand_ins
}  // namespace at::cuda
