// Ops that run ONE recurrence driver on CPU tensors: the CPU driver (csrc/cpu/) or the CUDA
// driver (csrc/cuda/recurrence_cuda.cu compiled against cuda_mock.h), with buffers set up as
// csrc/layer.cpp sets them up (outputs poisoned with NaN), so emulate.py can compare the two.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "birnn.h"
#include "cuda_mock.h"

namespace birnn {
at::Tensor cuda_lengths_to_device(const at::Tensor& t, const at::Device&) { return t; }
at::Tensor cuda_lengths_to_host(const at::Tensor& t) { return t; }
}  // namespace birnn

namespace {

using birnn::CellKind;

at::Tensor poisoned(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), opts);
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// -> [output [T, B, D, Hout], h_n, c_n or [0], reserve or [0]]
std::vector<at::Tensor> forward(int64_t cell, bool emulated, bool capturing,
                                const at::Tensor& gates_x, const std::optional<at::Tensor>& lengths,
                                const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hh,
                                const std::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                                const std::optional<at::Tensor>& c0, bool training) {
  const auto kind = static_cast<CellKind>(cell);
  const int64_t T = gates_x.size(0), B = gates_x.size(1), D = gates_x.size(2);
  const int64_t H = gates_x.size(3) / birnn::num_gates(kind), Hout = w_hh.size(2);
  birnn::ForwardArgs a;
  a.cell = kind;
  a.gates_x = gates_x.contiguous();
  a.lengths = or_undefined(lengths);
  a.max_length = a.lengths.defined() && a.lengths.numel() > 0 ? a.lengths.max().item<int64_t>() : T;
  a.w_hh = w_hh.contiguous();
  a.b_hh = or_undefined(b_hh);
  a.w_hr = or_undefined(w_hr);
  a.output = poisoned({T, B, D, Hout}, gates_x.options());
  a.h = h0.contiguous().clone();
  a.c = c0.has_value() ? c0->contiguous().clone() : at::Tensor();
  a.reserve = training ? poisoned({T, B, D, birnn::reserve_width(kind) * H}, gates_x.options())
                       : at::Tensor();
  c10::cuda::mock_capture_status =
      capturing ? c10::cuda::CaptureStatus::Active : c10::cuda::CaptureStatus::None;
  if (emulated) {
    birnn::forward_recurrence_cuda(a);
  } else {
    birnn::forward_recurrence_cpu(a);
  }
  c10::cuda::mock_capture_status = c10::cuda::CaptureStatus::None;
  const at::Tensor none = at::empty({0}, gates_x.options());
  return {a.output, a.h, a.c.defined() ? a.c : none, a.reserve.defined() ? a.reserve : none};
}

// -> [dh0, dc0 or [0], dgates_x, dgates_h, dh_total or [0]]
std::vector<at::Tensor> backward(int64_t cell, bool emulated, const at::Tensor& grad_output,
                                 const std::optional<at::Tensor>& lengths,
                                 const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                                 const at::Tensor& output, const at::Tensor& h0,
                                 const std::optional<at::Tensor>& c0, const at::Tensor& reserve,
                                 const at::Tensor& dh_n, const std::optional<at::Tensor>& dc_n) {
  const auto kind = static_cast<CellKind>(cell);
  const int64_t T = output.size(0), B = output.size(1), D = output.size(2);
  const int64_t Hout = output.size(3), GH = w_hh.size(1);
  birnn::BackwardArgs a;
  a.cell = kind;
  a.grad_output = grad_output.contiguous();
  a.lengths = or_undefined(lengths);
  a.max_length = a.lengths.defined() && a.lengths.numel() > 0 ? a.lengths.max().item<int64_t>() : T;
  a.w_hh = w_hh.contiguous();
  a.w_hr = or_undefined(w_hr);
  a.output = output.contiguous();
  a.h0 = h0.contiguous();
  a.c0 = or_undefined(c0);
  a.reserve = reserve.contiguous();
  a.dh = dh_n.contiguous().clone();
  a.dc = dc_n.has_value() ? dc_n->contiguous().clone() : at::Tensor();
  a.dgates_x = poisoned({T, B, D, GH}, output.options());
  a.dgates_h = kind == CellKind::Gru ? poisoned({T, B, D, GH}, output.options()) : a.dgates_x;
  a.dh_total = a.w_hr.defined() ? poisoned({T, B, D, Hout}, output.options()) : at::Tensor();
  if (emulated) {
    birnn::backward_recurrence_cuda(a);
  } else {
    birnn::backward_recurrence_cpu(a);
  }
  const at::Tensor none = at::empty({0}, output.options());
  return {a.dh, a.dc.defined() ? a.dc : none, a.dgates_x, a.dgates_h,
          a.dh_total.defined() ? a.dh_total : none};
}

// -> [GEMM calls, event records, event waits, pool streams handed out] since the last call.
std::vector<int64_t> counters() {
  std::vector<int64_t> out{mock_gemm_calls, c10::cuda::mock_event_records,
                           c10::cuda::mock_event_blocks, c10::cuda::mock_pool_counter};
  mock_gemm_calls = c10::cuda::mock_event_records = c10::cuda::mock_event_blocks =
      c10::cuda::mock_pool_counter = 0;
  return out;
}

}  // namespace

TORCH_LIBRARY(birnn_emul, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("counters", &counters);
}
