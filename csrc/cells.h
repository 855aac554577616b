// The cells' pointwise math: the one source of truth for every backend.
//
// Each cell is a struct of static functions that handle ONE hidden unit j of ONE row
// (one time step t, one batch element b, one direction d). The recurrence drivers
// (csrc/cpu/, csrc/cuda/) own the GEMMs, the time loop, the lengths mask and the
// direction split; they call these functions for every valid (row, j) pair, so a CPU
// loop and a CUDA thread run the very same arithmetic.
//
// Gate order and formulas are torch's, so weights load unchanged from torch.nn/cuDNN:
//   RNN : h' = act(x_pre + h_pre)                          (act = tanh or relu)
//   LSTM: i, f, g, o ;  c' = f*c + i*g ;  m = o*tanh(c')   (h' = m, or W_hr m with proj)
//   GRU : r, z, n    ;  n = tanh(x_n + r*(W_hn h + b_hn)) ;  h' = (1-z)*n + z*h
//
// Storage type T (float, double, half, bfloat16); math type A = at::opmath_type<T>
// (float for half/bfloat16), so reduced precision only rounds at loads and stores.
//
// BIRNN_FOR_EACH_CELL is the one list of cells: the enum, the dispatch from a run-time kind
// to a struct, the op schemas (csrc/ops.cpp), each device's op registration, the explicit
// instantiations and the cells the Python side sees (the module's build_info) are all made
// from it. A new cell is one struct below and one line in the list (plus its pure-torch
// version in birnn_ext/reference.py and its torch.nn module in birnn_ext/modules.py).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BIRNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BIRNN_HOST_DEVICE inline
#endif

// X(op name, CellKind enumerator, cell struct), one line per cell.
#define BIRNN_FOR_EACH_CELL(X)                          \
  X(rnn_tanh, RnnTanh, RnnCell<CellKind::RnnTanh>)      \
  X(rnn_relu, RnnRelu, RnnCell<CellKind::RnnRelu>)      \
  X(lstm, Lstm, LstmCell)                               \
  X(gru, Gru, GruCell)

namespace birnn {

#define BIRNN_CELL_ENUMERATOR(name, Kind, Cell) Kind,
enum class CellKind { BIRNN_FOR_EACH_CELL(BIRNN_CELL_ENUMERATOR) };
#undef BIRNN_CELL_ENUMERATOR

BIRNN_HOST_DEVICE float exp_(float x) { return ::expf(x); }
BIRNN_HOST_DEVICE double exp_(double x) { return ::exp(x); }
BIRNN_HOST_DEVICE float tanh_(float x) { return ::tanhf(x); }
BIRNN_HOST_DEVICE double tanh_(double x) { return ::tanh(x); }

// The math type's primitives. A is a scalar (float, double) here; the CPU driver
// specialises Math for SIMD vectors (csrc/cpu/pointwise_avx2.cpp), so the cells below run
// unchanged over 4 or 8 hidden units at a time. load/store convert from/to storage type T.
template <typename A>
struct Math {
  template <typename T>
  BIRNN_HOST_DEVICE static A load(const T* p, int64_t i) { return A(p[i]); }
  template <typename T>
  BIRNN_HOST_DEVICE static A load_or_zero(const T* p, int64_t i) { return p ? A(p[i]) : A(0); }
  template <typename T>
  BIRNN_HOST_DEVICE static void store(T* p, int64_t i, A v) { p[i] = T(v); }
  BIRNN_HOST_DEVICE static A exp(A x) { return exp_(x); }
  BIRNN_HOST_DEVICE static A tanh(A x) { return tanh_(x); }
  // As torch.relu: a NaN stays NaN (written so that the NaN compares false).
  BIRNN_HOST_DEVICE static A relu(A x) { return x < A(0) ? A(0) : x; }
  // d relu(pre) given the output h = relu(pre), as torch's threshold_backward: 0 where
  // h <= 0, else dh (a NaN h passes dh on, as in torch.nn).
  BIRNN_HOST_DEVICE static A relu_grad(A h, A dh) { return h <= A(0) ? A(0) : dh; }
};

template <typename A>
BIRNN_HOST_DEVICE A sigmoid_(A x) {
  return A(1) / (A(1) + Math<A>::exp(A(0) - x));
}

// Row pointers handed to a cell's forward for one (t, b, d). Sizes in units of H.
template <typename T>
struct ForwardRow {
  const T* gates_x;  // [G*H] input projection W_ih x + b_ih
  const T* gates_h;  // [G*H] recurrent product W_hh h (bias NOT included)
  const T* b_hh;     // [G*H] recurrent bias, or nullptr
  const T* h_prev;   // [H]   previous hidden state (read by GRU only)
  const T* c_prev;   // [H]   previous cell state (LSTM only)
  T* h;              // [H]   new hidden state (LSTM: m = o*tanh(c), before any projection)
  T* c;              // [H]   new cell state (LSTM only)
  T* reserve;        // [kReserve*H] what backward needs, or nullptr in inference
};

// Row pointers handed to a cell's backward for one (t, b, d).
template <typename T>
struct BackwardRow {
  const T* dh;       // [H] dLoss/dh of this step (LSTM: dLoss/dm, after the projection)
  const T* reserve;  // [kReserve*H] saved by the forward
  const T* h;        // [H] this step's hidden state (RNN only: its derivative is read off h)
  const T* h_prev;   // [H] previous hidden state (GRU only)
  const T* c_prev;   // [H] previous cell state (LSTM only)
  T* dc;             // [H] LSTM: in: dLoss/dc of this step from the future; out: dLoss/dc_prev
  T* dh_prev;        // [H] GRU: out: the direct path z*dh into dLoss/dh_prev (the rest is a GEMM)
  T* dgates_x;       // [G*H] out: dLoss/d(input-side pre-activations)  -> dW_ih, db_ih, dx
  T* dgates_h;       // [G*H] out: dLoss/d(recurrent-side products)     -> dW_hh, db_hh, dh_prev
};

// RNN with tanh or relu. No reserve: backward reads h' itself.
template <CellKind Kind>
struct RnnCell {
  static constexpr int kGates = 1;
  static constexpr int kReserve = 0;
  static constexpr const char* kReserveSlots = "";  // names of the reserve's H-wide slots
  static constexpr int kCellSlot = -1;             // no cell state
  static constexpr bool kSplitHiddenGrad = false;  // dgates_h == dgates_x

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void forward(const ForwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A pre = M::load(r.gates_x, j) + M::load(r.gates_h, j) + M::load_or_zero(r.b_hh, j);
    A h = Kind == CellKind::RnnTanh ? M::tanh(pre) : M::relu(pre);
    M::store(r.h, j, h);
  }

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void backward(const BackwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A h = M::load(r.h, j);
    A dh = M::load(r.dh, j);
    A dpre = Kind == CellKind::RnnTanh ? dh * (A(1) - h * h) : M::relu_grad(h, dh);
    M::store(r.dgates_x, j, dpre);
  }
};

// LSTM. Reserve per row: [i | f | g | o | c'], each H wide, gates post-activation.
struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr int kReserve = 5;
  static constexpr const char* kReserveSlots = "i f g o c";
  static constexpr int kOutputGateSlot = 3;  // o sits at reserve[3H : 4H]
  static constexpr int kCellSlot = 4;        // c' sits at reserve[4H : 5H]
  static constexpr bool kSplitHiddenGrad = false;

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void forward(const ForwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A pre[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t idx = k * H + j;
      pre[k] = M::load(r.gates_x, idx) + M::load(r.gates_h, idx) + M::load_or_zero(r.b_hh, idx);
    }
    A i = sigmoid_(pre[0]);
    A f = sigmoid_(pre[1]);
    A g = M::tanh(pre[2]);
    A o = sigmoid_(pre[3]);
    A c = f * M::load(r.c_prev, j) + i * g;
    M::store(r.c, j, c);
    M::store(r.h, j, o * M::tanh(c));
    if (r.reserve) {
      M::store(r.reserve, 0 * H + j, i);
      M::store(r.reserve, 1 * H + j, f);
      M::store(r.reserve, 2 * H + j, g);
      M::store(r.reserve, kOutputGateSlot * H + j, o);
      M::store(r.reserve, kCellSlot * H + j, c);
    }
  }

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void backward(const BackwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A i = M::load(r.reserve, 0 * H + j);
    A f = M::load(r.reserve, 1 * H + j);
    A g = M::load(r.reserve, 2 * H + j);
    A o = M::load(r.reserve, kOutputGateSlot * H + j);
    A tanh_c = M::tanh(M::load(r.reserve, kCellSlot * H + j));
    A dm = M::load(r.dh, j);
    A dc = M::load(r.dc, j) + dm * o * (A(1) - tanh_c * tanh_c);
    A di = dc * g, df = dc * M::load(r.c_prev, j), dg = dc * i, d_o = dm * tanh_c;
    M::store(r.dgates_x, 0 * H + j, di * i * (A(1) - i));
    M::store(r.dgates_x, 1 * H + j, df * f * (A(1) - f));
    M::store(r.dgates_x, 2 * H + j, dg * (A(1) - g * g));
    M::store(r.dgates_x, 3 * H + j, d_o * o * (A(1) - o));
    M::store(r.dc, j, dc * f);
  }
};

// GRU. Reserve per row: [r | z | n | hn], hn = W_hn h + b_hn (the part r multiplies).
struct GruCell {
  static constexpr int kGates = 3;
  static constexpr int kReserve = 4;
  static constexpr const char* kReserveSlots = "r z n hn";
  static constexpr int kCellSlot = -1;
  static constexpr bool kSplitHiddenGrad = true;  // the n gate's two sides differ by r

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void forward(const ForwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A hr = M::load(r.gates_h, 0 * H + j) + M::load_or_zero(r.b_hh, 0 * H + j);
    A hz = M::load(r.gates_h, 1 * H + j) + M::load_or_zero(r.b_hh, 1 * H + j);
    A hn = M::load(r.gates_h, 2 * H + j) + M::load_or_zero(r.b_hh, 2 * H + j);
    A rg = sigmoid_(M::load(r.gates_x, 0 * H + j) + hr);
    A z = sigmoid_(M::load(r.gates_x, 1 * H + j) + hz);
    A n = M::tanh(M::load(r.gates_x, 2 * H + j) + rg * hn);
    A h_prev = M::load(r.h_prev, j);
    M::store(r.h, j, (A(1) - z) * n + z * h_prev);
    if (r.reserve) {
      M::store(r.reserve, 0 * H + j, rg);
      M::store(r.reserve, 1 * H + j, z);
      M::store(r.reserve, 2 * H + j, n);
      M::store(r.reserve, 3 * H + j, hn);
    }
  }

  template <typename T, typename A>
  BIRNN_HOST_DEVICE static void backward(const BackwardRow<T>& r, int64_t j, int64_t H) {
    using M = Math<A>;
    A rg = M::load(r.reserve, 0 * H + j);
    A z = M::load(r.reserve, 1 * H + j);
    A n = M::load(r.reserve, 2 * H + j);
    A hn = M::load(r.reserve, 3 * H + j);
    A dh = M::load(r.dh, j);
    A dn = dh * (A(1) - z) * (A(1) - n * n);
    A dz = dh * (M::load(r.h_prev, j) - n) * z * (A(1) - z);
    A dr = dn * hn * rg * (A(1) - rg);
    M::store(r.dgates_x, 0 * H + j, dr);
    M::store(r.dgates_x, 1 * H + j, dz);
    M::store(r.dgates_x, 2 * H + j, dn);
    M::store(r.dgates_h, 0 * H + j, dr);
    M::store(r.dgates_h, 1 * H + j, dz);
    M::store(r.dgates_h, 2 * H + j, dn * rg);
    M::store(r.dh_prev, j, dh * z);
  }
};

// Maps the cell kind to its struct.
template <CellKind Kind> struct CellOf;
#define BIRNN_CELL_OF(name, Kind, Cell) \
  template <> struct CellOf<CellKind::Kind> { using type = Cell; };
BIRNN_FOR_EACH_CELL(BIRNN_CELL_OF)
#undef BIRNN_CELL_OF

// Calls fn(Cell{}) with the struct of the run-time cell kind: the one switch over cells.
template <typename Fn>
decltype(auto) dispatch_cell(CellKind kind, Fn&& fn) {
#define BIRNN_CELL_CASE(name, Kind, Cell) \
  if (kind == CellKind::Kind) return fn(Cell{});
  BIRNN_FOR_EACH_CELL(BIRNN_CELL_CASE)
#undef BIRNN_CELL_CASE
  return fn(LstmCell{});  // not reached: every kind has its case above
}

}  // namespace birnn
