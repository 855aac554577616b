// The host side of a persistent launch that needs no CUDA runtime: the layout checks of the
// argument tensors, the scratch layout, and the kernels' parameter structs filled from
// ForwardArgs / BackwardArgs (csrc/birnn.h). Shared by the CUDA launchers
// (persistent_forward.cu, persistent_backward.cu) and the CPU emulation of the kernels
// (tests/persistent_emulation/), so the emulation tests this wiring too.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <optional>
#include <vector>

#include "../birnn.h"
#include "persistent_kernels.h"

namespace birnn {
namespace persistent {

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

// Internal invariant (the op layer has checked the user's arguments): `t` is defined,
// contiguous, on like's device, of like's dtype (or `dtype` when given) and of shape `sizes`.
inline void assert_tensor(const at::Tensor& t, at::IntArrayRef sizes, const at::Tensor& like,
                          const char* name, std::optional<at::ScalarType> dtype = std::nullopt) {
  TORCH_INTERNAL_ASSERT(t.defined(), "birnn_ext: persistent: ", name, " is undefined");
  TORCH_INTERNAL_ASSERT(t.device() == like.device(), "birnn_ext: persistent: ", name,
                        " is on ", t.device(), ", expected ", like.device());
  TORCH_INTERNAL_ASSERT(t.scalar_type() == dtype.value_or(like.scalar_type()),
                        "birnn_ext: persistent: ", name, " has dtype ", t.scalar_type());
  TORCH_INTERNAL_ASSERT(t.sizes() == sizes, "birnn_ext: persistent: ", name, " has shape ",
                        t.sizes(), ", expected ", sizes);
  TORCH_INTERNAL_ASSERT(t.is_contiguous(), "birnn_ext: persistent: ", name,
                        " is not contiguous");
}

// Bytes of each scratch region of a forward launch, in order: h_bcast [2, D, B, H] (storage
// type), h_state [D, B, H] float32, c_state [D, B, H] float32 (LSTM; else 0 bytes).
template <typename Cell, typename T>
std::vector<int64_t> forward_scratch_bytes(const Geometry& g) {
  const int64_t states = int64_t(g.dirs) * g.batch * g.hidden;
  return {2 * states * int64_t(sizeof(T)), states * 4, Cell::kCellSlot >= 0 ? states * 4 : 0};
}

// Bytes of each scratch region of a backward launch, in order: dh_state and dc_state
// [D, B, H] float32 (dc_state LSTM only).
template <typename Cell, typename T>
std::vector<int64_t> backward_scratch_bytes(const Geometry& g) {
  const int64_t states = int64_t(g.dirs) * g.batch * g.hidden;
  return {states * 4, Cell::kCellSlot >= 0 ? states * 4 : 0};
}

// The forward kernel's parameters: the args' tensors (their layout asserted: the kernel
// indexes them as csrc/birnn.h documents), the scratch regions at base + offsets[i] (as
// forward_scratch_bytes lists them) and the zeroed step counters.
template <typename Cell, typename T, bool kTraining>
ForwardParams<T> make_forward_params(const ForwardArgs& a, const Geometry& g,
                                     unsigned char* base, const int64_t* offsets,
                                     unsigned* counters) {
  const int64_t T_ = g.steps, B = g.batch, D = g.dirs, H = g.hidden;
  const int64_t GH = Cell::kGates * H;
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
  ForwardParams<T> p{};
  static_cast<Geometry&>(p) = g;
  p.gates_x = a.gates_x.data_ptr<T>();
  p.w_hh = a.w_hh.data_ptr<T>();
  p.b_hh = a.b_hh.defined() ? a.b_hh.data_ptr<T>() : nullptr;
  p.lengths = a.lengths.defined() ? a.lengths.data_ptr<int64_t>() : nullptr;
  p.output = a.output.data_ptr<T>();
  p.h = a.h.data_ptr<T>();
  p.c = Cell::kCellSlot >= 0 ? a.c.data_ptr<T>() : nullptr;
  p.reserve = kTraining ? a.reserve.data_ptr<T>() : nullptr;
  p.h_bcast = reinterpret_cast<T*>(base + offsets[0]);
  p.h_state = reinterpret_cast<float*>(base + offsets[1]);
  p.c_state = Cell::kCellSlot >= 0 ? reinterpret_cast<float*>(base + offsets[2]) : nullptr;
  p.counters = counters;
  return p;
}

// The backward kernel's parameters, as make_forward_params (scratch: backward_scratch_bytes).
template <typename Cell, typename T>
BackwardParams<T> make_backward_params(const BackwardArgs& a, const Geometry& g,
                                       unsigned char* base, const int64_t* offsets,
                                       unsigned* counters) {
  const int64_t T_ = g.steps, B = g.batch, D = g.dirs, H = g.hidden;
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
  // The kernel writes dgates_h only for a cell that splits it from dgates_x, and reads the
  // next step's product from dgates_h: the two must be the same memory otherwise.
  TORCH_INTERNAL_ASSERT(Cell::kSplitHiddenGrad != a.dgates_h.is_same(a.dgates_x),
                        "birnn_ext: dgates_h must be dgates_x exactly when the cell does not "
                        "split them");
  BackwardParams<T> p{};
  static_cast<Geometry&>(p) = g;
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
  p.dh_state = reinterpret_cast<float*>(base + offsets[0]);
  p.dc_state = kLstm ? reinterpret_cast<float*>(base + offsets[1]) : nullptr;
  p.counters = counters;
  return p;
}

}  // namespace persistent
}  // namespace birnn
