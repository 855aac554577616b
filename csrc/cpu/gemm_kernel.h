// The float32 GEMM of gemm.h for ONE instruction set, written once over a vector type V:
// included by gemm_avx512.cpp (V = 16 floats in a zmm register) and gemm_avx2.cpp (V = 8
// floats in a ymm register), each after switching code generation to its target, with
// BIRNN_SIMD_NS naming the namespace that receives `kGemm`.
//
// V provides: Reg, Mask, kWidth (floats per register), kRowBlock (rows of A per register
// tile; kSmallRowBlock for products of at most kSmallRows rows), max_panels(R) (panels per tile for R rows, so that R*P accumulators + P weights +
// one broadcast fit the register file), zero, load, store, broadcast, fma, add, mask_of(cols),
// kFull, load_masked, store_masked, and transpose(Reg[kWidth]) (in-register transpose of a
// kWidth x kWidth block).
//
// Structure (the GotoBLAS one, cut down to what a recurrence needs):
// - the right operand is packed once into panels of kWidth columns: panels[n / W][k][n % W],
//   the last panel zero-padded; a panel's k-range is contiguous, so one packing serves every
//   K-block;
// - K in blocks of at most kKBlock, so a block of panels stays in L2 while every row of A
//   passes over it, and a row block of A (kRowBlock rows x kKBlock) stays in L1; a K of at
//   most kSingleKBlock (the per-step products and projections up to H = I = 512) is one block;
// - N in blocks of panels filling about kPanelBlockBytes of L2;
// - a register tile of R rows x P panels: R*P independent FMA chains. A core retires one or
//   two FMAs per cycle with a latency of 4, so at least 8 chains must be in flight: a single
//   row (B = 1, a matrix-vector product) takes 8 panels at once.
// The left operand is read in place when its rows are contiguous. A left operand read across
// its storage (a_col != 1: dgates^T for a weight gradient, whose k-th column lies a whole
// dgates row further on) is first copied, a K-block of all its rows at a time, into
// contiguous row blocks: read in place, every k of a tile touched a new page (and a new
// DRAM line), and each tile of every N-block paid those misses again.
//
// No include guard on purpose: each of the two files includes it once, after including
// <algorithm>, <cstdint>, <vector> and gemm.h ahead of its target pragma.

namespace birnn::cpu::BIRNN_SIMD_NS {
namespace {

constexpr int64_t kW = V::kWidth;
constexpr int64_t kKBlock = 384;                  // K per block: a row block of A in L1
// Up to this K one block: splitting K = 512 into 384 + 128 stored every C tile twice and ran
// a short second block, 5-6% slower on H = 512's per-step and projection products on AVX-512
// and AVX2 alike (benchmarks/NOTES.md, CPU version 16), while blocks of 512 for every K cost
// the AVX2 weight gradients (K = T*B) 5-7%.
constexpr int64_t kSingleKBlock = 512;

// K per block for a product of depth K.
constexpr int64_t k_block(int64_t K) { return K <= kSingleKBlock ? K : kKBlock; }
constexpr int64_t kPanelBlockBytes = 384 * 1024;  // the panels of one N-block, in L2

// One register tile: c[R, W*P] (+)= a[R, kc] @ panels[P][kc][W], the last panel's columns
// masked by `last_mask`. `accumulate` adds the tile to c; `bias` (or null) is added.
template <int R, int P>
void tile(int64_t kc, const float* a, int64_t a_row, int64_t a_col, const float* w,
          int64_t panel_stride, float* c, int64_t ldc, typename V::Mask last_mask,
          bool accumulate, const float* bias) {
  typename V::Reg acc[R][P];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) acc[r][p] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    typename V::Reg wv[P];
    for (int p = 0; p < P; ++p) wv[p] = V::load(w + p * panel_stride + k * kW);
    const float* ak = a + k * a_col;
    for (int r = 0; r < R; ++r) {
      const typename V::Reg xv = V::broadcast(ak[r * a_row]);
      for (int p = 0; p < P; ++p) acc[r][p] = V::fma(xv, wv[p], acc[r][p]);
    }
  }
  for (int p = 0; p < P; ++p) {
    const typename V::Mask mask = p == P - 1 ? last_mask : V::kFull();
    const typename V::Reg b = bias ? V::load_masked(mask, bias + p * kW) : V::zero();
    for (int r = 0; r < R; ++r) {
      float* cp = c + r * ldc + p * kW;
      typename V::Reg v = V::add(acc[r][p], b);
      if (accumulate) v = V::add(v, V::load_masked(mask, cp));
      V::store_masked(cp, mask, v);
    }
  }
}

struct Block {
  int64_t kc;            // K of this block
  const float* a;        // A at (row 0 of the row block, k0)
  int64_t a_row, a_col;
  const float* panels;   // panel p0 at k0
  int64_t panel_stride;  // floats from one panel to the next (K * W)
  int64_t p0, p1;        // panels [p0, p1) of this N-block, of `num_panels` in all
  int64_t num_panels;
  typename V::Mask tail_mask;  // columns of the very last panel
  float* c;              // C at (row 0 of the row block, column 0)
  int64_t ldc;
  bool accumulate;
  const float* bias;     // bias at column 0, or null
};

template <int R, int P>
void run_tile(const Block& b, int64_t p) {
  const typename V::Mask mask = p + P == b.num_panels ? b.tail_mask : V::kFull();
  tile<R, P>(b.kc, b.a, b.a_row, b.a_col, b.panels + (p - b.p0) * b.panel_stride,
             b.panel_stride, b.c + p * kW, b.ldc, mask, b.accumulate,
             b.bias ? b.bias + p * kW : nullptr);
}

// Tiles of exactly P panels while they fit, then the remainder as one narrower tile.
template <int R, int P>
void narrower_tile(const Block& b, int64_t p) {
  if constexpr (P > 0) {
    if (b.p1 - p == P) return run_tile<R, P>(b, p);
    narrower_tile<R, P - 1>(b, p);
  }
}

// The panels [p0, p1) for R rows: whole tiles of max_panels(R), then one narrower tile.
template <int R>
void row_block(const Block& b) {
  constexpr int P = V::max_panels(R);
  int64_t p = b.p0;
  for (; p + P <= b.p1; p += P) run_tile<R, P>(b, p);
  if (p < b.p1) narrower_tile<R, P - 1>(b, p);
}

template <int R>
void run_rows(int64_t rows, const Block& b) {
  if constexpr (R > 1) {
    if (rows < R) return run_rows<R - 1>(rows, b);
  }
  row_block<R>(b);
}

// Copies A[:, k0 : k0 + kc] (a at k0; A[m][k] = a[m * a_row + k * a_col]) into
// out[m / rows_per_block][k][m % rows_per_block]. When a_row == 1 (dgates^T: the rows of A are
// side by side in each row of storage) each k reads a run of one storage row. The copy goes
// kKChunk values of k at a time, row block by row block: those few storage rows stay in L1
// while each row block's output is written as one sequential run. Row blocks inner for every
// single k wrote M / rows_per_block streams at once (64 for M = 512, a whole multiple of 4 KiB
// apart, so on the same cache sets), and the copy took 2-3x as long (benchmarks/NOTES.md, CPU
// version 23).
void pack_a_block(int64_t M, int64_t kc, const float* a, int64_t a_row, int64_t a_col,
                  int64_t rows_per_block, float* out) {
  constexpr int64_t kKChunk = 16;
  for (int64_t q0 = 0; q0 < kc; q0 += kKChunk) {
    const int64_t q1 = std::min(kc, q0 + kKChunk);
    for (int64_t m0 = 0; m0 < M; m0 += rows_per_block) {
      const int64_t rows = std::min(rows_per_block, M - m0);
      float* block = out + m0 * kc;
      if (a_row == 1) {
        const typename V::Mask mask = V::mask_of(rows);
        for (int64_t k = q0; k < q1; ++k) {
          V::store_masked(block + k * rows_per_block, mask,
                          V::load_masked(mask, a + k * a_col + m0));
        }
      } else {
        for (int64_t k = q0; k < q1; ++k) {
          for (int64_t r = 0; r < rows; ++r) {
            block[k * rows_per_block + r] = a[(m0 + r) * a_row + k * a_col];
          }
        }
      }
    }
  }
}

// The GEMM in row blocks of kRows; a_pack (M rounded up to kRows, times k_block(K)
// floats) holds A's K-block when a_col != 1, else it is null.
template <int kRows>
void gemm_rows(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row, int64_t a_col,
               const float* panels, const float* bias, float beta, float* c, int64_t ldc,
               float* a_pack) {
  const int64_t num_panels = (N + kW - 1) / kW;
  const typename V::Mask tail_mask = V::mask_of(N - (num_panels - 1) * kW);
  if (K == 0) {  // nothing to multiply: C = beta * C + bias
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        c[m * ldc + n] = (beta != 0.f ? c[m * ldc + n] : 0.f) + (bias ? bias[n] : 0.f);
    return;
  }
  const int64_t k_step = k_block(K);
  for (int64_t k0 = 0; k0 < K; k0 += k_step) {
    const int64_t kc = std::min(k_step, K - k0);
    if (a_pack) pack_a_block(M, kc, a + k0 * a_col, a_row, a_col, kRows, a_pack);
    const int64_t block_panels =
        std::max<int64_t>(1, kPanelBlockBytes / (kc * kW * int64_t(sizeof(float))));
    for (int64_t p0 = 0; p0 < num_panels; p0 += block_panels) {
      Block b;
      b.kc = kc;
      b.panels = panels + p0 * K * kW + k0 * kW;
      b.panel_stride = K * kW;
      b.p0 = p0;
      b.p1 = std::min(num_panels, p0 + block_panels);
      b.num_panels = num_panels;
      b.tail_mask = tail_mask;
      b.ldc = ldc;
      b.accumulate = k0 > 0 || beta != 0.f;
      b.bias = k0 == 0 ? bias : nullptr;
      b.a_row = a_pack ? 1 : a_row;
      b.a_col = a_pack ? kRows : 1;
      for (int64_t m0 = 0; m0 < M; m0 += kRows) {
        b.a = a_pack ? a_pack + m0 * kc : a + m0 * a_row + k0;
        b.c = c + m0 * ldc;
        run_rows<kRows>(std::min<int64_t>(kRows, M - m0), b);
      }
    }
  }
}

void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row, int64_t a_col,
          const float* panels, const float* bias, float beta, float* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const int64_t rows = M <= V::kSmallRows ? V::kSmallRowBlock : V::kRowBlock;
  // A left operand read across its storage is copied one K-block at a time (all its rows)
  // into [row block][kc][rows], so each row block's tiles read it contiguously.
  std::vector<float> a_pack(a_col != 1 ? size_t((M + rows - 1) / rows * rows * k_block(K)) : 0);
  float* pack = a_col != 1 ? a_pack.data() : nullptr;
  if (rows == V::kSmallRowBlock) {
    gemm_rows<V::kSmallRowBlock>(M, N, K, a, a_row, a_col, panels, bias, beta, c, ldc, pack);
  } else {
    gemm_rows<V::kRowBlock>(M, N, K, a, a_row, a_col, panels, bias, beta, c, ldc, pack);
  }
}

void pack_panels(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed,
                 float* panels) {
  const int64_t num_panels = (N + kW - 1) / kW;
  if (!transposed) {
    // W [K, N]: a group of panels at a time, every k of the group before the next group, so
    // each row of W is read as one run of kGroup * kW floats and each panel is written in
    // order. (Blocks of k outer and panels inner read W a vector at a time, one row apart:
    // 8-15 GB/s from L2, benchmarks/NOTES.md, CPU version 21.)
    constexpr int64_t kGroup = 8;
    for (int64_t p0 = 0; p0 < num_panels; p0 += kGroup) {
      const int64_t p1 = std::min(num_panels, p0 + kGroup);
      for (int64_t k = 0; k < K; ++k) {
        const float* row = w + k * ldw;
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n0 = p * kW;
          float* dst = panels + (p * K + k) * kW;
          if (n0 + kW <= N) {
            V::store(dst, V::load(row + n0));
          } else {
            V::store(dst, V::load_masked(V::mask_of(N - n0), row + n0));
          }
        }
      }
    }
    return;
  }
  for (int64_t p = 0; p < num_panels; ++p) {
    const int64_t n0 = p * kW, cols = std::min(kW, N - n0);
    float* panel = panels + p * K * kW;
    // W [N, K]: W rows of W become the panel's W columns, W k at a time. Whole blocks with
    // plain loads and stores, so the block stays in registers (the masked form below spilled
    // it and copied it out through the stack: 7 GB/s from L2).
    int64_t k0 = 0;
    if (cols == kW) {
      for (; k0 + kW <= K; k0 += kW) {
        typename V::Reg block[kW];
        for (int64_t i = 0; i < kW; ++i) block[i] = V::load(w + (n0 + i) * ldw + k0);
        V::transpose(block);
        for (int64_t c = 0; c < kW; ++c) V::store(panel + (k0 + c) * kW, block[c]);
      }
    }
    for (; k0 < K; k0 += kW) {
      const int64_t ks = std::min(kW, K - k0);
      const typename V::Mask k_mask = V::mask_of(ks);
      typename V::Reg block[kW];
      for (int64_t i = 0; i < kW; ++i) {
        block[i] = i < cols ? V::load_masked(k_mask, w + (n0 + i) * ldw + k0) : V::zero();
      }
      V::transpose(block);
      for (int64_t c = 0; c < ks; ++c) V::store(panel + (k0 + c) * kW, block[c]);
    }
  }
}

void pack_rows(const float* const* rows, int64_t N, int64_t K, float* panels) {
  const int64_t num_panels = (N + kW - 1) / kW;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = 0; p < num_panels; ++p) {
      const int64_t n0 = p * kW;
      V::store_masked(panels + (p * K + k) * kW, V::kFull(),
                      V::load_masked(V::mask_of(std::min(kW, N - n0)), rows[k] + n0));
    }
  }
}

}  // namespace

// Declared extern first: a namespace-scope const would otherwise have internal linkage, and
// gemm.cpp looks it up by name.
extern const GemmIsa kGemm;
const GemmIsa kGemm{kW, &pack_panels, &pack_rows, &gemm};

}  // namespace birnn::cpu::BIRNN_SIMD_NS
