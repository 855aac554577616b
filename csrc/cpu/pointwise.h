// The CPU's per-row pointwise pass: a cell's forward or backward over the hidden units
// [j0, j1) of one (t, b, d) row of H units. The cell math is csrc/cells.h's; the bulk of the row runs through the
// same cell structs instantiated with SIMD vectors, 16 floats (8 doubles) at a time with
// AVX-512 (pointwise_avx512.cpp), 8 (4) with AVX2 and FMA (pointwise_avx2.cpp), as isa.h
// decides, and the tail in scalar code.
#pragma once

#include <ATen/OpMathType.h>

#include <type_traits>

#include "../cells.h"
#include "isa.h"

namespace birnn::cpu {

// Declared for each SIMD namespace (avx512, avx2); defined for T = float and double in
// pointwise_simd.h. They process the units from j0 in whole vectors, up to j1, and return
// where they stopped.
#define BIRNN_DECLARE_SIMD_UNITS(NS)                                                  \
  namespace NS {                                                                       \
  template <typename Cell, typename T>                                                 \
  int64_t forward_units(const ForwardRow<T>& r, int64_t j0, int64_t j1, int64_t H);   \
  template <typename Cell, typename T>                                                 \
  int64_t backward_units(const BackwardRow<T>& r, int64_t j0, int64_t j1, int64_t H); \
  }
BIRNN_DECLARE_SIMD_UNITS(avx512)
BIRNN_DECLARE_SIMD_UNITS(avx2)
#undef BIRNN_DECLARE_SIMD_UNITS

// The SIMD loops exist for float and double on x86-64.
template <typename T>
constexpr bool kHasSimdPath =
#ifdef BIRNN_X86_SIMD
    std::is_same_v<T, float> || std::is_same_v<T, double>;
#else
    false;
#endif

template <typename Cell, typename T>
void forward_row(const ForwardRow<T>& r, int64_t j0, int64_t j1, int64_t H) {
  int64_t j = j0;
  if constexpr (kHasSimdPath<T>) {
    switch (cpu_isa()) {
      case Isa::Avx512: j = avx512::forward_units<Cell, T>(r, j0, j1, H); break;
      case Isa::Avx2: j = avx2::forward_units<Cell, T>(r, j0, j1, H); break;
      case Isa::Scalar: break;
    }
  }
  for (; j < j1; ++j) Cell::template forward<T, at::opmath_type<T>>(r, j, H);
}

template <typename Cell, typename T>
void backward_row(const BackwardRow<T>& r, int64_t j0, int64_t j1, int64_t H) {
  int64_t j = j0;
  if constexpr (kHasSimdPath<T>) {
    switch (cpu_isa()) {
      case Isa::Avx512: j = avx512::backward_units<Cell, T>(r, j0, j1, H); break;
      case Isa::Avx2: j = avx2::backward_units<Cell, T>(r, j0, j1, H); break;
      case Isa::Scalar: break;
    }
  }
  for (; j < j1; ++j) Cell::template backward<T, at::opmath_type<T>>(r, j, H);
}

}  // namespace birnn::cpu
