// The CUDA kernel paths of the recurrence and the one place that chooses among them
// (csrc/cuda/dispatch.cpp).
//
// A path is a pair of entry points that run one layer's recurrence, both directions, for the
// op (csrc/layer.cpp has already projected the input and checked every argument). Adding a
// path is one new file defining its pair (and, if it has size limits, a `supports` function),
// their declarations below, and one row in dispatch.cpp's table. BIRNN_EXT_KERNEL picks a path
// by name; `auto` takes the standard path until a committed GPU record shows another one
// correct and faster (shared/BENCHMARKS.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "../birnn.h"

namespace birnn {

// A layer's lengths between the host and a CUDA device (csrc/cuda/lengths.cu): host_lengths
// [B] int64 (contiguous, on the CPU) copied to `device` with no host sync and safely under
// CUDA graph capture; and device lengths read back to the host (a sync, refused with a clear
// error during graph capture).
at::Tensor cuda_lengths_to_device(const at::Tensor& host_lengths, const at::Device& device);
at::Tensor cuda_lengths_to_host(const at::Tensor& lengths);

namespace cuda {

// What a path's choice may depend on: a layer's sizes and flags. A value of -1 means "not
// known" (a query made without a layer, such as `python -m birnn_ext.info`).
struct LayerShape {
  at::ScalarType dtype = at::ScalarType::Undefined;
  int64_t G = -1, T = -1, B = -1, I = -1, H = -1, Hout = -1, D = -1;
  bool training = false;
  bool backward = false;  // the choice for the backward recurrence (its limits differ)
};

// The standard path (csrc/cuda/standard.cu): a cuBLAS GEMM and a fused cell kernel per step.
void standard_forward(const ForwardArgs& args);
void standard_backward(const BackwardArgs& args);

// The persistent path (csrc/cuda/persistent*.cu, adapters in persistent_path.cpp): one
// cooperative launch per layer, every step of both directions, W_hh held on chip. Never run
// on a GPU yet, so `auto` does not choose it; persistent_supports() is its size limits on the
// current device (true when the shape is not known).
void persistent_forward(const ForwardArgs& args);
void persistent_backward(const BackwardArgs& args);
bool persistent_supports(const LayerShape& shape);

// The name of the path BIRNN_EXT_KERNEL (read now) selects for a layer of this shape, e.g.
// "standard"; raises a clear error for an unknown value or a path that is not built or cannot
// run this layer. The ops call the same function, so what it names is what runs.
std::string chosen_path(const LayerShape& shape);

// torch's dtype name ("float32", "bfloat16", ...; "" for unknown) as a ScalarType, for a
// query made from Python.
at::ScalarType dtype_from_name(const std::string& name);

}  // namespace cuda
}  // namespace birnn
