// The op schemas and the Python module `birnn_ext._C`.
//
// Every cell of the registry (BIRNN_FOR_EACH_CELL, csrc/cells.h) has a forward and a backward
// op covering both directions of one layer (shapes: csrc/birnn.h); each device registers its
// kernels for them (csrc/cpu/ops_cpu.cpp, csrc/cuda/dispatch.cpp). The schemas are also
// written in birnn_ext/ops.py for the pure-Python fallback; tests/test_ops.py checks the two
// agree. Fake kernels and autograd are registered in Python (birnn_ext/ops.py), which learns
// the cells from build_info()["cells"].
#include <torch/extension.h>
#include <torch/library.h>

#include "birnn.h"
#include "cpu/isa.h"
#include "cpu/large_gemms.h"
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

namespace birnn {
namespace {

constexpr const char* kForwardSchema =
    "_forward(Tensor input, Tensor? lengths, Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, "
    "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool training) "
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)";
constexpr const char* kBackwardSchema =
    "_backward(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, Tensor input, "
    "Tensor? lengths, Tensor hx, Tensor? cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    "Tensor? b_hh, Tensor? w_hr, Tensor output, Tensor reserve) -> (Tensor grad_input, "
    "Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
    "Tensor grad_b_hh, Tensor grad_w_hr)";

// name, gates, reserve width and reserve slot names of every cell, for the Python side.
pybind11::list cell_table() {
  pybind11::list cells;
#define BIRNN_CELL_ROW(name, Kind, Cell)                                               \
  {                                                                                    \
    pybind11::dict row;                                                                \
    row["name"] = #name;                                                               \
    row["gates"] = Cell::kGates;                                                       \
    row["reserve"] = Cell::kReserve;                                                   \
    row["reserve_slots"] = std::string(Cell::kReserveSlots);                           \
    cells.append(row);                                                                 \
  }
  BIRNN_FOR_EACH_CELL(BIRNN_CELL_ROW)
#undef BIRNN_CELL_ROW
  return cells;
}

}  // namespace
}  // namespace birnn

TORCH_LIBRARY(birnn_ext, m) {
#define BIRNN_CELL_SCHEMAS(name, Kind, Cell)                          \
  m.def((std::string(#name) + ::birnn::kForwardSchema).c_str());      \
  m.def((std::string(#name) + ::birnn::kBackwardSchema).c_str());
  BIRNN_FOR_EACH_CELL(BIRNN_CELL_SCHEMAS)
#undef BIRNN_CELL_SCHEMAS
}

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
    info["cells"] = birnn::cell_table();
    return info;
  });
  module.def(
      "cpu_simd",
      [] { return birnn::cpu::isa_name(birnn::cpu::cpu_isa()); },
      "The CPU kernels' instruction set on this machine (csrc/cpu/isa.h): 'avx512' or 'avx2' "
      "(float32 GEMMs on birnn_ext's own kernel for that ISA, SIMD cells) or 'scalar' (BLAS "
      "GEMMs, scalar cells)");
  module.def(
      "cpu_backward_gemms",
      [](int64_t rows) { return std::string(birnn::cpu::backward_gemm_engine(rows)); },
      "Which GEMMs a float32 CPU layer of T*B = rows runs its backward's dx and weight "
      "gradients on (csrc/cpu/large_gemms.h, BIRNN_EXT_CPU_BACKWARD_GEMMS): 'own' (birnn_ext's "
      "kernel) or 'aten' (torch's GEMMs: MKL)");
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
