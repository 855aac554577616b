// Moving a layer's `lengths` between the host and a CUDA device, for the op (csrc/layer.cpp),
// which checks them on the host and needs them on the device.
//
// Why not tensor.to(). The op is handed the lengths on the CPU (the modules hold them there),
// so checking them costs no sync. A copy from pageable host memory may make the driver
// synchronise, and a pinned staging buffer would be read by the copy after the call returns,
// which a CUDA graph replays long after the buffer was reused. Instead the values travel as a
// kernel's parameters, in chunks: the launch is asynchronous, needs no host buffer to outlive
// the call, and a graph that captured it writes the same values on every replay (as any host
// argument of a captured call is fixed).
#include <ATen/ATen.h>
#if !defined(BIRNN_CUDA_EMULATION)  // the CPU emulation's stand-ins: see common.cuh
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>

#include "../birnn.h"
#include "common.cuh"

namespace birnn {
namespace cuda {
namespace {

// ----------------------------------------------------------------------------------------
// kernels

// A chunk of lengths passed by value: 3.5 KiB, inside the 4 KiB every CUDA version accepts
// as kernel parameters.
constexpr int kChunk = 448;

struct LengthsChunk {
  int64_t* out;  // [B] on the device
  int64_t offset, count;
  int64_t values[kChunk];
};

__global__ void write_lengths_kernel(const LengthsChunk chunk) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < chunk.count) chunk.out[chunk.offset + i] = chunk.values[i];
}

}  // namespace
}  // namespace cuda

// ----------------------------------------------------------------------------------------
// launchers (declared in csrc/birnn.h: the op calls them)

at::Tensor cuda_lengths_to_device(const at::Tensor& host_lengths, const at::Device& device) {
  TORCH_INTERNAL_ASSERT(host_lengths.is_cpu() && host_lengths.scalar_type() == at::kLong &&
                        host_lengths.dim() == 1 && host_lengths.is_contiguous());
  const c10::cuda::CUDAGuard guard(device);
  const int64_t B = host_lengths.numel();
  at::Tensor out = at::empty({B}, host_lengths.options().device(device));
  const int64_t* values = host_lengths.data_ptr<int64_t>();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t offset = 0; offset < B; offset += cuda::kChunk) {
    cuda::LengthsChunk chunk{};
    chunk.out = out.data_ptr<int64_t>();
    chunk.offset = offset;
    chunk.count = std::min<int64_t>(cuda::kChunk, B - offset);
    std::copy(values + offset, values + offset + chunk.count, chunk.values);
    cuda::launch_1d(cuda::write_lengths_kernel, chunk.count, stream, chunk);
  }
  return out;
}

at::Tensor cuda_lengths_to_host(const at::Tensor& lengths) {
  const c10::cuda::CUDAGuard guard(lengths.device());
  // Reading device memory back waits for the stream, which a capturing stream cannot do (and
  // trying would invalidate the capture): refuse before touching it.
  TORCH_CHECK(
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
      "birnn_ext: lengths on ", lengths.device(), " cannot be read during CUDA graph capture "
      "(checking them needs their values on the host). Pass lengths as a CPU tensor: the op "
      "checks them there and their values become part of the captured graph.");
  return lengths.to(at::kCPU);
}

}  // namespace birnn
