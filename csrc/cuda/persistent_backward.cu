// The persistent backward recurrence: the kernel instantiations (every cell x float32 /
// float16 / bfloat16) and the launcher behind persistent_supported(BackwardArgs) and
// persistent_backward_cuda (csrc/cuda/persistent.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "persistent.h"
#include "persistent_launch.h"
#include "persistent_params.h"

namespace birnn {
namespace persistent {

const void* backward_kernel_for(CellKind cell, at::ScalarType dtype) {
  if (!has_kernels(dtype)) return nullptr;
  const void* kernel = nullptr;
  dispatch_kernel_types(cell, dtype, [&](auto cell_tag, auto type_tag) {
    kernel = reinterpret_cast<const void*>(
        &backward_kernel<decltype(cell_tag), decltype(type_tag)>);
  });
  return kernel;
}

namespace {

// The rules csrc/cuda/persistent.h lists, for a backward. On success fills shape and plan.
bool backward_plan(const BackwardArgs& a, const cudaDeviceProp& prop, LayerShape* shape,
                   Plan* plan, std::string* why) {
  if (a.grad_input.defined()) {
    if (why != nullptr) *why = "the driver is asked to run the large GEMMs";
    return false;
  }
  if (!a.dgates_x.defined() || !a.output.defined() ||
      a.dgates_x.device() != a.output.device() ||
      a.dgates_x.scalar_type() != a.output.scalar_type()) {
    if (why != nullptr) *why = "not a CUDA layer";
    return false;
  }
  return plan_recurrence(a.cell, a.output, a.w_hr.defined(), /*backward=*/true,
                         /*training=*/true, prop, shape, plan, why);
}

template <typename Cell, typename T>
void launch_backward(const BackwardArgs& a, const LayerShape& shape, const Plan& plan,
                     cudaStream_t stream) {
  const Geometry g = geometry_of(shape, plan);
  const Scratch scratch = make_scratch(a.dgates_x, backward_scratch_bytes<Cell, T>(g), g.dirs,
                                       stream);
  const BackwardParams<T> params = make_backward_params<Cell, T>(
      a, g, scratch.base, scratch.offsets.data(), scratch.counters);
  launch_cooperative(reinterpret_cast<const void*>(&backward_kernel<Cell, T>), shape, plan,
                     &params, stream);
}

}  // namespace
}  // namespace persistent

bool persistent_supported(const BackwardArgs& args, const cudaDeviceProp& prop,
                          std::string* why) {
  persistent::LayerShape shape;
  persistent::Plan plan;
  return persistent::backward_plan(args, prop, &shape, &plan, why);
}

void persistent_backward_cuda(const BackwardArgs& args, cudaStream_t stream) {
  using namespace persistent;
  TORCH_CHECK(args.dgates_x.defined() && args.dgates_x.is_cuda(),
              "birnn_ext: persistent_backward_cuda needs CUDA tensors");
  const c10::cuda::CUDAGuard guard(args.dgates_x.device());
  const cudaDeviceProp& prop = *at::cuda::getDeviceProperties(args.dgates_x.get_device());
  LayerShape shape;
  Plan plan;
  std::string why;
  TORCH_CHECK(backward_plan(args, prop, &shape, &plan, &why),
              "birnn_ext: the persistent kernel cannot run this layer: ", why);
  dispatch_kernel_types(args.cell, args.dgates_x.scalar_type(), [&](auto cell_tag, auto type_tag) {
    launch_backward<decltype(cell_tag), decltype(type_tag)>(args, shape, plan, stream);
  });
  count_launch(1);
}

}  // namespace birnn
