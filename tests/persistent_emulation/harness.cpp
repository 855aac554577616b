// Runs the persistent kernels (csrc/cuda/persistent_kernels.h, their own source) on CPU
// tensors under the fiber emulation of emulation.h, with the same host-side parameter
// wiring the CUDA launchers use (csrc/cuda/persistent_params.h) and a plan from the same
// arithmetic (persistent_plan.h) for a chosen block count and shared-memory size.
// Built by tests/test_persistent_emulation.py with torch.utils.cpp_extension.load.
#include <torch/extension.h>

#include "emulation.h"  // after torch: it defines threadIdx, blockIdx, __syncthreads

#include "../../csrc/cuda/persistent_params.h"

namespace {

using namespace birnn;
using namespace birnn::persistent;

CellKind cell_of(const std::string& name) {
  if (name == "rnn_tanh") return CellKind::RnnTanh;
  if (name == "rnn_relu") return CellKind::RnnRelu;
  if (name == "lstm") return CellKind::Lstm;
  TORCH_CHECK(name == "gru", "unknown cell ", name);
  return CellKind::Gru;
}

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// The plan for `blocks` blocks per direction (the device is taken to have exactly that many
// SMs per direction) and `smem` bytes of shared memory per block.
Plan plan_for(const LayerShape& shape, int blocks, int64_t smem) {
  DeviceLimits dev;
  dev.sm_count = blocks * shape.dirs;
  dev.smem_per_block = smem;
  const Plan plan = make_plan(shape, dev);
  TORCH_CHECK(plan.ok, "no plan: ", plan.why);
  const std::string broken = plan_violation(shape, plan);
  TORCH_CHECK(broken.empty(), "plan invariant broken: ", broken);
  return plan;
}

LayerShape shape_of(CellKind cell, const at::Tensor& output, bool backward) {
  LayerShape s;
  s.gates = num_gates(cell);
  s.steps = output.size(0);
  s.batch = output.size(1);
  s.dirs = static_cast<int>(output.size(2));
  s.hidden = output.size(3);
  s.elem_bytes = static_cast<int>(output.element_size());
  s.backward = backward;
  return s;
}

std::vector<int64_t> plan_fields(const Plan& p) {
  return {p.blocks_per_dir, p.units, p.rows_pad, p.batch_chunk, p.smem_bytes};
}

// Scratch as the CUDA launcher lays it out (persistent_params.h), poisoned (0xff bytes) so
// that a read of a region nothing wrote shows up as NaN.
struct HostScratch {
  at::Tensor storage, counters;
  std::vector<int64_t> offsets;
};
HostScratch host_scratch(const std::vector<int64_t>& regions, int dirs) {
  HostScratch s;
  int64_t total = 0;
  for (int64_t bytes : regions) {
    s.offsets.push_back(total);
    total += (bytes + 255) / 256 * 256;
  }
  s.storage = at::full({std::max<int64_t>(total, 1)}, 255, at::kByte);
  s.counters = at::zeros({dirs * kCounterStride}, at::kInt);
  return s;
}

// Forward recurrence: fills output, h (h_n), c (c_n) and reserve (when given) from gates_x,
// w_hh, b_hh, lengths, h (h0), c (c0); returns the plan's fields.
std::vector<int64_t> forward(const std::string& cell_name, at::Tensor gates_x, at::Tensor w_hh,
                             std::optional<at::Tensor> b_hh, std::optional<at::Tensor> lengths,
                             at::Tensor h, std::optional<at::Tensor> c, at::Tensor output,
                             std::optional<at::Tensor> reserve, int64_t blocks, int64_t smem,
                             int64_t seed) {
  ForwardArgs a;
  a.cell = cell_of(cell_name);
  a.gates_x = gates_x;
  a.w_hh = w_hh;
  a.b_hh = opt(b_hh);
  a.lengths = opt(lengths);
  a.h = h;
  a.c = opt(c);
  a.output = output;
  a.reserve = opt(reserve);
  const LayerShape shape = shape_of(a.cell, output, false);
  const Plan plan = plan_for(shape, static_cast<int>(blocks), smem);
  const bool training = a.reserve.defined();
  dispatch_kernel_types(a.cell, output.scalar_type(), [&](auto cell_tag, auto type_tag) {
    using Cell = decltype(cell_tag);
    using T = decltype(type_tag);
    const Geometry g = geometry_of(shape, plan);
    HostScratch s = host_scratch(forward_scratch_bytes<Cell, T>(g), shape.dirs);
    auto run = [&](auto kernel, const auto& params) {
      emu::run(plan.grid, kThreads, plan.smem_bytes, static_cast<uint64_t>(seed),
               [&] { kernel(params); });
    };
    auto* base = static_cast<unsigned char*>(s.storage.data_ptr());
    auto* counters = reinterpret_cast<unsigned*>(s.counters.data_ptr<int>());
    if (training) {
      run(forward_kernel<Cell, T, true>,
          make_forward_params<Cell, T, true>(a, g, base, s.offsets.data(), counters));
    } else {
      run(forward_kernel<Cell, T, false>,
          make_forward_params<Cell, T, false>(a, g, base, s.offsets.data(), counters));
    }
  });
  return plan_fields(plan);
}

// Backward recurrence: fills dgates_x, dgates_h, dh (dLoss/dh0) and dc (dLoss/dc0).
std::vector<int64_t> backward(const std::string& cell_name, at::Tensor grad_output,
                              std::optional<at::Tensor> lengths, at::Tensor w_hh,
                              at::Tensor output, at::Tensor h0, std::optional<at::Tensor> c0,
                              at::Tensor reserve, at::Tensor dh, std::optional<at::Tensor> dc,
                              at::Tensor dgates_x, at::Tensor dgates_h, int64_t blocks,
                              int64_t smem, int64_t seed) {
  BackwardArgs a;
  a.cell = cell_of(cell_name);
  a.grad_output = grad_output;
  a.lengths = opt(lengths);
  a.w_hh = w_hh;
  a.output = output;
  a.h0 = h0;
  a.c0 = opt(c0);
  a.reserve = reserve;
  a.dh = dh;
  a.dc = opt(dc);
  a.dgates_x = dgates_x;
  a.dgates_h = dgates_h;
  const LayerShape shape = shape_of(a.cell, output, true);
  const Plan plan = plan_for(shape, static_cast<int>(blocks), smem);
  dispatch_kernel_types(a.cell, output.scalar_type(), [&](auto cell_tag, auto type_tag) {
    using Cell = decltype(cell_tag);
    using T = decltype(type_tag);
    const Geometry g = geometry_of(shape, plan);
    HostScratch s = host_scratch(backward_scratch_bytes<Cell, T>(g), shape.dirs);
    const BackwardParams<T> params = make_backward_params<Cell, T>(
        a, g, static_cast<unsigned char*>(s.storage.data_ptr()), s.offsets.data(),
        reinterpret_cast<unsigned*>(s.counters.data_ptr<int>()));
    emu::run(plan.grid, kThreads, plan.smem_bytes, static_cast<uint64_t>(seed),
             [&] { backward_kernel<Cell, T>(params); });
  });
  return plan_fields(plan);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "persistent forward recurrence, emulated on the CPU");
  m.def("backward", &backward, "persistent backward recurrence, emulated on the CPU");
}
