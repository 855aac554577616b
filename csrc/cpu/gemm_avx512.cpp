// AVX-512 float32 GEMM (interface and packing layout: gemm_avx512.h).
//
// Structure (the GotoBLAS one, cut down to what our shapes need):
// - K in blocks of at most kKBlock, so a block of panels stays in L2 while every row of A
//   passes over it, and a row block of A (8 rows x kKBlock) stays in L1.
// - N in blocks of panels that fill about kPanelBlockBytes of L2.
// - a register tile of R rows x P panels (16 P columns): R*P zmm accumulators, P weight
//   vectors per k and one broadcast of A per row. A 512-bit FMA issues once per cycle here
//   with a latency of 4, so at least 4 independent accumulators must be in flight: a single
//   row (B = 1, a matrix-vector product) takes 8 panels at once.
// Only this file is compiled for AVX-512; it runs only where supported() said so.
#include "gemm_avx512.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define BIRNN_HAVE_AVX512_TU 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,fma,avx2")

namespace birnn::cpu::avx512 {
namespace {

constexpr int64_t kPanel = 16;       // columns per panel: one zmm of floats
constexpr int64_t kRowBlock = 8;     // rows of A per register tile, at most
constexpr int64_t kKBlock = 384;     // K per block: 8 rows of A in L1 (12 KiB)
constexpr int64_t kPanelBlockBytes = 384 * 1024;  // panels of one N-block, in L2

// Panels per register tile for R rows: R*P accumulators + P weights + 1 broadcast <= 32.
constexpr int max_panels(int R) {
  return R <= 2 ? 8 : R <= 4 ? 6 : R <= 6 ? 4 : 3;
}

// One register tile: c[R, 16 P] (+)= a[R, kc] @ panels[P][kc][16], the last panel's
// columns masked by `last_mask`. `accumulate` adds the tile to c; `bias` (or null) is added.
template <int R, int P>
void tile(int64_t kc, const float* a, int64_t a_row, int64_t a_col, const float* w,
          int64_t panel_stride, float* c, int64_t ldc, __mmask16 last_mask, bool accumulate,
          const float* bias) {
  __m512 acc[R][P];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) acc[r][p] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 wv[P];
    for (int p = 0; p < P; ++p) wv[p] = _mm512_loadu_ps(w + p * panel_stride + k * kPanel);
    const float* ak = a + k * a_col;
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(ak[r * a_row]);
      for (int p = 0; p < P; ++p) acc[r][p] = _mm512_fmadd_ps(xv, wv[p], acc[r][p]);
    }
  }
  for (int p = 0; p < P; ++p) {
    const __mmask16 mask = p == P - 1 ? last_mask : __mmask16(0xFFFF);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + p * kPanel) : _mm512_setzero_ps();
    for (int r = 0; r < R; ++r) {
      float* cp = c + r * ldc + p * kPanel;
      __m512 v = _mm512_add_ps(acc[r][p], b);
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cp));
      _mm512_mask_storeu_ps(cp, mask, v);
    }
  }
}

struct Block {
  int64_t kc;           // K of this block
  const float* a;       // A at (row 0 of the row block, k0)
  int64_t a_row, a_col;
  const float* panels;  // panel p0 at k0
  int64_t panel_stride; // floats from one panel to the next (K * 16)
  int64_t p0, p1;       // panels [p0, p1) of this N-block, of `num_panels` in all
  int64_t num_panels;
  __mmask16 tail_mask;  // columns of the very last panel
  float* c;             // C at (row 0 of the row block, column 0)
  int64_t ldc;
  bool accumulate;
  const float* bias;    // bias at column 0, or null
};

template <int R, int P>
void run_tile(const Block& b, int64_t p) {
  const __mmask16 mask = p + P == b.num_panels ? b.tail_mask : __mmask16(0xFFFF);
  tile<R, P>(b.kc, b.a, b.a_row, b.a_col, b.panels + (p - b.p0) * b.panel_stride,
             b.panel_stride, b.c + p * kPanel, b.ldc, mask, b.accumulate,
             b.bias ? b.bias + p * kPanel : nullptr);
}

// The panels [p0, p1) for R rows: whole tiles of max_panels(R), then one narrower tile.
template <int R>
void row_block(const Block& b) {
  constexpr int P = max_panels(R);
  int64_t p = b.p0;
  for (; p + P <= b.p1; p += P) run_tile<R, P>(b, p);
  switch (b.p1 - p) {
    case 0: break;
    case 1: run_tile<R, 1>(b, p); break;
    case 2: if constexpr (P > 2) run_tile<R, 2>(b, p); break;
    case 3: if constexpr (P > 3) run_tile<R, 3>(b, p); break;
    case 4: if constexpr (P > 4) run_tile<R, 4>(b, p); break;
    case 5: if constexpr (P > 5) run_tile<R, 5>(b, p); break;
    case 6: if constexpr (P > 6) run_tile<R, 6>(b, p); break;
    default: if constexpr (P > 7) run_tile<R, 7>(b, p); break;
  }
}

void run_rows(int64_t rows, const Block& b) {
  switch (rows) {
    case 1: row_block<1>(b); break;
    case 2: row_block<2>(b); break;
    case 3: row_block<3>(b); break;
    case 4: row_block<4>(b); break;
    case 5: row_block<5>(b); break;
    case 6: row_block<6>(b); break;
    case 7: row_block<7>(b); break;
    default: row_block<8>(b); break;
  }
}

// In-register transpose: r[i] holds row i of a 16 x 16 block; afterwards r[c] holds its
// column c. Three rounds of shuffles: pairs of floats, then quads within 128-bit lanes, then
// the lanes themselves.
void transpose16x16(__m512 r[16]) {
  __m512 t[16];
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
    const __m512 a = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
    const __m512 b = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
    const __m512 e = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
    const __m512 f = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
    t[c] = _mm512_shuffle_f32x4(a, e, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(a, e, 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(b, f, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(b, f, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

}  // namespace

void pack_panels(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed,
                 float* panels) {
  const int64_t num_panels = (N + kPanel - 1) / kPanel;
  if (!transposed) {
    // Blocks of k outer and panels inner, so that W [K, N] is read in its storage order.
    constexpr int64_t kRowsPerBlock = 64;
    for (int64_t k0 = 0; k0 < K; k0 += kRowsPerBlock) {
      const int64_t k1 = std::min(K, k0 + kRowsPerBlock);
      for (int64_t p = 0; p < num_panels; ++p) {
        const int64_t n0 = p * kPanel, cols = std::min(kPanel, N - n0);
        const __mmask16 mask = __mmask16((1u << cols) - 1);
        float* panel = panels + p * K * kPanel;
        for (int64_t k = k0; k < k1; ++k) {
          _mm512_storeu_ps(panel + k * kPanel, _mm512_maskz_loadu_ps(mask, w + k * ldw + n0));
        }
      }
    }
    return;
  }
  for (int64_t p = 0; p < num_panels; ++p) {
    const int64_t n0 = p * kPanel, cols = std::min(kPanel, N - n0);
    float* panel = panels + p * K * kPanel;
    // W [N, K]: 16 rows of W become the panel's 16 columns, 16 k at a time.
    for (int64_t k0 = 0; k0 < K; k0 += kPanel) {
      const int64_t ks = std::min(kPanel, K - k0);
      const __mmask16 k_mask = __mmask16((1u << ks) - 1);
      __m512 block[16];
      for (int64_t i = 0; i < kPanel; ++i) {
        block[i] = i < cols ? _mm512_maskz_loadu_ps(k_mask, w + (n0 + i) * ldw + k0)
                            : _mm512_setzero_ps();
      }
      transpose16x16(block);
      for (int64_t c = 0; c < ks; ++c) _mm512_storeu_ps(panel + (k0 + c) * kPanel, block[c]);
    }
  }
}

void pack_rows(const float* const* rows, int64_t N, int64_t K, float* panels) {
  const int64_t num_panels = (N + kPanel - 1) / kPanel;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = 0; p < num_panels; ++p) {
      const int64_t n0 = p * kPanel, cols = std::min(kPanel, N - n0);
      _mm512_storeu_ps(panels + (p * K + k) * kPanel,
                       _mm512_maskz_loadu_ps(__mmask16((1u << cols) - 1), rows[k] + n0));
    }
  }
}

void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row, int64_t a_col,
          const float* panels, const float* bias, float beta, float* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int64_t num_panels = (N + kPanel - 1) / kPanel;
  const __mmask16 tail_mask =
      N % kPanel == 0 ? __mmask16(0xFFFF) : __mmask16((1u << (N % kPanel)) - 1);
  if (K == 0) {  // nothing to multiply: C = beta * C + bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        c[m * ldc + n] = (beta != 0.f ? c[m * ldc + n] : 0.f) + (bias ? bias[n] : 0.f);
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kc = std::min(kKBlock, K - k0);
    const int64_t block_panels =
        std::max<int64_t>(1, kPanelBlockBytes / (kc * kPanel * int64_t(sizeof(float))));
    for (int64_t p0 = 0; p0 < num_panels; p0 += block_panels) {
      Block b;
      b.kc = kc;
      b.a_row = a_row;
      b.a_col = a_col;
      b.panels = panels + p0 * K * kPanel + k0 * kPanel;
      b.panel_stride = K * kPanel;
      b.p0 = p0;
      b.p1 = std::min(num_panels, p0 + block_panels);
      b.num_panels = num_panels;
      b.tail_mask = tail_mask;
      b.ldc = ldc;
      b.accumulate = k0 > 0 || beta != 0.f;
      b.bias = k0 == 0 ? bias : nullptr;
      for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
        b.a = a + m0 * a_row + k0 * a_col;
        b.c = c + m0 * ldc;
        run_rows(std::min(kRowBlock, M - m0), b);
      }
    }
  }
}

}  // namespace birnn::cpu::avx512

#pragma GCC pop_options
#endif  // x86-64

namespace birnn::cpu::avx512 {

bool supported() {
#ifdef BIRNN_HAVE_AVX512_TU
  static const bool enabled = [] {
    const char* env = std::getenv("BIRNN_EXT_CPU_SIMD");
    if (env != nullptr && (env[0] == '0' || std::strcmp(env, "avx2") == 0)) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return enabled;
#else
  return false;
#endif
}

#ifndef BIRNN_HAVE_AVX512_TU
void pack_panels(const float*, int64_t, int64_t, int64_t, bool, float*) { std::abort(); }
void pack_rows(const float* const*, int64_t, int64_t, float*) { std::abort(); }
void gemm(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*,
          const float*, float, float*, int64_t) {
  std::abort();
}
#endif

}  // namespace birnn::cpu::avx512
