// The ops as a CUDA build runs them, on CPU tensors: csrc/layer.h's op bodies (the same
// device-generic checks, input projection and weight-gradient GEMMs as every device) with a
// policy that places the lengths through csrc/cuda/lengths.cu and runs the standard path of
// csrc/cuda/standard.cu, both compiled from their own source under cuda_mock.h. Registered as
// torch.ops.birnn_cuda_emulation.<cell>_forward / _backward for every cell of the registry
// (csrc/cells.h), with the schemas' argument order, so tests/test_cuda_emulation.py can hand
// them exactly what it hands birnn_ext's CPU ops and compare.
#include "cuda_mock.h"  // first: it defines BIRNN_CUDA_EMULATION

#include <torch/library.h>

#include <vector>

#include "../../csrc/cuda/dispatch.h"
#include "../../csrc/layer.h"

namespace {

// csrc/cuda/dispatch.cpp's CudaPolicy with its path fixed to the standard one, for lengths
// given on the CPU (how the modules pass them). Guard and lengths_to_host have nothing to do:
// a CPU tensor stands for device memory and the lengths never live on the "device" alone.
struct EmulatedCudaPolicy {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static void check_sizes(birnn::CellKind, const at::Tensor&, const at::Tensor&) {}
  static bool driver_does_gemms(const at::Tensor&) { return false; }
  static bool driver_does_backward_gemms(const at::Tensor&) { return false; }
  static at::Tensor lengths_to_host(const at::Tensor& lengths) { return lengths; }
  static at::Tensor place_lengths(const birnn::OptTensor&, const birnn::HostLengths& host,
                                  const at::Tensor& input) {
    if (!host.values.defined() || input.size(1) == 0) return at::Tensor();
    return birnn::cuda_lengths_to_device(host.values, input.device());
  }
  static void forward(const birnn::ForwardArgs& a) { birnn::cuda::standard_forward(a); }
  static void backward(const birnn::BackwardArgs& a) { birnn::cuda::standard_backward(a); }
};

// -> [GEMMs, event records, event waits, pool streams handed out] since the last call.
std::vector<int64_t> take_counters() {
  const birnn_emulation::Counters c = birnn_emulation::counters;
  birnn_emulation::counters = {};
  return {c.gemms, c.event_records, c.event_blocks, c.pool_streams};
}

// Whether the (emulated) current stream is capturing a CUDA graph, as the driver asks it.
void set_capturing(bool capturing) {
  c10::cuda::capture_status =
      capturing ? c10::cuda::CaptureStatus::Active : c10::cuda::CaptureStatus::None;
}

}  // namespace

TORCH_LIBRARY(birnn_cuda_emulation, m) {
#define BIRNN_EMULATED_CELL_OPS(name, Kind, Cell)                                          \
  m.def(#name "_forward",                                                                  \
        &::birnn::forward_op<::birnn::CellKind::Kind, EmulatedCudaPolicy>);                 \
  m.def(#name "_backward",                                                                 \
        &::birnn::backward_op<::birnn::CellKind::Kind, EmulatedCudaPolicy>);
  BIRNN_FOR_EACH_CELL(BIRNN_EMULATED_CELL_OPS)
#undef BIRNN_EMULATED_CELL_OPS
  m.def("take_counters", &take_counters);
  m.def("set_capturing", &set_capturing);
}
