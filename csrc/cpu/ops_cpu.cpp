// The ops' CPU kernels: csrc/layer.h's op bodies with the CPU's policy, registered for the CPU.
//
// The CPU's own choice: where driver_does_gemms (float32 with AVX2 or AVX-512), the driver runs
// the input projection on its own threads (large_gemms.h), and the backward's large GEMMs too
// unless driver_does_backward_gemms leaves them to ATen's (MKL, where it is faster); elsewhere
// the op runs them as ATen GEMMs around the recurrence.
#include <torch/library.h>

#include <limits>

#include "../layer.h"
#include "large_gemms.h"
#include "recurrence_cpu.h"

namespace birnn::cpu {
namespace {

struct CpuPolicy {
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  // The per-step GEMMs that go through BLAS (double, reduced precision, no AVX2) take 32-bit
  // sizes and leading dimensions: the batch (their M) and D*G*H (their widest N, K or leading
  // dimension) must fit. Every other index is 64-bit (tests/test_sizes.py). Malformed
  // shapes are left to the shared checks, which name them.
  static void check_sizes(CellKind kind, const at::Tensor& input, const at::Tensor& w_hh) {
    if (input.dim() != 3 || w_hh.dim() != 3) return;
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    const int64_t G = num_gates(kind);
    TORCH_CHECK(input.size(1) <= kMax, "birnn_ext: on the CPU the batch size can be at most ",
                kMax, " (the per-step BLAS calls take 32-bit sizes); got ", input.size(1));
    TORCH_CHECK(w_hh.size(0) * w_hh.size(1) <= kMax, "birnn_ext: on the CPU num_directions * "
                "gates * hidden_size can be at most ", kMax, " (the per-step BLAS calls take "
                "32-bit sizes); got ", w_hh.size(0), " * ", G, " * ", w_hh.size(1) / G);
  }
  static bool driver_does_gemms(const at::Tensor& input) { return cpu::driver_does_gemms(input); }
  static bool driver_does_backward_gemms(const at::Tensor& input) {
    return cpu::driver_does_backward_gemms(input);
  }
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
