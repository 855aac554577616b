// Host side of the persistent kernels, shared by the forward and the backward: the plan
// checked against the device (cooperative launch, the kernel's real occupancy), scratch,
// the cooperative launch itself, and a few introspection ops for the tests and the GPU
// check (torch.ops.birnn_ext_persistent.*).
//
// Why a cooperative launch: the kernels' blocks wait on each other every step, which is
// only deadlock-free when all of them are resident at once. cudaLaunchKernelEx with
// cudaLaunchAttributeCooperative makes the runtime guarantee that (it refuses a grid
// larger than what fits), where a plain launch would merely make it likely. It is also a
// valid CUDA graph kernel-node attribute, so the launch stays capturable.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "persistent_launch.h"
#include "persistent_params.h"
#include "persistent_sync.h"

namespace birnn {
namespace persistent {
namespace {

std::atomic<int64_t> g_launches[2];  // completed launch calls: forward, backward

// Blocks of `kernel` that fit on one SM with `smem` bytes of dynamic shared memory, on the
// current device. The first query per (device, kernel) raises the kernel's dynamic
// shared-memory limit to the device's opt-in maximum (required above 48 KiB, for the
// occupancy answer and for the launch alike). Cached: the answer cannot change.
int blocks_per_sm(const void* kernel, int64_t smem, int device, const cudaDeviceProp& prop) {
  static std::mutex mutex;
  static std::map<std::tuple<int, const void*, int64_t>, int> cache;
  static std::map<std::tuple<int, const void*>, bool> attribute_set;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(device, kernel, smem);
  const auto hit = cache.find(key);
  if (hit != cache.end()) return hit->second;
  bool& raised = attribute_set[std::make_tuple(device, kernel)];
  if (!raised) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(prop.sharedMemPerBlockOptin)));
    raised = true;
  }
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads,
                                                               static_cast<size_t>(smem)));
  cache[key] = blocks;
  return blocks;
}

}  // namespace

DeviceLimits device_limits(const cudaDeviceProp& prop) {
  DeviceLimits dev;
  dev.sm_count = prop.multiProcessorCount;
  dev.smem_per_block = static_cast<int64_t>(prop.sharedMemPerBlockOptin);
  if (const char* env = std::getenv("BIRNN_EXT_PERSISTENT_BLOCKS")) {
    dev.blocks_override = std::atoi(env);  // <= 0 or junk: automatic
  }
  return dev;
}

Plan plan_layer(CellKind cell, at::ScalarType dtype, bool backward, bool training, int64_t T,
                int64_t B, int64_t H, int64_t D, const cudaDeviceProp& prop, int device) {
  Plan plan;
  if (!has_kernels(dtype)) {
    plan.why = std::string("no persistent kernel for dtype ") + c10::toString(dtype) +
               " (float32, float16 and bfloat16 only)";
    return plan;
  }
  if (!prop.cooperativeLaunch) {
    plan.why = "the device does not support cooperative launches";
    return plan;
  }
  LayerShape shape;
  shape.gates = num_gates(cell);
  shape.hidden = H;
  shape.batch = B;
  shape.steps = T;
  shape.dirs = static_cast<int>(D);
  shape.elem_bytes = static_cast<int>(c10::elementSize(dtype));
  shape.backward = backward;
  plan = make_plan(shape, device_limits(prop));
  if (!plan.ok) return plan;
  const void* kernel = backward ? backward_kernel_for(cell, dtype)
                                : forward_kernel_for(cell, dtype, training);
  TORCH_INTERNAL_ASSERT(kernel != nullptr);
  const int per_sm = blocks_per_sm(kernel, plan.smem_bytes, device, prop);
  if (int64_t(per_sm) * prop.multiProcessorCount < plan.grid) {
    plan.ok = false;
    plan.why = "the kernel's occupancy (" + std::to_string(per_sm) + " block(s) per SM with " +
               std::to_string(plan.smem_bytes) + " bytes of shared memory) cannot keep " +
               std::to_string(plan.grid) + " blocks co-resident on " +
               std::to_string(prop.multiProcessorCount) + " SMs";
  }
  return plan;
}

bool plan_recurrence(CellKind cell, const at::Tensor& output, bool has_projection,
                     bool backward, bool training, const cudaDeviceProp& prop,
                     LayerShape* shape, Plan* plan, std::string* why) {
  auto no = [&](std::string reason) {
    if (why != nullptr) *why = std::move(reason);
    return false;
  };
  if (!output.defined() || !output.is_cuda() || output.dim() != 4) {
    return no("not a CUDA layer");
  }
  if (has_projection) return no("proj_size runs on the standard path");
  const int64_t T = output.size(0), B = output.size(1), D = output.size(2);
  const int64_t H = output.size(3);
  if (T < 1 || B < 1) return no("empty sequence or batch");
  if (B * D * H >= INT_MAX) return no("B * D * H must stay below 2^31");
  const c10::cuda::CUDAGuard guard(output.device());
  *plan = plan_layer(cell, output.scalar_type(), backward, training, T, B, H, D, prop,
                     output.get_device());
  if (!plan->ok) return no(plan->why);
  shape->gates = num_gates(cell);
  shape->hidden = H;
  shape->batch = B;
  shape->steps = T;
  shape->dirs = static_cast<int>(D);
  shape->elem_bytes = static_cast<int>(output.element_size());
  shape->backward = backward;
  return true;
}

Scratch make_scratch(const at::Tensor& like, const std::vector<int64_t>& region_bytes, int dirs,
                     cudaStream_t stream) {
  constexpr int64_t kAlign = 256;
  Scratch s;
  int64_t total = 0;
  for (const int64_t bytes : region_bytes) {
    TORCH_INTERNAL_ASSERT(bytes >= 0);
    s.offsets.push_back(total);
    total += round_up(bytes, kAlign);
  }
  const int64_t counter_offset = total;
  const int64_t counter_bytes = int64_t(dirs) * kCounterStride * sizeof(unsigned);
  total += round_up(counter_bytes, kAlign);
  {
    // Allocated for `stream`, so the caching allocator hands the block out again only to
    // work queued on `stream` after this launch.
    const c10::cuda::CUDAStreamGuard guard(
        c10::cuda::getStreamFromExternal(stream, like.device().index()));
    s.storage = at::empty({total}, like.options().dtype(at::kByte));
  }
  s.base = static_cast<unsigned char*>(s.storage.data_ptr());
  s.counters = reinterpret_cast<unsigned*>(s.base + counter_offset);
  C10_CUDA_CHECK(cudaMemsetAsync(s.counters, 0, counter_bytes, stream));
  return s;
}

void launch_cooperative(const void* kernel, const LayerShape& shape, const Plan& plan,
                        const void* params, cudaStream_t stream) {
  const std::string broken = plan_violation(shape, plan);
  TORCH_INTERNAL_ASSERT(broken.empty(), "birnn_ext: persistent plan invariant broken: ", broken);
  TORCH_INTERNAL_ASSERT(kernel != nullptr && params != nullptr);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(plan.grid));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = static_cast<size_t>(plan.smem_bytes);
  config.stream = stream;
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  void* args[] = {const_cast<void*>(params)};  // the runtime copies the argument
  C10_CUDA_CHECK(cudaLaunchKernelExC(&config, kernel, args));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void count_launch(int which) {
  TORCH_INTERNAL_ASSERT(which == 0 || which == 1);
  g_launches[which].fetch_add(1, std::memory_order_relaxed);
}

namespace {

// ----------------------------------------------------------------------------------------
// introspection ops: torch.ops.birnn_ext_persistent.*, on the current CUDA device

// From the registry (csrc/cells.h), so a new cell needs no line here.
CellKind cell_from_name(std::string_view name) {
#define BIRNN_CELL_OF_NAME(op_name, Kind, Cell) \
  if (name == #op_name) return CellKind::Kind;
  BIRNN_FOR_EACH_CELL(BIRNN_CELL_OF_NAME)
#undef BIRNN_CELL_OF_NAME
  TORCH_CHECK(false, "birnn_ext: unknown cell '", std::string(name), "'");
}

Plan plan_on_current_device(std::string_view cell, int64_t hidden, int64_t batch,
                            int64_t steps, int64_t directions, at::ScalarType dtype,
                            bool backward, bool training) {
  TORCH_CHECK(directions == 1 || directions == 2, "birnn_ext: directions must be 1 or 2");
  const int device = c10::cuda::current_device();
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const cudaDeviceProp& prop = *at::cuda::getDeviceProperties(device);
  return plan_layer(cell_from_name(cell), dtype, backward, training, steps, batch, hidden,
                    directions, prop, device);
}

// [ok, blocks_per_dir, units, rows_pad, batch_chunk, smem_bytes, grid, k]
std::vector<int64_t> plan_op(std::string_view cell, int64_t hidden, int64_t batch,
                             int64_t steps, int64_t directions, at::ScalarType dtype,
                             bool backward, bool training) {
  const Plan p = plan_on_current_device(cell, hidden, batch, steps, directions, dtype,
                                        backward, training);
  return {p.ok ? 1 : 0, p.blocks_per_dir, p.units, p.rows_pad, p.batch_chunk, p.smem_bytes,
          p.grid, p.k};
}

// "" when the plan is ok, else why not.
std::string why_op(std::string_view cell, int64_t hidden, int64_t batch, int64_t steps,
                   int64_t directions, at::ScalarType dtype, bool backward, bool training) {
  const Plan p = plan_on_current_device(cell, hidden, batch, steps, directions, dtype,
                                        backward, training);
  return p.ok ? std::string() : p.why;
}

// The largest hidden_size in [1, 65536] the persistent kernel accepts, 0 if none. Whether a
// size fits only gets worse as it grows (units per block, the weight slice and K all grow
// with it), so a bisection finds the edge.
int64_t max_hidden_op(std::string_view cell, int64_t batch, int64_t steps, int64_t directions,
                      at::ScalarType dtype, bool backward, bool training) {
  auto fits = [&](int64_t h) {
    return plan_on_current_device(cell, h, batch, steps, directions, dtype, backward, training)
        .ok;
  };
  if (!fits(1)) return 0;
  int64_t lo = 1, hi = 65536;  // fits(lo); fits(hi) unknown
  if (fits(hi)) return hi;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

std::vector<int64_t> launch_counts_op() {
  return {g_launches[0].load(), g_launches[1].load()};
}

}  // namespace
}  // namespace persistent
}  // namespace birnn

// A namespace of its own: these are test and tuning aids, not part of the layer ops'
// contract (birnn_ext's schemas are mirrored in birnn_ext/ops.py and checked by the tests).
TORCH_LIBRARY(birnn_ext_persistent, m) {
  m.def("plan(str cell, int hidden, int batch, int steps, int directions, ScalarType dtype, "
        "bool backward, bool training) -> int[]",
        &birnn::persistent::plan_op);
  m.def("why(str cell, int hidden, int batch, int steps, int directions, ScalarType dtype, "
        "bool backward, bool training) -> str",
        &birnn::persistent::why_op);
  m.def("max_hidden(str cell, int batch, int steps, int directions, ScalarType dtype, "
        "bool backward, bool training) -> int",
        &birnn::persistent::max_hidden_op);
  m.def("launch_counts() -> int[]", &birnn::persistent::launch_counts_op);
}
