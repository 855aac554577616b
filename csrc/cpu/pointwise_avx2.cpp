// The AVX2 build of the cells' pointwise pass (pointwise_simd.h: 8 floats or 4 doubles at
// a time) and the AVX2 small-batch GEMM. Only this file is compiled for AVX2 + FMA, and it
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

#define BIRNN_SIMD_NS avx2
#define BIRNN_SIMD_TANHF Sleef_tanhf8_u35avx2
#include "pointwise_simd.h"

namespace birnn::cpu::avx2 {

// ---- small-batch GEMM: out[rows, N] = x[rows, K] @ P + beta * out ----------------------
// P is op(W) [K, N] packed by pack_panels() as panels of 8 columns: P[n / 8][k][n % 8], the
// last panel zero-padded. A panel's 8 columns are one AVX2 register; up to 8 rows of x are
// held as 8 accumulators, so each weight is read once per 8 rows and every load feeds an FMA.

void pack_panels(const float* w, int64_t N, int64_t K, bool transposed, float* panels) {
  for (int64_t n0 = 0; n0 < N; n0 += 8) {
    float* panel = panels + (n0 / 8) * K * 8;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t i = 0; i < 8; ++i) {
        const int64_t n = n0 + i;
        // op(W)[k][n]: W [N, K] used transposed, or W [K, N] as it is.
        panel[k * 8 + i] = n < N ? (transposed ? w[n * K + k] : w[k * N + n]) : 0.f;
      }
    }
  }
}

// R rows x P panels (8P columns) of out, as R*P independent accumulator chains: FMA latency
// is hidden only when several chains are in flight, so a single row takes 4 panels at once.
template <int R, int P>
void panel_block(const float* x, int64_t ldx, const float* panels, int64_t K, float beta,
                 float* out, int64_t ldout, int64_t cols) {
  __m256 acc[R][P];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) acc[r][p] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[P];
    for (int p = 0; p < P; ++p) w[p] = _mm256_loadu_ps(panels + (p * K + k) * 8);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      for (int p = 0; p < P; ++p) acc[r][p] = _mm256_fmadd_ps(xv, w[p], acc[r][p]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float lanes[8 * P];
    for (int p = 0; p < P; ++p) _mm256_storeu_ps(lanes + 8 * p, acc[r][p]);
    float* o = out + r * ldout;
    for (int64_t i = 0; i < cols; ++i) o[i] = lanes[i] + (beta != 0.f ? beta * o[i] : 0.f);
  }
}

// Rows in chunks of up to 8, so a step reads the weights once per 8 rows (they stream from
// L3: a panel pass per row chunk is what the step costs). Panels 4 at a time for 1-2 rows
// and 2 at a time for 3-4 rows keep at least 4 accumulator chains in flight.
template <int R>
void row_chunk(const float* x, int64_t ldx, int64_t N, int64_t K, const float* panels,
               float beta, float* out, int64_t ldout) {
  constexpr int P = R <= 2 ? 4 : (R <= 4 ? 2 : 1);
  int64_t n0 = 0;
  for (; n0 + 8 * P <= N; n0 += 8 * P) {
    panel_block<R, P>(x, ldx, panels + (n0 / 8) * K * 8, K, beta, out + n0, ldout, 8 * P);
  }
  for (; n0 < N; n0 += 8) {
    const int64_t cols = N - n0 < 8 ? N - n0 : 8;
    panel_block<R, 1>(x, ldx, panels + (n0 / 8) * K * 8, K, beta, out + n0, ldout, cols);
  }
}

void small_gemm(int64_t rows, int64_t N, int64_t K, const float* x, int64_t ldx,
                const float* panels, float beta, float* out, int64_t ldout) {
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const float* xr = x + r0 * ldx;
    float* o = out + r0 * ldout;
    switch (rows - r0 < 8 ? rows - r0 : 8) {
      case 1: row_chunk<1>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 2: row_chunk<2>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 3: row_chunk<3>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 4: row_chunk<4>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 5: row_chunk<5>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 6: row_chunk<6>(xr, ldx, N, K, panels, beta, o, ldout); break;
      case 7: row_chunk<7>(xr, ldx, N, K, panels, beta, o, ldout); break;
      default: row_chunk<8>(xr, ldx, N, K, panels, beta, o, ldout); break;
    }
  }
}

}  // namespace birnn::cpu::avx2

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
