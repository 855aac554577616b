// The ops' bodies, written once for every device: argument checks, the input projection of
// both directions over all steps as ONE GEMM, buffer allocation, the call into the device's
// recurrence driver, and after the backward recurrence the weight gradients as large GEMMs.
// Only the recurrence itself (per-step GEMM + fused cell math) is device code.
#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdlib>
#include <limits>

#include "birnn.h"

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

Dims check_layer(CellKind kind, const at::Tensor& input, const OptTensor& lengths,
                 const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih,
                 const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                 const OptTensor& w_hr) {
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
  if (input.is_cpu()) {
    // The CPU path's per-step GEMMs go through BLAS (csrc/cpu/gemm_cpu.h), whose sizes and
    // leading dimensions are 32-bit ints: the batch (their M) and D*G*H (their widest N, K
    // or leading dimension) must fit. Every other index is 64-bit. Checked before anything
    // is allocated.
    constexpr int64_t kMax = std::numeric_limits<int>::max();
    TORCH_CHECK(d.B <= kMax, "birnn_ext: on the CPU the batch size can be at most ", kMax,
                " (the per-step BLAS calls take 32-bit sizes); got ", d.B);
    TORCH_CHECK(d.D * d.G * d.H <= kMax, "birnn_ext: on the CPU num_directions * gates * "
                "hidden_size can be at most ", kMax, " (the per-step BLAS calls take 32-bit "
                "sizes); got ", d.D, " * ", d.G, " * ", d.H);
  }
  if (lengths.has_value() && lengths->defined()) {
    const at::Tensor& len = *lengths;
    TORCH_CHECK(len.device() == input.device(), "birnn_ext: lengths is on ", len.device(),
                " but input is on ", input.device(), "; lengths must be on the input's device");
    TORCH_CHECK(len.scalar_type() == at::kLong, "birnn_ext: lengths must be int64, got ",
                len.scalar_type());
    check_shape(len, {d.B}, "lengths");
    // Reading the values needs the host; on a GPU this is done by the CUDA driver, which
    // must stay capturable in a CUDA graph.
    if (len.is_cpu() && d.B > 0) {
      const int64_t lo = len.min().item<int64_t>(), hi = len.max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi <= d.T, "birnn_ext: lengths must lie in [0, T=", d.T,
                  "], got values in [", lo, ", ", hi, "]");
    }
  }
  return d;
}

// The drivers index lengths as a plain [B] array.
at::Tensor contiguous_or_empty(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

// Test aid: with BIRNN_EXT_POISON=1, buffers a driver must write are filled with NaN first,
// so a value the driver forgot to write cannot pass unnoticed.
at::Tensor empty_for_driver(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  static const bool poison = [] {
    const char* env = std::getenv("BIRNN_EXT_POISON");
    return env != nullptr && env[0] == '1';
  }();
  at::Tensor t = at::empty(sizes, opts);
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

void run_forward(const ForwardArgs& args) {
  if (args.output.is_cuda()) {
    forward_recurrence_cuda(args);
  } else {
    TORCH_CHECK(args.output.is_cpu(), "birnn_ext: unsupported device ", args.output.device());
    forward_recurrence_cpu(args);
  }
}

void run_backward(const BackwardArgs& args) {
  if (args.dgates_x.is_cuda()) {
    backward_recurrence_cuda(args);
  } else {
    TORCH_CHECK(args.dgates_x.is_cpu(), "birnn_ext: unsupported device ", args.dgates_x.device());
    backward_recurrence_cpu(args);
  }
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
    at::Tensor steps = at::arange(T, lengths.options()).unsqueeze(1);               // [T, 1]
    prev.masked_fill_((steps >= lengths.unsqueeze(0)).unsqueeze(2).unsqueeze(3), 0);  // [T, B, 1, 1]
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

template <CellKind Kind>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const at::Tensor& input, const OptTensor& lengths, const at::Tensor& hx,
    const OptTensor& cx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool training) {
  // The caller chose the dtype (birnn_ext/ops.py applies torch.nn's autocast policy); the
  // GEMMs in here must not be recast by an autocast that is still on.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const Dims d = check_layer(Kind, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto opts = input.options();
  const int64_t GH = d.G * d.H;

  const bool has_bias = b_ih.has_value() && b_ih->defined();
  ForwardArgs args;
  args.cell = Kind;
  args.driver_gemms = cpu_driver_does_gemms(input);
  if (args.driver_gemms) {
    args.input = input.contiguous();
    args.w_ih = w_ih.contiguous();
    args.b_ih = has_bias ? b_ih->contiguous() : at::Tensor();
    // Two directions project in chunks as their time loops go (no gates_x at all).
    if (d.D == 1) args.gates_x = empty_for_driver({d.T, d.B, d.D, GH}, opts);
  } else {
    // One GEMM: both directions' input projection for every step -> [T, B, D, G*H].
    at::Tensor x2d = input.reshape({d.T * d.B, d.I});
    at::Tensor w_ih_both = w_ih.reshape({d.D * GH, d.I});
    at::Tensor gates_x = has_bias ? at::addmm(b_ih->reshape({d.D * GH}), x2d, w_ih_both.t())
                                  : at::mm(x2d, w_ih_both.t());
    args.gates_x = gates_x.view({d.T, d.B, d.D, GH});
  }
  args.lengths = contiguous_or_empty(lengths);
  args.w_hh = w_hh.contiguous();
  args.b_hh = b_hh.has_value() && b_hh->defined() ? b_hh->contiguous() : at::Tensor();
  args.w_hr = w_hr.has_value() && w_hr->defined() ? w_hr->contiguous() : at::Tensor();
  args.output = empty_for_driver({d.T, d.B, d.D, d.Hout}, opts);
  args.h = hx.contiguous().clone();
  args.c = Kind == CellKind::Lstm ? cx->contiguous().clone() : at::Tensor();
  args.reserve = training ? empty_for_driver({d.T, d.B, d.D, reserve_width(Kind) * d.H}, opts)
                          : at::Tensor();
  if (d.B > 0) run_forward(args);

  return {args.output.view({d.T, d.B, d.D * d.Hout}), args.h,
          args.c.defined() ? args.c : at::empty({0}, opts),
          args.reserve.defined() ? args.reserve : at::empty({0}, opts)};
}

template <CellKind Kind>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
layer_backward(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
               const OptTensor& grad_c_n, const at::Tensor& input, const OptTensor& lengths,
               const at::Tensor& hx, const OptTensor& cx, const at::Tensor& w_ih,
               const at::Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
               const OptTensor& w_hr,
               const at::Tensor& output, const at::Tensor& reserve) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  // Bias values do not enter the backward (the reserve holds what they shaped); only their
  // presence decides whether their gradients are returned.
  const Dims d = check_layer(Kind, input, lengths, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const bool has_bias = b_ih.has_value() && b_ih->defined();
  const auto opts = input.options();
  const int64_t GH = d.G * d.H;
  const bool proj = w_hr.has_value() && w_hr->defined();
  check_same(grad_output, input, "grad_output");
  check_shape(grad_output, {d.T, d.B, d.D * d.Hout}, "grad_output");
  check_same(grad_h_n, input, "grad_h_n");
  check_shape(grad_h_n, {d.D, d.B, d.Hout}, "grad_h_n");
  check_shape(output, {d.T, d.B, d.D * d.Hout}, "output");
  check_shape(reserve, {d.T, d.B, d.D, reserve_width(Kind) * d.H},
              "reserve (the forward must run with training=True)");
  if (Kind == CellKind::Lstm) {
    TORCH_CHECK(grad_c_n.has_value() && grad_c_n->defined(), "birnn_ext: LSTM needs grad_c_n");
    check_shape(*grad_c_n, {d.D, d.B, d.H}, "grad_c_n");
  }

  BackwardArgs args;
  args.cell = Kind;
  args.grad_output = grad_output.contiguous().view({d.T, d.B, d.D, d.Hout});
  args.lengths = contiguous_or_empty(lengths);
  args.w_hh = w_hh.contiguous();
  args.w_hr = proj ? w_hr->contiguous() : at::Tensor();
  args.output = output.contiguous().view({d.T, d.B, d.D, d.Hout});
  args.h0 = hx.contiguous();
  args.c0 = Kind == CellKind::Lstm ? cx->contiguous() : at::Tensor();
  args.reserve = reserve.contiguous();
  args.dh = grad_h_n.contiguous().clone();
  args.dc = Kind == CellKind::Lstm ? grad_c_n->contiguous().clone() : at::Tensor();
  args.dgates_x = empty_for_driver({d.T, d.B, d.D, GH}, opts);
  args.dgates_h = CellOf<Kind>::type::kSplitHiddenGrad
                      ? empty_for_driver({d.T, d.B, d.D, GH}, opts)
                      : args.dgates_x;
  args.dh_total = proj ? empty_for_driver({d.T, d.B, d.D, d.Hout}, opts) : at::Tensor();
  args.driver_gemms = d.B > 0 && cpu_driver_does_gemms(input);
  if (args.driver_gemms) {
    args.input = input.contiguous();
    args.w_ih = w_ih.contiguous();
    args.grad_input = empty_for_driver({d.T, d.B, d.I}, opts);
    args.grad_w_ih = empty_for_driver({d.D, GH, d.I}, opts);
    args.grad_w_hh = empty_for_driver({d.D, GH, d.Hout}, opts);
  }
  if (d.B > 0) {
    run_backward(args);
  } else {
    args.dgates_x.zero_();
    args.dgates_h.zero_();
    if (proj) args.dh_total.zero_();
  }

  // After the loop (unless the driver did them): dx and the weight gradients as large
  // GEMMs over all steps.
  at::Tensor grad_input = args.grad_input, grad_w_ih = args.grad_w_ih,
             grad_w_hh = args.grad_w_hh;
  if (!args.driver_gemms) {
    grad_input =
        at::mm(args.dgates_x.view({d.T * d.B, d.D * GH}), w_ih.reshape({d.D * GH, d.I}))
            .view({d.T, d.B, d.I});
    grad_w_ih = weight_grad(args.dgates_x, input, d.D);
    at::Tensor h_prev = previous_states(args.output, args.h0, args.lengths);
    grad_w_hh = weight_grad(args.dgates_h, h_prev, d.D);
  }
  // An absent input's gradient is a fresh [0] tensor each: op outputs must not alias.
  auto none = [&] { return at::empty({0}, opts); };
  at::Tensor grad_b_ih = has_bias ? args.dgates_x.sum({0, 1}) : none();
  at::Tensor grad_b_hh = has_bias ? args.dgates_h.sum({0, 1}) : none();
  at::Tensor grad_w_hr = none();
  if (proj) {
    // m = o * tanh(c) of every step, rebuilt from the reserve (zero past each length).
    at::Tensor o = args.reserve.narrow(3, 3 * d.H, d.H);
    at::Tensor c = args.reserve.narrow(3, 4 * d.H, d.H);
    grad_w_hr = weight_grad(args.dh_total, o * at::tanh(c), d.D);
  }
  return {grad_input, args.dh, args.dc.defined() ? args.dc : none(), grad_w_ih, grad_w_hh,
          grad_b_ih, grad_b_hh, grad_w_hr};
}

#define BIRNN_INSTANTIATE(KIND)                                                              \
  template std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward<KIND>(   \
      const at::Tensor&, const OptTensor&, const at::Tensor&, const OptTensor&,              \
      const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,              \
      const OptTensor&, bool);                                                               \
  template std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, \
                      at::Tensor, at::Tensor>                                                \
  layer_backward<KIND>(const at::Tensor&, const at::Tensor&, const OptTensor&,               \
                       const at::Tensor&, const OptTensor&, const at::Tensor&,               \
                       const OptTensor&, const at::Tensor&, const at::Tensor&,               \
                       const OptTensor&, const OptTensor&, const OptTensor&,                 \
                       const at::Tensor&, const at::Tensor&);

BIRNN_INSTANTIATE(CellKind::RnnTanh)
BIRNN_INSTANTIATE(CellKind::RnnRelu)
BIRNN_INSTANTIATE(CellKind::Lstm)
BIRNN_INSTANTIATE(CellKind::Gru)
#undef BIRNN_INSTANTIATE

}  // namespace birnn
