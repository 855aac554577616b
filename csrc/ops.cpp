// The op schemas and the Python module `birnn_ext._C`.
//
// Every cell has a forward and a backward op covering both directions of one layer
// (shapes: csrc/birnn.h). The schemas are also written in birnn_ext/ops.py for the pure-Python
// fallback; tests/test_ops.py checks the two agree. Fake kernels and autograd are registered
// in Python (birnn_ext/ops.py).
#include <torch/extension.h>
#include <torch/library.h>

#include "birnn.h"
#include "cpu/isa.h"
#ifdef WITH_CUDA
#include "cuda/dispatch.h"
#endif

#ifndef BIRNN_CUDA_ARCHS
#define BIRNN_CUDA_ARCHS ""
#endif
#ifndef BIRNN_TORCH_VERSION
#define BIRNN_TORCH_VERSION ""
#endif
#ifndef BIRNN_CUDA_VERSION
#define BIRNN_CUDA_VERSION ""
#endif

TORCH_LIBRARY(birnn_ext, m) {
  for (const char* cell : {"rnn_tanh", "rnn_relu", "lstm", "gru"}) {
    const std::string name(cell);
    m.def((name +
           "_forward(Tensor input, Tensor? lengths, Tensor hx, Tensor? cx, Tensor w_ih, "
          "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool training) "
          "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)")
              .c_str());
    m.def((name +
           "_backward(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor input, "
          "Tensor? lengths, Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
          "Tensor? b_hh, Tensor? w_hr, Tensor output, Tensor reserve) -> (Tensor grad_input, Tensor grad_hx, "
          "Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
          "Tensor grad_b_hh, Tensor grad_w_hr)")
              .c_str());
  }
}

#ifndef WITH_CUDA
// A CPU-only build has no CUDA recurrence; the op reports it instead of failing to link.
namespace birnn {
void forward_recurrence_cuda(const ForwardArgs&) {
  TORCH_CHECK(false, "birnn_ext was built without CUDA; reinstall with a CUDA toolkit");
}
void backward_recurrence_cuda(const BackwardArgs&) {
  TORCH_CHECK(false, "birnn_ext was built without CUDA; reinstall with a CUDA toolkit");
}
at::Tensor cuda_lengths_to_device(const at::Tensor&, const at::Device&) {
  TORCH_CHECK(false, "birnn_ext was built without CUDA; reinstall with a CUDA toolkit");
}
at::Tensor cuda_lengths_to_host(const at::Tensor&) {
  TORCH_CHECK(false, "birnn_ext was built without CUDA; reinstall with a CUDA toolkit");
}
}  // namespace birnn
#endif

// What this binary was built with, for `python -m birnn_ext.info`.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("build_info", [] {
    pybind11::dict info;
#ifdef WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = BIRNN_CUDA_ARCHS;
    info["cuda_version"] = BIRNN_CUDA_VERSION;
    info["torch_version"] = BIRNN_TORCH_VERSION;
    return info;
  });
  module.def(
      "cpu_simd",
      [] { return birnn::cpu::isa_name(birnn::cpu::cpu_isa()); },
      "The CPU kernels' instruction set on this machine (csrc/cpu/isa.h): 'avx512' or 'avx2' "
      "(float32 GEMMs on birnn_ext's own kernel for that ISA, SIMD cells) or 'scalar' (BLAS "
      "GEMMs, scalar cells)");
#ifdef WITH_CUDA
  module.def(
      "cuda_kernel_path",
      [](const std::string& dtype, int64_t G, int64_t T, int64_t B, int64_t I, int64_t H,
         int64_t Hout, int64_t D, bool training) {
        birnn::cuda::LayerShape s;
        s.dtype = birnn::cuda::dtype_from_name(dtype);
        s.G = G, s.T = T, s.B = B, s.I = I, s.H = H, s.Hout = Hout, s.D = D;
        s.training = training;
        return birnn::cuda::chosen_path(s);
      },
      "The CUDA kernel path (csrc/cuda/dispatch.cpp) a layer of this shape runs now, as "
      "BIRNN_EXT_KERNEL selects it; -1 (or \"\" for dtype) for what is not known");
#endif
}
