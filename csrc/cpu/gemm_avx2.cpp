// The GEMM of gemm.h for AVX2 + FMA: gemm_kernel.h over 8-float ymm registers. Only this file
// is compiled for AVX2; it runs only where cpu_isa() (isa.h) saw AVX2 and FMA at run time.
// Every header comes BEFORE the target pragma: inline library functions defined after it
// would be compiled for this ISA, and the linker may keep that copy for the whole library.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm.h"
#include "isa.h"

#ifdef BIRNN_X86_SIMD

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace birnn::cpu::avx2 {
namespace {

struct V {
  using Reg = __m256;
  using Mask = __m256i;  // lane i all ones where column i is kept (vmaskmov)
  static constexpr int kWidth = 8;
  // 16 registers: R*P accumulators + P weights + 1 broadcast (a single row takes its weights
  // as memory operands of the FMAs, so 8 chains fit). Tiles of 6 x 2 panels for large
  // products; a product of at most 8 rows (a small batch's step) is faster as tiles of
  // 4 x 3 panels (benchmarks/NOTES.md, CPU version 10).
  static constexpr int kRowBlock = 6, kSmallRowBlock = 4, kSmallRows = 8;
  static constexpr int max_panels(int R) { return R <= 1 ? 8 : R <= 2 ? 4 : R <= 4 ? 3 : 2; }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm256_set1_ps(x); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Mask kFull() { return _mm256_set1_epi32(-1); }
  static Mask mask_of(int64_t cols) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg load_masked(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  // Every mask here is a prefix (mask_of, kFull). Not vmaskmovps: as a store it takes about
  // 14 cycles on AMD Zen 4 (4 ns each against 1 ns for vmovups, a loop of stores), and the
  // GEMM stores every C tile and every packed 6-row group of a weight gradient's left
  // operand with it (benchmarks/NOTES.md, CPU version 18). A full mask is one vmovups, a
  // shorter prefix that many scalar stores.
  static void store_masked(float* p, Mask m, Reg v) {
    const int bits = _mm256_movemask_ps(_mm256_castsi256_ps(m));
    if (bits == 0xFF) return _mm256_storeu_ps(p, v);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, v);
    for (int i = 0; i < 8 && (bits >> i) & 1; ++i) p[i] = lanes[i];
  }

  // r[i] holds row i of an 8 x 8 block; afterwards r[c] holds its column c: pairs, then
  // quads within 128-bit lanes, then the lanes.
  static void transpose(Reg r[8]) {
    Reg t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; ++c) {
      r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
      r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
  }
};

}  // namespace
}  // namespace birnn::cpu::avx2

#define BIRNN_SIMD_NS avx2
#include "gemm_kernel.h"

#pragma GCC pop_options
#endif  // BIRNN_X86_SIMD
