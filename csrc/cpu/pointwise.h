// The CPU's per-row pointwise pass: a cell's forward or backward over the H hidden units of
// one (t, b, d) row. The cell math is csrc/cells.h's; the bulk of the row runs through the
// same cell structs instantiated with SIMD vectors, 16 floats (8 doubles) at a time on a
// CPU with AVX-512 (pointwise_avx512.cpp), else 8 (4) with AVX2 and FMA
// (pointwise_avx2.cpp), and the tail in scalar code.
#pragma once

#include <ATen/OpMathType.h>

#include <type_traits>

#include "../cells.h"

namespace birnn::cpu {

// True when this CPU runs the AVX2 loops (and BIRNN_EXT_CPU_SIMD is not "0"); checked once.
bool use_avx2();

namespace avx512 {
bool supported();  // gemm_avx512.h
// As avx2:: below, 16 floats (8 doubles) at a time: pointwise_avx512.cpp.
template <typename Cell, typename T>
int64_t forward_units(const ForwardRow<T>& r, int64_t H);
template <typename Cell, typename T>
int64_t backward_units(const BackwardRow<T>& r, int64_t H);
}  // namespace avx512

namespace avx2 {
// Defined for T = float and double in pointwise_avx2.cpp. They process the leading units
// in whole vectors and return how many they did.
template <typename Cell, typename T>
int64_t forward_units(const ForwardRow<T>& r, int64_t H);
template <typename Cell, typename T>
int64_t backward_units(const BackwardRow<T>& r, int64_t H);
// Small-batch GEMM for the per-step products (see pointwise_avx2.cpp): pack op(W) [K, N]
// once into panels of 8 columns (panel_floats(N, K) floats), then
// out[rows, N] = x[rows, K] @ op(W) + beta * out at every step.
inline int64_t panel_floats(int64_t N, int64_t K) { return (N + 7) / 8 * 8 * K; }
void pack_panels(const float* w, int64_t N, int64_t K, bool transposed, float* panels);
void small_gemm(int64_t rows, int64_t N, int64_t K, const float* x, int64_t ldx,
                const float* panels, float beta, float* out, int64_t ldout);
}  // namespace avx2

// The SIMD loops exist for float and double on x86-64 (elsewhere use_avx2() is false).
template <typename T>
constexpr bool kHasSimdPath =
#if defined(__x86_64__)
    std::is_same_v<T, float> || std::is_same_v<T, double>;
#else
    false;
#endif

template <typename Cell, typename T>
void forward_row(const ForwardRow<T>& r, int64_t H) {
  int64_t j = 0;
  if constexpr (kHasSimdPath<T>) {
    if (avx512::supported()) {
      j = avx512::forward_units<Cell, T>(r, H);
    } else if (use_avx2()) {
      j = avx2::forward_units<Cell, T>(r, H);
    }
  }
  for (; j < H; ++j) Cell::template forward<T, at::opmath_type<T>>(r, j, H);
}

template <typename Cell, typename T>
void backward_row(const BackwardRow<T>& r, int64_t H) {
  int64_t j = 0;
  if constexpr (kHasSimdPath<T>) {
    if (avx512::supported()) {
      j = avx512::backward_units<Cell, T>(r, H);
    } else if (use_avx2()) {
      j = avx2::backward_units<Cell, T>(r, H);
    }
  }
  for (; j < H; ++j) Cell::template backward<T, at::opmath_type<T>>(r, j, H);
}

}  // namespace birnn::cpu
