// The CUDA-runtime side of a persistent launch, shared by persistent_forward.cu and
// persistent_backward.cu (defined in persistent_launch.cu): the plan checked against the
// device (cooperative launch, the kernel's real occupancy), scratch from the caching
// allocator, and the cooperative launch. Internal to csrc/cuda/persistent_*.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../birnn.h"
#include "persistent_plan.h"

namespace birnn {
namespace persistent {

// The kernel instantiation for a layer: `const void*` as the CUDA runtime's launch and
// occupancy functions take it; nullptr for a dtype without kernels.
const void* forward_kernel_for(CellKind cell, at::ScalarType dtype, bool training);
const void* backward_kernel_for(CellKind cell, at::ScalarType dtype);

// The device numbers make_plan() needs, read off `prop`; the blocks-per-direction override
// comes from the environment (BIRNN_EXT_PERSISTENT_BLOCKS, a tuning aid; unset = automatic).
DeviceLimits device_limits(const cudaDeviceProp& prop);

// make_plan() for the layer, then the rules make_plan() cannot see: the dtype has kernels,
// the device can launch cooperatively, and the kernel's real occupancy (registers included)
// keeps plan.grid blocks co-resident. On failure plan.ok is false and plan.why says why.
// `device` is prop's device index; it must be the current device.
Plan plan_layer(CellKind cell, at::ScalarType dtype, bool backward, bool training, int64_t T,
                int64_t B, int64_t H, int64_t D, const cudaDeviceProp& prop, int device);

// The rules both directions of travel share (csrc/cuda/persistent.h lists them), then
// plan_layer. `output`: the layer's output [T, B, D, H] (the forward's, or the one the
// backward received); its dtype and device are the layer's. True when the kernels can run
// the layer; then *shape and *plan are filled. Otherwise *why (when not null) says why not.
bool plan_recurrence(CellKind cell, const at::Tensor& output, bool has_projection,
                     bool backward, bool training, const cudaDeviceProp& prop,
                     LayerShape* shape, Plan* plan, std::string* why);

// Scratch regions carved out of one allocation from the caching allocator, made for
// `stream` (region i at base + offsets[i], 256-byte aligned), and the step counters
// ([dirs * kCounterStride] uint32), zeroed on `stream`. `storage` keeps the memory alive
// until the caller returns; the allocator's stream order keeps it valid for the launch.
struct Scratch {
  at::Tensor storage;
  unsigned char* base = nullptr;
  std::vector<int64_t> offsets;
  unsigned* counters = nullptr;
};
Scratch make_scratch(const at::Tensor& like, const std::vector<int64_t>& region_bytes, int dirs,
                     cudaStream_t stream);

// Launches `kernel` with grid plan.grid x kThreads and plan.smem_bytes of dynamic shared
// memory as a cooperative launch (co-residency guaranteed by the runtime, or the launch
// fails), after asserting the plan's invariants. `params` points at the kernel's single
// by-value argument. Checks the launch.
void launch_cooperative(const void* kernel, const LayerShape& shape, const Plan& plan,
                        const void* params, cudaStream_t stream);

// Counts launches (0 forward, 1 backward), for tests that must know the persistent kernels
// really ran (torch.ops.birnn_ext_persistent.launch_counts).
void count_launch(int which);

}  // namespace persistent
}  // namespace birnn
