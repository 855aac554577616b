// The persistent forward recurrence: the kernel instantiations (every cell x float32 /
// float16 / bfloat16 x inference / training) and the launcher behind
// persistent_supported(ForwardArgs) and persistent_forward_cuda (csrc/cuda/persistent.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>
#include <string>

#include "persistent.h"
#include "persistent_kernels.h"
#include "persistent_launch.h"

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
  if (a.driver_gemms || !a.gates_x.defined()) {
    if (why != nullptr) *why = "no precomputed gates_x";
    return false;
  }
  return plan_recurrence(a.cell, a.output, a.w_hr.defined(), /*backward=*/false,
                         a.reserve.defined(), prop, shape, plan, why);
}

template <typename Cell, typename T, bool kTraining>
void launch_forward(const ForwardArgs& a, const LayerShape& shape, const Plan& plan,
                    cudaStream_t stream) {
  const int64_t T_ = shape.steps, B = shape.batch, D = shape.dirs, H = shape.hidden;
  const int64_t GH = Cell::kGates * H;
  // The op layer (csrc/layer.cpp) built these; their layout is what the kernel indexes.
  const at::Tensor& like = a.output;
  assert_tensor(a.gates_x, {T_, B, D, GH}, like, "gates_x");
  assert_tensor(a.w_hh, {D, GH, H}, like, "w_hh");
  if (a.b_hh.defined()) assert_tensor(a.b_hh, {D, GH}, like, "b_hh");
  if (a.lengths.defined()) assert_tensor(a.lengths, {B}, like, "lengths", at::kLong);
  assert_tensor(a.output, {T_, B, D, H}, like, "output");
  assert_tensor(a.h, {D, B, H}, like, "h");
  if constexpr (Cell::kCellSlot >= 0) assert_tensor(a.c, {D, B, H}, like, "c");
  TORCH_INTERNAL_ASSERT(a.reserve.defined() == kTraining);
  if constexpr (kTraining) {
    assert_tensor(a.reserve, {T_, B, D, Cell::kReserve * H}, like, "reserve");
  }

  // Scratch: h_bcast [2, D, B, H] (storage dtype), h_state and c_state [D, B, H] float32.
  const int64_t states = D * B * H;
  const int64_t region_bytes[3] = {2 * states * int64_t(sizeof(T)), states * 4,
                                   Cell::kCellSlot >= 0 ? states * 4 : 0};
  int64_t offsets[3];
  const Scratch scratch = make_scratch(like, region_bytes, offsets, 3, shape.dirs, stream);

  ForwardParams<T> p{};
  p.gates_x = a.gates_x.data_ptr<T>();
  p.w_hh = a.w_hh.data_ptr<T>();
  p.b_hh = a.b_hh.defined() ? a.b_hh.data_ptr<T>() : nullptr;
  p.lengths = a.lengths.defined() ? a.lengths.data_ptr<int64_t>() : nullptr;
  p.output = a.output.data_ptr<T>();
  p.h = a.h.data_ptr<T>();
  p.c = Cell::kCellSlot >= 0 ? a.c.data_ptr<T>() : nullptr;
  p.reserve = kTraining ? a.reserve.data_ptr<T>() : nullptr;
  p.h_bcast = reinterpret_cast<T*>(scratch.base + offsets[0]);
  p.h_state = reinterpret_cast<float*>(scratch.base + offsets[1]);
  p.c_state = Cell::kCellSlot >= 0 ? reinterpret_cast<float*>(scratch.base + offsets[2])
                                   : nullptr;
  p.counters = scratch.counters;
  static_cast<Geometry&>(p) = geometry_of(shape, plan);
  launch_cooperative(reinterpret_cast<const void*>(&forward_kernel<Cell, T, kTraining>), shape,
                     plan, &p, stream);
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
