// The cells of csrc/cells.h over SIMD vectors: this file specialises Math<> for ATen's
// Vectorized<float/double> (whose exp and tanh are Sleef's, shipped inside libtorch_cpu) and
// instantiates the cell structs with it. Only this file is compiled for AVX2 + FMA, and it
// runs only where pointwise.h's use_avx2() saw those features at run time.
//
// Library headers are included BEFORE the target pragma, so the generic inline functions
// they define are not compiled for AVX2 here. The cell headers come AFTER it on purpose:
// their templates take their code generation (and their calling convention for 32-byte
// vector arguments) from where they are defined, which must be AVX2 code like Math<V>'s.
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BIRNN_HAVE_AVX2_TU 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
// ATen's vector types live in an inline namespace named after the capability, so these
// AVX2 definitions cannot collide with any other build of them.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// The pragma switches code generation but not the feature macros, which sleef.h reads to
// declare its 8-wide functions. Set them for this file only.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#endif
#include <ATen/cpu/vec/vec.h>

#include "pointwise.h"

namespace birnn {

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V load(const S* p, int64_t i) { return V::loadu(p + i); }
  static V load_or_zero(const S* p, int64_t i) { return p ? V::loadu(p + i) : V(S(0)); }
  static void store(S* p, int64_t i, V v) { v.store(p + i); }
  static V exp(V x) { return x.exp(); }
  static V tanh(V x) { return x.tanh(); }
  static V relu(V x) { return at::vec::maximum(x, V(S(0))); }
  static V relu_grad(V h, V dh) { return V::blendv(V(S(0)), dh, h > V(S(0))); }
};

namespace cpu::avx2 {

template <typename Cell, typename T>
int64_t forward_units(const ForwardRow<T>& r, int64_t H) {
  using V = at::vec::Vectorized<T>;
  int64_t j = 0;
  for (; j + V::size() <= H; j += V::size()) Cell::template forward<T, V>(r, j, H);
  return j;
}

template <typename Cell, typename T>
int64_t backward_units(const BackwardRow<T>& r, int64_t H) {
  using V = at::vec::Vectorized<T>;
  int64_t j = 0;
  for (; j + V::size() <= H; j += V::size()) Cell::template backward<T, V>(r, j, H);
  return j;
}

#define BIRNN_INSTANTIATE(CELL, T)                                              \
  template int64_t forward_units<CELL, T>(const ForwardRow<T>&, int64_t);      \
  template int64_t backward_units<CELL, T>(const BackwardRow<T>&, int64_t);
#define BIRNN_INSTANTIATE_CELLS(T)                              \
  BIRNN_INSTANTIATE(RnnCell<CellKind::RnnTanh>, T)              \
  BIRNN_INSTANTIATE(RnnCell<CellKind::RnnRelu>, T)              \
  BIRNN_INSTANTIATE(LstmCell, T)                                \
  BIRNN_INSTANTIATE(GruCell, T)
BIRNN_INSTANTIATE_CELLS(float)
BIRNN_INSTANTIATE_CELLS(double)
#undef BIRNN_INSTANTIATE_CELLS
#undef BIRNN_INSTANTIATE

}  // namespace cpu::avx2
}  // namespace birnn

#pragma GCC pop_options
#else
#include "pointwise.h"
#endif  // x86-64

namespace birnn::cpu {

bool use_avx2() {
#ifdef BIRNN_HAVE_AVX2_TU
  static const bool enabled = [] {
    const char* env = std::getenv("BIRNN_EXT_CPU_SIMD");
    if (env != nullptr && env[0] == '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return enabled;
#else
  return false;
#endif
}

}  // namespace birnn::cpu
