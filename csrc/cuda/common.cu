// The shared part's host code (csrc/cuda/common.cuh says what and why): the precision flags,
// the per-thread direction streams and cuBLAS handles, and the fork/join of one call.
#include <ATen/Context.h>
#if !defined(BIRNN_CUDA_EMULATION)  // the CPU emulation's stand-ins: see common.cuh
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <mutex>
#include <vector>

#include "common.cuh"

namespace birnn {
namespace cuda {

void check_sizes(int64_t B, int64_t H, int64_t Hout, int64_t D, int64_t G) {
  TORCH_CHECK(H > 0 && Hout > 0, "birnn_ext: hidden_size must be greater than zero");
  TORCH_CHECK(D * G * H <= INT_MAX && B * H <= INT_MAX && B * Hout <= INT_MAX,
              "birnn_ext: B = ", B, ", D * G * H = ", D * G * H,
              " is too large for the CUDA recurrence");
}

GemmPrecision GemmPrecision::from_torch() {
  const at::Context& ctx = at::globalContext();
  GemmPrecision p;
  // Per operator, so no check of the legacy against the new flags can raise here.
  p.tf32 = ctx.allowTF32CuDNN(at::Float32Op::RNN);
  p.fp16_reduced = ctx.allowFP16ReductionCuBLAS() ==
                   at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  p.bf16_reduced = ctx.allowBF16ReductionCuBLAS() ==
                   at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK;
  return p;
}

namespace {

// Makes one thread's context for `device` (the current device). Everything that allocates or
// creates happens here, once: cudaMalloc is not allowed while a stream captures.
DirectionContext* make_context(c10::DeviceIndex device) {
  TORCH_CHECK(
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
      "birnn_ext: the first birnn_ext layer call on this thread and GPU was made during CUDA "
      "graph capture. Its direction streams, events and cuBLAS handles must be created before "
      "capture: run the layer once eagerly (a warm-up, as torch.cuda.graph's documentation "
      "asks for cuBLAS) before capturing it.");
  auto* ctx = new DirectionContext{{c10::cuda::getStreamFromPool(false, device),
                                    c10::cuda::getStreamFromPool(false, device)}};
  // torch sizes its own cuBLAS workspaces this way (CUBLAS_WORKSPACE_CONFIG honoured).
  const int64_t workspace_bytes = static_cast<int64_t>(at::cuda::getChosenWorkspaceSize());
  for (int d = 0; d < 2; ++d) {
    TORCH_CUDABLAS_CHECK(cublasCreate(&ctx->handles[d]));
#if defined(BIRNN_CUDA_EMULATION)  // CPU memory stands for device memory (see common.cuh)
    ctx->workspaces[d] = at::empty({workspace_bytes}, at::TensorOptions().dtype(at::kByte));
#else
    ctx->workspaces[d] =
        at::empty({workspace_bytes}, at::TensorOptions().dtype(at::kByte).device(
                                         at::Device(at::kCUDA, device)));
#endif
  }
  return ctx;
}

// Contexts of threads that have exited, per device, for later threads to take over, so the
// device memory they hold (two cuBLAS workspaces each) stays bounded by the most threads that
// ever ran layers at the same time. Never destroyed: no CUDA call runs at exit.
struct ContextPool {
  std::mutex mutex;
  std::vector<std::vector<DirectionContext*>> idle{
      static_cast<size_t>(c10::cuda::device_count())};
};

ContextPool& context_pool() {
  static auto* pool = new ContextPool;
  return *pool;
}

// A thread's contexts, handed back to the pool when the thread exits. A context from the pool
// is safe to reuse: its streams order a new call's work after the old thread's.
struct ThreadContexts {
  std::vector<DirectionContext*> per_device =
      std::vector<DirectionContext*>(c10::cuda::device_count(), nullptr);
  ~ThreadContexts() {
    ContextPool& pool = context_pool();
    const std::lock_guard<std::mutex> lock(pool.mutex);
    for (size_t d = 0; d < per_device.size(); ++d) {
      if (per_device[d] != nullptr) pool.idle[d].push_back(per_device[d]);
    }
  }
};

DirectionContext& direction_context(c10::DeviceIndex device) {
  thread_local ThreadContexts mine;
  DirectionContext*& ctx = mine.per_device.at(device);
  if (ctx == nullptr) {
    ContextPool& pool = context_pool();
    {
      const std::lock_guard<std::mutex> lock(pool.mutex);
      std::vector<DirectionContext*>& idle = pool.idle.at(device);
      if (!idle.empty()) {
        ctx = idle.back();
        idle.pop_back();
      }
    }
    if (ctx == nullptr) ctx = make_context(device);
  }
  return *ctx;
}

cublasMath_t math_mode(at::ScalarType dtype, const GemmPrecision& prec) {
  // The compute type passed to every cublasGemmEx decides TF32; the math mode only says
  // whether a half/bfloat16 reduction may happen in the output type.
  const bool strict = (dtype == at::kHalf && !prec.fp16_reduced) ||
                      (dtype == at::kBFloat16 && !prec.bf16_reduced);
  return strict ? static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                            CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
                : CUBLAS_DEFAULT_MATH;
}

}  // namespace

DirectionFork::DirectionFork(int directions, at::ScalarType dtype, const GemmPrecision& prec)
    : current_(c10::cuda::getCurrentCUDAStream()), directions_(directions) {
  TORCH_INTERNAL_ASSERT(directions == 1 || directions == 2);
  ctx_ = &direction_context(current_.device_index());
  const cublasMath_t mode = math_mode(dtype, prec);
  for (int d = 0; d < directions_; ++d) {
    // Bound once per call: cublasSetStream resets the workspace, so it is set after it.
    TORCH_CUDABLAS_CHECK(cublasSetStream(ctx_->handles[d], ctx_->streams[d].stream()));
    TORCH_CUDABLAS_CHECK(cublasSetWorkspace(ctx_->handles[d],
                                            ctx_->workspaces[d].data_ptr(),
                                            ctx_->workspaces[d].numel()));
    TORCH_CUDABLAS_CHECK(cublasSetMathMode(ctx_->handles[d], mode));
  }
  ctx_->forked.record(current_);  // everything the caller queued (inputs, scratch) comes first
  for (int d = 0; d < directions_; ++d) ctx_->forked.block(ctx_->streams[d]);
}

void DirectionFork::join() {
  if (joined_) return;
  joined_ = true;
  for (int d = 0; d < directions_; ++d) {
    ctx_->joined[d].record(ctx_->streams[d]);
    ctx_->joined[d].block(current_);
  }
}

DirectionFork::~DirectionFork() {
  // On an error between fork and join: nothing the caller frees afterwards may still be in
  // use on a side stream. A destructor must not throw, so a failure here is only reported.
  try {
    join();
  } catch (const std::exception& e) {
    TORCH_WARN("birnn_ext: joining the direction streams failed: ", e.what());
  }
}

}  // namespace cuda
}  // namespace birnn
