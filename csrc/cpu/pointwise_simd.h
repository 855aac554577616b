// The cells of csrc/cells.h over ATen's SIMD vectors, for one instruction set: included by
// pointwise_avx2.cpp and pointwise_avx512.cpp after each has switched code generation to
// its target and set CPU_CAPABILITY (so at::vec::Vectorized<float> is 8 or 16 floats wide
// and its exp / tanh call that width of Sleef, which ships inside libtorch_cpu), with
// BIRNN_SIMD_NS naming the namespace (avx2 or avx512) that receives forward_units and
// backward_units (declared in pointwise.h), and BIRNN_SIMD_TANHF naming Sleef's 3.5-ulp
// float tanh of that width.
//
// Why 3.5 ulp for float: tanh is most of an LSTM's pointwise cost, and Sleef's 1-ulp tanh
// (ATen's Vectorized::tanh) takes about 2.5 times the cycles of the 3.5-ulp one
// (benchmarks/NOTES.md, CPU version 8). 3.5 ulp (4e-7 relative) is far below the float32
// rounding the GEMMs' summation order already adds. double keeps the 1-ulp version.
//
// No include guard on purpose: each of the two files includes it once.
#include "pointwise.h"

namespace birnn {

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V load(const S* p, int64_t i) { return V::loadu(p + i); }
  static V load_or_zero(const S* p, int64_t i) { return p ? V::loadu(p + i) : V(S(0)); }
  static void store(S* p, int64_t i, V v) { v.store(p + i); }
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) {
    if constexpr (std::is_same_v<S, float>) {
      return V(BIRNN_SIMD_TANHF(x));
    } else {
      return x.tanh();
    }
  }
  static V relu(V x) { return at::vec::maximum(x, V(S(0))); }
  // Math<A>::relu_grad's rule: 0 where h <= 0, else dh (NaN h included). maximum() above
  // already keeps a NaN, as torch.relu does.
  static V relu_grad(V h, V dh) { return V::blendv(dh, V(S(0)), h <= V(S(0))); }
};

namespace cpu::BIRNN_SIMD_NS {

template <typename Cell, typename T>
int64_t forward_units(const ForwardRow<T>& r, int64_t j0, int64_t j1, int64_t H) {
  using V = at::vec::Vectorized<T>;
  int64_t j = j0;
  for (; j + V::size() <= j1; j += V::size()) Cell::template forward<T, V>(r, j, H);
  return j;
}

template <typename Cell, typename T>
int64_t backward_units(const BackwardRow<T>& r, int64_t j0, int64_t j1, int64_t H) {
  using V = at::vec::Vectorized<T>;
  int64_t j = j0;
  for (; j + V::size() <= j1; j += V::size()) Cell::template backward<T, V>(r, j, H);
  return j;
}

#define BIRNN_INSTANTIATE(CELL, T)                                                              \
  template int64_t forward_units<CELL, T>(const ForwardRow<T>&, int64_t, int64_t, int64_t);    \
  template int64_t backward_units<CELL, T>(const BackwardRow<T>&, int64_t, int64_t, int64_t);
#define BIRNN_INSTANTIATE_FLOAT(name, Kind, Cell) BIRNN_INSTANTIATE(Cell, float)
#define BIRNN_INSTANTIATE_DOUBLE(name, Kind, Cell) BIRNN_INSTANTIATE(Cell, double)
BIRNN_FOR_EACH_CELL(BIRNN_INSTANTIATE_FLOAT)
BIRNN_FOR_EACH_CELL(BIRNN_INSTANTIATE_DOUBLE)
#undef BIRNN_INSTANTIATE_DOUBLE
#undef BIRNN_INSTANTIATE_FLOAT
#undef BIRNN_INSTANTIATE

}  // namespace cpu::BIRNN_SIMD_NS
}  // namespace birnn
