// The persistent forward recurrence: the kernel instantiations (every cell x float32 /
// float16 / bfloat16 x inference / training) and the launcher behind
// persistent_supported(ForwardArgs) and persistent_forward_cuda (csrc/cuda/persistent.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "persistent.h"
#include "persistent_launch.h"
#include "persistent_params.h"

namespace birnn {
namespace persistent {

const void* forward_kernel_for(CellKind cell, at::ScalarType dtype, bool training) {
  if (!has_kernels(dtype)) return nullptr;
  const void* kernel = nullptr;
  dispatch_kernel_types(cell, dtype, [&](auto cell_tag, auto type_tag) {
    using Cell = decltype(cell_tag);
    using T = decltype(type_tag);
    kernel = training ? reinterpret_cast<const void*>(&forward_kernel<Cell, T, true>)
                      : reinterpret_cast<const void*>(&forward_kernel<Cell, T, false>);
  });
  return kernel;
}

namespace {

// The rules csrc/cuda/persistent.h lists, for a forward. On success fills shape and plan.
bool forward_plan(const ForwardArgs& a, const cudaDeviceProp& prop, LayerShape* shape,
                  Plan* plan, std::string* why) {
  if (!a.gates_x.defined()) {
    if (why != nullptr) *why = "no precomputed gates_x";
    return false;
  }
  return plan_recurrence(a.cell, a.output, a.w_hr.defined(), /*backward=*/false,
                         a.reserve.defined(), prop, shape, plan, why);
}

template <typename Cell, typename T, bool kTraining>
void launch_forward(const ForwardArgs& a, const LayerShape& shape, const Plan& plan,
                    cudaStream_t stream) {
  const Geometry g = geometry_of(shape, plan);
  const Scratch scratch = make_scratch(a.output, forward_scratch_bytes<Cell, T>(g), g.dirs,
                                       stream);
  const ForwardParams<T> params = make_forward_params<Cell, T, kTraining>(
      a, g, scratch.base, scratch.offsets.data(), scratch.counters);
  launch_cooperative(reinterpret_cast<const void*>(&forward_kernel<Cell, T, kTraining>), shape,
                     plan, &params, stream);
}

}  // namespace
}  // namespace persistent

bool persistent_supported(const ForwardArgs& args, const cudaDeviceProp& prop,
                          std::string* why) {
  persistent::LayerShape shape;
  persistent::Plan plan;
  return persistent::forward_plan(args, prop, &shape, &plan, why);
}

void persistent_forward_cuda(const ForwardArgs& args, cudaStream_t stream) {
  using namespace persistent;
  TORCH_CHECK(args.output.defined() && args.output.is_cuda(),
              "birnn_ext: persistent_forward_cuda needs CUDA tensors");
  const c10::cuda::CUDAGuard guard(args.output.device());
  const cudaDeviceProp& prop = *at::cuda::getDeviceProperties(args.output.get_device());
  LayerShape shape;
  Plan plan;
  std::string why;
  TORCH_CHECK(forward_plan(args, prop, &shape, &plan, &why),
              "birnn_ext: the persistent kernel cannot run this layer: ", why);
  const bool training = args.reserve.defined();
  dispatch_kernel_types(args.cell, args.output.scalar_type(), [&](auto cell_tag, auto type_tag) {
    using Cell = decltype(cell_tag);
    using T = decltype(type_tag);
    if (training) {
      launch_forward<Cell, T, true>(args, shape, plan, stream);
    } else {
      launch_forward<Cell, T, false>(args, shape, plan, stream);
    }
  });
  count_launch(0);
}

}  // namespace birnn
