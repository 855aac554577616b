// The ops' CPU kernels: csrc/layer.h's op bodies with the CPU's policy, registered for the CPU.
//
// The CPU's own choice: where driver_does_gemms (float32 with AVX2 or AVX-512), the driver runs
// the input projection and the backward's large GEMMs on its own threads (large_gemms.h);
// elsewhere the op runs them as ATen GEMMs around the recurrence.
#include <torch/library.h>

#include "../layer.h"
#include "large_gemms.h"
#include "recurrence_cpu.h"

namespace birnn::cpu {
namespace {

struct CpuPolicy {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static bool driver_does_gemms(const at::Tensor& input) { return cpu::driver_does_gemms(input); }
  // A CPU layer takes only CPU lengths (check_lengths), so nothing is ever read back.
  static at::Tensor lengths_to_host(const at::Tensor& lengths) { return lengths; }
  static at::Tensor place_lengths(const OptTensor&, const HostLengths& host, const at::Tensor&) {
    return host.values;
  }
  static void forward(const ForwardArgs& args) { forward_recurrence_cpu(args); }
  static void backward(const BackwardArgs& args) { backward_recurrence_cpu(args); }
};

}  // namespace
}  // namespace birnn::cpu

#define BIRNN_DEVICE_POLICY ::birnn::cpu::CpuPolicy
TORCH_LIBRARY_IMPL(birnn_ext, CPU, m) {
  BIRNN_REGISTER_OPS(m)
}
