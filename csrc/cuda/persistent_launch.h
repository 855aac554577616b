// Host-side helpers shared by persistent_forward.cu and persistent_backward.cu (defined in
// persistent_launch.cu): the plan checked against the kernel's real occupancy, scratch
// memory, the cooperative launch, and the dtype switch. Internal to csrc/cuda/persistent_*.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>
#include <string>

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
// the device can launch cooperatively, and `kernel`'s real occupancy (registers included)
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

// Byte regions carved out of one allocation from the caching allocator on the current
// stream (each region 256-byte aligned). `storage` keeps the memory alive until the
// caller returns; the stream order keeps it valid for the launch.
struct Scratch {
  at::Tensor storage;
  unsigned char* base = nullptr;
  unsigned* counters = nullptr;  // [dirs * kCounterStride], zeroed on the stream
};
// regions: the bytes each of the caller's regions needs; offsets[i] receives region i's
// byte offset from base. Also allocates and zeroes the step counters.
Scratch make_scratch(const at::Tensor& like, const int64_t* region_bytes, int64_t* offsets,
                     int regions, int dirs, cudaStream_t stream);

// Launches `kernel` with grid plan.grid x kThreads and plan.smem_bytes of dynamic shared
// memory as a cooperative launch (co-residency guaranteed by the runtime, or the launch
// fails), after asserting the plan's invariants. `params` points at the kernel's single
// by-value argument. Checks the launch.
void launch_cooperative(const void* kernel, const LayerShape& shape, const Plan& plan,
                        void* params, cudaStream_t stream);

// Internal invariant (the op layer has checked the user's arguments): `t` is defined,
// contiguous, on like's device, of like's dtype (or `dtype` when given) and of shape `sizes`.
void assert_tensor(const at::Tensor& t, at::IntArrayRef sizes, const at::Tensor& like,
                   const char* name, std::optional<at::ScalarType> dtype = std::nullopt);

// Counts completed launches (0 forward, 1 backward), for tests that must know the
// persistent kernels really ran (torch.ops.birnn_ext_persistent.launch_counts).
void count_launch(int which);

// Calls fn(T{}) with the storage type of a float32 / float16 / bfloat16 tensor.
template <typename Fn>
void dispatch_storage_type(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); return;
    case at::kHalf: fn(c10::Half{}); return;
    case at::kBFloat16: fn(c10::BFloat16{}); return;
    default: break;
  }
  TORCH_INTERNAL_ASSERT(false, "birnn_ext: no persistent kernel for dtype ", dtype);
}

// Calls fn(Cell{}, T{}) with the cell struct (csrc/cells.h) and the storage type.
template <typename Fn>
void dispatch_kernel_types(CellKind cell, at::ScalarType dtype, Fn&& fn) {
  dispatch_cell(cell, [&](auto cell_tag) {
    dispatch_storage_type(dtype, [&](auto type_tag) { fn(cell_tag, type_tag); });
  });
}

inline bool has_kernels(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

}  // namespace persistent
}  // namespace birnn
