// The GEMM of gemm.h for AVX-512: gemm_kernel.h over 16-float zmm registers. Only this file
// is compiled for AVX-512; it runs only where cpu_isa() (isa.h) saw AVX-512F at run time.
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
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,fma,avx2")

namespace birnn::cpu::avx512 {
namespace {

struct V {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16;
  static constexpr int kRowBlock = 8, kSmallRowBlock = 8, kSmallRows = 8;
  // 32 registers: R*P accumulators + P weights + 1 broadcast.
  static constexpr int max_panels(int R) { return R <= 2 ? 8 : R <= 4 ? 6 : R <= 6 ? 4 : 3; }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg broadcast(float x) { return _mm512_set1_ps(x); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Mask kFull() { return Mask(0xFFFF); }
  static Mask mask_of(int64_t cols) { return Mask((1u << cols) - 1); }
  static Reg load_masked(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store_masked(float* p, Mask m, Reg v) { _mm512_mask_storeu_ps(p, m, v); }

  // r[i] holds row i of a 16 x 16 block; afterwards r[c] holds its column c. Three rounds:
  // pairs of floats, then quads within 128-bit lanes, then the lanes themselves.
  static void transpose(Reg r[16]) {
    Reg t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Now lane j of r[4i + c] will hold column 4j + c of rows 4i .. 4i + 3.
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; ++c) {
      const Reg a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
      const Reg b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
      const Reg e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
      const Reg f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
      t[c] = _mm512_shuffle_f32x4(a, e, 0x88);
      t[4 + c] = _mm512_shuffle_f32x4(a, e, 0xDD);
      t[8 + c] = _mm512_shuffle_f32x4(b, f, 0x88);
      t[12 + c] = _mm512_shuffle_f32x4(b, f, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
};

}  // namespace
}  // namespace birnn::cpu::avx512

#define BIRNN_SIMD_NS avx512
#include "gemm_kernel.h"

#pragma GCC pop_options
#endif  // BIRNN_X86_SIMD
