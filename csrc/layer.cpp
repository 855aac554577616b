// The device-generic parts of the ops (layer.h): checks, driver buffers, the input
// projection and the backward's large GEMMs as ATen ops.
#include "layer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "cpu/memory.h"

namespace birnn {
namespace {

struct Dims {
  int64_t T, B, I, H, Hout, D, G;
};

void check_same(const at::Tensor& t, const at::Tensor& input, const char* name) {
  TORCH_CHECK(t.device() == input.device(), "birnn_ext: ", name, " is on ", t.device(),
              " but input is on ", input.device(), "; all tensors must be on the same device");
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "birnn_ext: ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", input.scalar_type(),
              "; all tensors must have the same dtype");
}

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "birnn_ext: expected ", name, " of shape ", expected,
              ", got ", t.sizes());
}

Dims check_layer(CellKind kind, const at::Tensor& input, const at::Tensor& hx,
                 const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                 const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  TORCH_CHECK(input.dim() == 3, "birnn_ext: input must be [T, B, I], got ", input.sizes());
  TORCH_CHECK(input.size(0) > 0, "Expected sequence length to be larger than 0 in RNN");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "birnn_ext: input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(w_ih.dim() == 3 && (w_ih.size(0) == 1 || w_ih.size(0) == 2),
              "birnn_ext: w_ih must be [D, G*H, I] with D = 1 or 2, got ", w_ih.sizes());
  Dims d{};
  d.T = input.size(0);
  d.B = input.size(1);
  d.I = input.size(2);
  d.D = w_ih.size(0);
  d.G = num_gates(kind);
  TORCH_CHECK(w_ih.size(1) % d.G == 0, "birnn_ext: w_ih.size(1) must be a multiple of ", d.G,
              " for this cell, got ", w_ih.size(1));
  d.H = w_ih.size(1) / d.G;
  TORCH_CHECK(w_ih.size(2) == d.I, "input.size(-1) must be equal to input_size. Expected ",
              w_ih.size(2), ", got ", d.I);
  const bool proj = w_hr.has_value() && w_hr->defined();
  TORCH_CHECK(!proj || kind == CellKind::Lstm, "birnn_ext: w_hr (proj_size) is LSTM-only");
  d.Hout = proj ? w_hr->size(1) : d.H;
  check_same(w_ih, input, "w_ih");
  check_same(w_hh, input, "w_hh");
  check_shape(w_hh, {d.D, d.G * d.H, d.Hout}, "w_hh");
  check_same(hx, input, "hx");
  check_shape(hx, {d.D, d.B, d.Hout}, "hx");
  if (proj) {
    check_same(*w_hr, input, "w_hr");
    check_shape(*w_hr, {d.D, d.Hout, d.H}, "w_hr");
  }
  const bool has_b_ih = b_ih.has_value() && b_ih->defined();
  const bool has_b_hh = b_hh.has_value() && b_hh->defined();
  TORCH_CHECK(has_b_ih == has_b_hh, "birnn_ext: pass both b_ih and b_hh, or neither");
  if (has_b_ih) {
    check_same(*b_ih, input, "b_ih");
    check_same(*b_hh, input, "b_hh");
    check_shape(*b_ih, {d.D, d.G * d.H}, "b_ih");
    check_shape(*b_hh, {d.D, d.G * d.H}, "b_hh");
  }
  const bool has_cx = cx.has_value() && cx->defined();
  if (kind == CellKind::Lstm) {
    TORCH_CHECK(has_cx, "birnn_ext: an LSTM needs cx");
    check_same(*cx, input, "cx");
    check_shape(*cx, {d.D, d.B, d.H}, "cx");
  } else {
    TORCH_CHECK(!has_cx, "birnn_ext: cx is for LSTM only");
  }
  return d;
}

// [T, B] bool: true at the padded steps (t >= lengths[b]).
at::Tensor padded_steps(int64_t T, const at::Tensor& lengths) {
  return at::arange(T, lengths.options()).unsqueeze(1) >= lengths.unsqueeze(0);
}

// prev [T, B, D, X]: the state each step started from, i.e. seq shifted by one step in
// each direction's own order, with init [D, B, X] at each direction's first step, and zero
// at padded steps (t >= lengths[b]).
at::Tensor previous_states(const at::Tensor& seq, const at::Tensor& init,
                           const at::Tensor& lengths) {
  const int64_t T = seq.size(0), D = seq.size(2);
  at::Tensor prev = at::empty_like(seq);
  at::Tensor fwd = prev.select(2, 0);
  fwd.select(0, 0).copy_(init.select(0, 0));
  fwd.slice(0, 1, T).copy_(seq.select(2, 0).slice(0, 0, T - 1));
  if (D == 2) {
    at::Tensor rev = prev.select(2, 1);
    rev.slice(0, 0, T - 1).copy_(seq.select(2, 1).slice(0, 1, T));
    rev.select(0, T - 1).copy_(init.select(0, 1));
    if (lengths.defined()) {
      // Step t of a sequence of length len starts from h0 when t + 1 >= len.
      at::Tensor steps = at::arange(1, T + 1, lengths.options()).unsqueeze(1);  // [T, 1]
      at::Tensor first = (steps >= lengths.unsqueeze(0)).unsqueeze(2);           // [T, B, 1]
      rev.copy_(at::where(first, init.select(0, 1).unsqueeze(0), rev));
    }
  }
  if (lengths.defined()) {
    // Padded steps have zero dgates, but their shifted state may be a sequence's last h or
    // h0, and 0 * inf or 0 * NaN would reach dW_hh, where torch.nn (which never sees a
    // padded step) has a finite value.
    prev.masked_fill_(padded_steps(T, lengths).unsqueeze(2).unsqueeze(3), 0);  // [T, B, 1, 1]
  }
  return prev;
}

// dW [D, rows, cols] = sum over steps and batch of grad_rows^T @ values, per direction:
// grad_rows [T, B, D, rows], values [T, B, D, cols] (or [T, B, cols] shared by directions).
at::Tensor weight_grad(const at::Tensor& grad_rows, const at::Tensor& values, int64_t D) {
  const int64_t TB = grad_rows.size(0) * grad_rows.size(1);
  at::Tensor g = grad_rows.reshape({TB, D, grad_rows.size(3)}).permute({1, 2, 0});
  at::Tensor v = values.dim() == 3
                     ? values.reshape({TB, values.size(2)}).unsqueeze(0).expand({D, TB, values.size(2)})
                     : values.reshape({TB, D, values.size(3)}).permute({1, 0, 2});
  return at::bmm(g, v);
}

}  // namespace

void check_layer_args(CellKind kind, const at::Tensor& input, const at::Tensor& hx,
                      const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  check_layer(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
}

HostLengths check_lengths(const OptTensor& lengths, const at::Tensor& input,
                          at::Tensor (*to_host)(const at::Tensor&)) {
  const int64_t T = input.size(0), B = input.size(1);
  if (!lengths.has_value() || !lengths->defined()) return {at::Tensor(), B > 0 ? T : 0};
  const at::Tensor& len = *lengths;
  TORCH_CHECK(len.is_cpu() || len.device() == input.device(), "birnn_ext: lengths is on ",
              len.device(), " but input is on ", input.device(),
              "; lengths must be on the CPU or on the input's device");
  TORCH_CHECK(len.scalar_type() == at::kLong, "birnn_ext: lengths must be int64, got ",
              len.scalar_type());
  check_shape(len, {B}, "lengths");
  const at::Tensor host = (len.is_cpu() ? len : to_host(len)).contiguous();
  if (B == 0) return {host, 0};
  const int64_t* values = host.data_ptr<int64_t>();
  const auto [lo, hi] = std::minmax_element(values, values + B);
  TORCH_CHECK(*lo >= 0 && *hi <= T, "birnn_ext: lengths must lie in [0, T=", T,
              "], got values in [", *lo, ", ", *hi, "]");
  return {host, *hi};
}

at::Tensor driver_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  static const bool poison = [] {
    const char* env = std::getenv("BIRNN_EXT_POISON");
    return env != nullptr && env[0] == '1';
  }();
  at::Tensor t = at::empty(sizes, opts);
  cpu::advise_huge_pages(t);
  cpu::prefault(t);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

ForwardArgs forward_args(CellKind kind, const at::Tensor& input, const at::Tensor& hx,
                         const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                         bool training, bool project_input) {
  const Dims d = check_layer(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto opts = input.options();
  const int64_t GH = d.G * d.H;
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  ForwardArgs args;
  args.cell = kind;
  args.input = input.contiguous();
  args.w_ih = w_ih.contiguous();
  args.b_ih = has_bias ? b_ih->contiguous() : at::Tensor();
  if (project_input) {
    // One GEMM: both directions' input projection for every step -> [T, B, D, G*H].
    at::Tensor x2d = args.input.view({d.T * d.B, d.I});
    at::Tensor w_ih_both = args.w_ih.view({d.D * GH, d.I});
    at::Tensor gates_x = has_bias ? at::addmm(args.b_ih.view({d.D * GH}), x2d, w_ih_both.t())
                                  : at::mm(x2d, w_ih_both.t());
    args.gates_x = gates_x.view({d.T, d.B, d.D, GH});
  }
  args.max_length = d.T;
  args.w_hh = w_hh.contiguous();
  args.b_hh = b_hh.has_value() && b_hh->defined() ? b_hh->contiguous() : at::Tensor();
  args.w_hr = w_hr.has_value() && w_hr->defined() ? w_hr->contiguous() : at::Tensor();
  args.output = driver_buffer({d.T, d.B, d.D, d.Hout}, opts);
  args.h = hx.contiguous().clone();
  args.c = kind == CellKind::Lstm ? cx->contiguous().clone() : at::Tensor();
  args.reserve = training ? driver_buffer({d.T, d.B, d.D, reserve_width(kind) * d.H}, opts)
                          : at::Tensor();
  return args;
}

ForwardResult forward_result(const ForwardArgs& args) {
  const auto opts = args.output.options();
  const int64_t T = args.output.size(0), B = args.output.size(1);
  return {args.output.view({T, B, args.output.size(2) * args.output.size(3)}), args.h,
          args.c.defined() ? args.c : at::empty({0}, opts),
          args.reserve.defined() ? args.reserve : at::empty({0}, opts)};
}

BackwardArgs backward_args(CellKind kind, const at::Tensor& grad_output,
                           const at::Tensor& grad_h_n, const OptTensor& grad_c_n,
                           const at::Tensor& input, const at::Tensor& hx, const OptTensor& cx,
                           const at::Tensor& w_ih, const at::Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                           const at::Tensor& output, const at::Tensor& reserve,
                           bool driver_does_gemms) {
  // Bias values do not enter the backward (the reserve holds what they shaped); only their
  // presence decides whether their gradients are returned.
  const Dims d = check_layer(kind, input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto opts = input.options();
  const int64_t GH = d.G * d.H;
  const bool proj = w_hr.has_value() && w_hr->defined();
  check_same(grad_output, input, "grad_output");
  check_shape(grad_output, {d.T, d.B, d.D * d.Hout}, "grad_output");
  check_same(grad_h_n, input, "grad_h_n");
  check_shape(grad_h_n, {d.D, d.B, d.Hout}, "grad_h_n");
  check_shape(output, {d.T, d.B, d.D * d.Hout}, "output");
  check_shape(reserve, {d.T, d.B, d.D, reserve_width(kind) * d.H},
              "reserve (the forward must run with training=True)");
  if (kind == CellKind::Lstm) {
    TORCH_CHECK(grad_c_n.has_value() && grad_c_n->defined(), "birnn_ext: LSTM needs grad_c_n");
    check_shape(*grad_c_n, {d.D, d.B, d.H}, "grad_c_n");
  }
  const bool split_hidden_grad =
      dispatch_cell(kind, [](auto cell) { return decltype(cell)::kSplitHiddenGrad; });

  BackwardArgs args;
  args.cell = kind;
  args.grad_output = grad_output.contiguous().view({d.T, d.B, d.D, d.Hout});
  args.max_length = d.T;
  args.w_hh = w_hh.contiguous();
  args.w_hr = proj ? w_hr->contiguous() : at::Tensor();
  args.output = output.contiguous().view({d.T, d.B, d.D, d.Hout});
  args.h0 = hx.contiguous();
  args.c0 = kind == CellKind::Lstm ? cx->contiguous() : at::Tensor();
  args.reserve = reserve.contiguous();
  args.dh = grad_h_n.contiguous().clone();
  args.dc = kind == CellKind::Lstm ? grad_c_n->contiguous().clone() : at::Tensor();
  args.dgates_x = driver_buffer({d.T, d.B, d.D, GH}, opts);
  args.dgates_h = split_hidden_grad ? driver_buffer({d.T, d.B, d.D, GH}, opts) : args.dgates_x;
  args.dh_total = proj ? driver_buffer({d.T, d.B, d.D, d.Hout}, opts) : at::Tensor();
  args.input = input.contiguous();
  args.w_ih = w_ih.contiguous();
  if (driver_does_gemms && d.B > 0) {
    args.grad_input = driver_buffer({d.T, d.B, d.I}, opts);
    args.grad_w_ih = driver_buffer({d.D, GH, d.I}, opts);
    args.grad_w_hh = driver_buffer({d.D, GH, d.Hout}, opts);
  }
  return args;
}

BackwardResult backward_result(const BackwardArgs& args, bool has_bias) {
  const int64_t T = args.output.size(0), B = args.output.size(1), D = args.output.size(2);
  const int64_t I = args.input.size(2), GH = args.w_hh.size(1);
  const auto opts = args.input.options();
  // dx and the weight gradients as large GEMMs over all steps, unless the driver did them.
  at::Tensor grad_input = args.grad_input, grad_w_ih = args.grad_w_ih,
             grad_w_hh = args.grad_w_hh;
  if (!grad_input.defined()) {
    grad_input = at::mm(args.dgates_x.view({T * B, D * GH}), args.w_ih.view({D * GH, I}))
                     .view({T, B, I});
    // The input's padded steps read as zeros, for the reason previous_states gives: with
    // lengths= they are the caller's padding, never otherwise read, and may hold NaN or inf.
    const at::Tensor x = args.lengths.defined()
                             ? args.input.masked_fill(padded_steps(T, args.lengths).unsqueeze(2), 0)
                             : args.input;
    grad_w_ih = weight_grad(args.dgates_x, x, D);
    at::Tensor h_prev = previous_states(args.output, args.h0, args.lengths);
    grad_w_hh = weight_grad(args.dgates_h, h_prev, D);
  }
  // An absent input's gradient is a fresh [0] tensor each: op outputs must not alias.
  auto none = [&] { return at::empty({0}, opts); };
  // IntArrayRef named: a bare {0, 1} is ambiguous with sum(DimnameList) in torch < 2.13.
  at::Tensor grad_b_ih = has_bias ? args.dgates_x.sum(at::IntArrayRef{0, 1}) : none();
  at::Tensor grad_b_hh = has_bias ? args.dgates_h.sum(at::IntArrayRef{0, 1}) : none();
  at::Tensor grad_w_hr = none();
  if (args.w_hr.defined()) {
    // m = o * tanh(c) of every step, rebuilt from the reserve (zero past each length).
    const int64_t H = args.w_hr.size(2);
    at::Tensor o = args.reserve.narrow(3, LstmCell::kOutputGateSlot * H, H);
    at::Tensor c = args.reserve.narrow(3, LstmCell::kCellSlot * H, H);
    grad_w_hr = weight_grad(args.dh_total, o * at::tanh(c), D);
  }
  return {grad_input, args.dh, args.dc.defined() ? args.dc : none(), grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh, grad_w_hr};
}

}  // namespace birnn
