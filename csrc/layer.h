// The device-generic parts of the ops, from which each device's op bodies are made
// (csrc/cpu/ops_cpu.cpp, csrc/cuda/dispatch.cpp): the argument checks (with torch.nn's
// messages where torch.nn has one), the buffers a driver writes, the input projection of both
// directions over all steps as ONE GEMM, and after the backward recurrence dx and the weight
// gradients as large GEMMs. A device decides whether its driver does those GEMMs itself.
//
// The op signatures are those of csrc/ops.cpp's schemas; shapes are csrc/birnn.h's.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <tuple>

#include "birnn.h"

namespace birnn {

using ForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  at::Tensor, at::Tensor, at::Tensor>;

// A layer's lengths, checked on the host: every value in [0, T].
struct HostLengths {
  at::Tensor values;  // [B] int64 on the CPU, contiguous; undefined: every sequence is T long
  int64_t max;        // the longest (T without lengths, 0 for an empty batch)
};

// Checks `lengths` (undefined, or [B] int64 on the CPU or the input's device) against the
// layer; `to_host` brings lengths on the input's (non-CPU) device to the host, and is not
// called for lengths already on the CPU.
HostLengths check_lengths(const OptTensor& lengths, const at::Tensor& input,
                          at::Tensor (*to_host)(const at::Tensor&));

// Checks a layer's arguments (all but lengths) without allocating anything: ranks, shapes,
// devices and dtypes, with torch.nn's messages where torch.nn has one.
void check_layer_args(CellKind kind, const at::Tensor& input, const at::Tensor& hx,
                      const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr);

// A buffer a driver must write. With BIRNN_EXT_POISON=1 (the tests) it is filled with NaN
// first, so a value the driver forgot cannot pass unnoticed.
at::Tensor driver_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts);

// The forward op's arguments (all but lengths, which the device places: check_lengths)
// checked and turned into the driver's: outputs allocated (reserve when training), h and c
// copied for the driver to update. With `project_input`, gates_x is the input projection of
// both directions as one GEMM; without it gates_x is left undefined for the driver.
ForwardArgs forward_args(CellKind kind, const at::Tensor& input, const at::Tensor& hx,
                         const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                         bool training, bool project_input);

// The forward op's results from the driver's arguments after the recurrence.
ForwardResult forward_result(const ForwardArgs& args);

// The backward op's arguments checked and turned into the driver's. With
// `driver_does_gemms`, grad_input, grad_w_ih and grad_w_hh are allocated for the driver to
// write; otherwise backward_result computes them.
BackwardArgs backward_args(CellKind kind, const at::Tensor& grad_output,
                           const at::Tensor& grad_h_n, const OptTensor& grad_c_n,
                           const at::Tensor& input, const at::Tensor& hx, const OptTensor& cx,
                           const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                           const at::Tensor& output, const at::Tensor& reserve,
                           bool driver_does_gemms);

// The backward op's results after the recurrence: dx and the weight gradients as large GEMMs
// where the driver did not write them, the bias gradients, and dW_hr.
BackwardResult backward_result(const BackwardArgs& args, bool has_bias);

// The ops' bodies, written once for every device. A device supplies a policy P:
//   P::Guard                          constructed from the input's device for the op's span
//   P::check_sizes(kind, input, w_hh) its own size limits, before anything is allocated
//   P::driver_does_gemms(input)       whether its driver runs the input projection itself
//   P::driver_does_backward_gemms(input)  whether its driver runs the backward's large GEMMs
//                                     (dx, dW_ih, dW_hh) itself, else backward_result does
//   P::lengths_to_host(lengths)       brings lengths on the device to the host
//   P::place_lengths(given, host, input)  the lengths as its driver takes them
//   P::forward(args), P::backward(args)   its recurrence drivers (called only when B > 0)
template <CellKind Kind, typename P>
ForwardResult forward_op(const at::Tensor& input, const OptTensor& lengths, const at::Tensor& hx,
                         const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                         bool training) {
  // The caller chose the dtype (birnn_ext/ops.py applies torch.nn's autocast policy); the
  // GEMMs in here must not be recast by an autocast that is still on.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const typename P::Guard guard(input.device());
  // Every check before the first allocation.
  check_layer_args(Kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  P::check_sizes(Kind, input, w_hh);
  const HostLengths host = check_lengths(lengths, input, &P::lengths_to_host);
  ForwardArgs args = forward_args(Kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, training,
                                  /*project_input=*/!P::driver_does_gemms(input));
  args.lengths = P::place_lengths(lengths, host, input);
  args.max_length = host.max;
  if (input.size(1) > 0) P::forward(args);
  return forward_result(args);
}

template <CellKind Kind, typename P>
BackwardResult backward_op(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                           const OptTensor& grad_c_n, const at::Tensor& input,
                           const OptTensor& lengths, const at::Tensor& hx, const OptTensor& cx,
                           const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                           const at::Tensor& output, const at::Tensor& reserve) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const typename P::Guard guard(input.device());
  check_layer_args(Kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  P::check_sizes(Kind, input, w_hh);
  const HostLengths host = check_lengths(lengths, input, &P::lengths_to_host);
  BackwardArgs args = backward_args(Kind, grad_output, grad_h_n, grad_c_n, input, hx, cx, w_ih,
                                    w_hh, b_ih, b_hh, w_hr, output, reserve,
                                    P::driver_does_backward_gemms(input));
  args.lengths = P::place_lengths(lengths, host, input);
  args.max_length = host.max;
  if (input.size(1) > 0) P::backward(args);
  return backward_result(args, b_ih.has_value() && b_ih->defined());
}

}  // namespace birnn

// Registers every cell's forward and backward op (csrc/cells.h's registry) for a device's
// policy, inside its TORCH_LIBRARY_IMPL block.
#define BIRNN_IMPL_CELL_OPS(name, Kind, Cell)                                                  \
  m.impl(#name "_forward", &::birnn::forward_op<::birnn::CellKind::Kind, BIRNN_DEVICE_POLICY>); \
  m.impl(#name "_backward", &::birnn::backward_op<::birnn::CellKind::Kind, BIRNN_DEVICE_POLICY>);
#define BIRNN_REGISTER_OPS(m) BIRNN_FOR_EACH_CELL(BIRNN_IMPL_CELL_OPS)
