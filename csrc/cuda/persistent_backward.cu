// The persistent backward recurrence: the kernel instantiations (every cell x float32 /
// float16 / bfloat16) and the launcher behind persistent_supported(BackwardArgs) and
// persistent_backward_cuda (csrc/cuda/persistent.h).
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
  if (a.driver_gemms) {
    if (why != nullptr) *why = "the driver is asked to run the large GEMMs";
    return false;
  }
  if (!a.dgates_x.defined() || (a.output.defined() && a.dgates_x.device() != a.output.device())) {
    if (why != nullptr) *why = "not a CUDA layer";
    return false;
  }
  return plan_recurrence(a.cell, a.output, a.w_hr.defined(), /*backward=*/true,
                         /*training=*/true, prop, shape, plan, why);
}

template <typename Cell, typename T>
void launch_backward(const BackwardArgs& a, const LayerShape& shape, const Plan& plan,
                     cudaStream_t stream) {
  const int64_t T_ = shape.steps, B = shape.batch, D = shape.dirs, H = shape.hidden;
  const int64_t GH = Cell::kGates * H;
  constexpr bool kLstm = Cell::kCellSlot >= 0;
  const at::Tensor& like = a.dgates_x;
  assert_tensor(a.grad_output, {T_, B, D, H}, like, "grad_output");
  if (a.lengths.defined()) assert_tensor(a.lengths, {B}, like, "lengths", at::kLong);
  assert_tensor(a.w_hh, {D, GH, H}, like, "w_hh");
  assert_tensor(a.output, {T_, B, D, H}, like, "output");
  assert_tensor(a.h0, {D, B, H}, like, "h0");
  if constexpr (kLstm) assert_tensor(a.c0, {D, B, H}, like, "c0");
  assert_tensor(a.reserve, {T_, B, D, Cell::kReserve * H}, like, "reserve");
  assert_tensor(a.dh, {D, B, H}, like, "dh");
  if constexpr (kLstm) assert_tensor(a.dc, {D, B, H}, like, "dc");
  assert_tensor(a.dgates_x, {T_, B, D, GH}, like, "dgates_x");
  assert_tensor(a.dgates_h, {T_, B, D, GH}, like, "dgates_h");
  TORCH_INTERNAL_ASSERT(Cell::kSplitHiddenGrad || a.dgates_h.is_same(a.dgates_x),
                        "birnn_ext: dgates_h must be dgates_x for this cell");
  TORCH_INTERNAL_ASSERT(!Cell::kSplitHiddenGrad || !a.dgates_h.is_same(a.dgates_x),
                        "birnn_ext: a GRU needs its own dgates_h");

  // Scratch: dh_state and dc_state [D, B, H] float32.
  const int64_t states = D * B * H;
  const int64_t region_bytes[2] = {states * 4, kLstm ? states * 4 : 0};
  int64_t offsets[2];
  const Scratch scratch = make_scratch(like, region_bytes, offsets, 2, shape.dirs, stream);

  BackwardParams<T> p{};
  p.grad_output = a.grad_output.data_ptr<T>();
  p.lengths = a.lengths.defined() ? a.lengths.data_ptr<int64_t>() : nullptr;
  p.w_hh = a.w_hh.data_ptr<T>();
  p.output = a.output.data_ptr<T>();
  p.h0 = a.h0.data_ptr<T>();
  p.c0 = kLstm ? a.c0.data_ptr<T>() : nullptr;
  p.reserve = Cell::kReserve > 0 ? a.reserve.data_ptr<T>() : nullptr;
  p.dh = a.dh.data_ptr<T>();
  p.dc = kLstm ? a.dc.data_ptr<T>() : nullptr;
  p.dgates_x = a.dgates_x.data_ptr<T>();
  p.dgates_h = a.dgates_h.data_ptr<T>();
  p.dh_state = reinterpret_cast<float*>(scratch.base + offsets[0]);
  p.dc_state = kLstm ? reinterpret_cast<float*>(scratch.base + offsets[1]) : nullptr;
  p.counters = scratch.counters;
  static_cast<Geometry&>(p) = geometry_of(shape, plan);
  launch_cooperative(reinterpret_cast<const void*>(&backward_kernel<Cell, T>), shape, plan, &p,
                     stream);
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
