// The ops' CUDA kernels and the one dispatch point of the CUDA recurrence: each cell's forward
// and backward op made of the device-generic parts (csrc/layer.h), the lengths placed on the
// device, and the kernel path that runs the layer, chosen from BIRNN_EXT_KERNEL and the
// layer's shape; registered for CUDA.
//
// Why one place. The benchmark records name the path that ran (birnn_ext.kernel_path() asks
// chosen_path() with the configuration's shape), so the choice must be made by exactly one
// function that both the ops and that query call. The variable is read on every layer call
// (a getenv: nothing next to the layer's launches), so a test or benchmark can switch paths
// within one process.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cctype>
#include <cstdlib>
#include <string>

#include "../layer.h"
#include "dispatch.h"

namespace birnn {
namespace cuda {
namespace {

// One kernel path: its name (what BIRNN_EXT_KERNEL and kernel_path() say), its entry points,
// and whether it can run a layer of a given shape (nullptr: any layer).
struct Path {
  const char* name;
  void (*forward)(const ForwardArgs&);
  void (*backward)(const BackwardArgs&);
  bool (*supports)(const LayerShape&);
};

// Every path built into this binary. A new path adds its row here.
constexpr Path kPaths[] = {
    {"standard", &standard_forward, &standard_backward, nullptr},
    {"persistent", &persistent_forward, &persistent_backward, &persistent_supports},
};

constexpr const char* kEnvVar = "BIRNN_EXT_KERNEL";

const Path* find_path(const std::string& name) {
  for (const Path& p : kPaths) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

std::string requested_path() {
  const char* env = std::getenv(kEnvVar);
  std::string value = env != nullptr ? env : "";
  if (value.empty()) value = "auto";
  for (char& ch : value) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return value;
}

const Path& choose(const LayerShape& shape) {
  const std::string requested = requested_path();
  if (requested == "auto") {
    // No GPU record has yet shown a path other than the standard one correct and faster.
    return kPaths[0];
  }
  const Path* path = find_path(requested);
  if (path == nullptr) {
    std::string known = "auto";
    for (const Path& p : kPaths) known += std::string(", ") + p.name;
    TORCH_CHECK(false, "birnn_ext: unknown ", kEnvVar, "=", requested, "; expected one of: ",
                known);
  }
  TORCH_CHECK(path->supports == nullptr || path->supports(shape), "birnn_ext: ", kEnvVar, "=",
              requested, " cannot run this layer (H = ", shape.H, ", B = ", shape.B,
              ", dtype ", shape.dtype, "); use ", kEnvVar, "=auto");
  return *path;
}

LayerShape shape_of(const at::Tensor& output, const at::Tensor& w_hh, CellKind cell,
                    bool training, bool backward) {
  // output [T, B, D, Hout], w_hh [D, G*H, Hout]
  LayerShape s;
  s.dtype = output.scalar_type();
  s.G = num_gates(cell);
  s.T = output.size(0), s.B = output.size(1), s.D = output.size(2), s.Hout = output.size(3);
  s.H = w_hh.size(1) / s.G;
  s.training = training;
  s.backward = backward;
  return s;
}

}  // namespace

std::string chosen_path(const LayerShape& shape) { return choose(shape).name; }

at::ScalarType dtype_from_name(const std::string& name) {
  if (name.empty()) return at::ScalarType::Undefined;
  for (const at::ScalarType t : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    // "float32" for torch.float32: Python's str(dtype) without "torch."
    if (name == c10::getDtypeNames(t).first) return t;
  }
  TORCH_CHECK(false, "birnn_ext: the CUDA recurrence has no path for dtype ", name);
}

}  // namespace cuda

namespace cuda {
namespace {

struct CudaPolicy {
  using Guard = c10::cuda::CUDAGuard;
  static void check_sizes(CellKind, const at::Tensor&, const at::Tensor&) {}  // paths check theirs
  // The op projects the input and computes the backward's large GEMMs with ATen (cuBLAS).
  static bool driver_does_gemms(const at::Tensor&) { return false; }
  static bool driver_does_backward_gemms(const at::Tensor&) { return false; }
  static at::Tensor lengths_to_host(const at::Tensor& lengths) {
    return cuda_lengths_to_host(lengths);
  }
  // On the input's device; lengths given on the CPU (as the modules pass them) are copied
  // without a host sync.
  static at::Tensor place_lengths(const OptTensor& given, const HostLengths& host,
                                  const at::Tensor& input) {
    if (!host.values.defined() || input.size(1) == 0) return at::Tensor();
    return given->is_cpu() ? cuda_lengths_to_device(host.values, input.device())
                           : given->contiguous();
  }
  static void forward(const ForwardArgs& a) {
    choose(shape_of(a.output, a.w_hh, a.cell, a.reserve.defined(), false)).forward(a);
  }
  static void backward(const BackwardArgs& a) {
    choose(shape_of(a.output, a.w_hh, a.cell, true, true)).backward(a);
  }
};

}  // namespace
}  // namespace cuda
}  // namespace birnn

#define BIRNN_DEVICE_POLICY ::birnn::cuda::CudaPolicy
TORCH_LIBRARY_IMPL(birnn_ext, CUDA, m) {
  BIRNN_REGISTER_OPS(m)
}
