// float32 GEMM for CPUs with AVX-512 (gemm_avx512.cpp), used for every large product of the
// CPU path: the input projection, the per-step recurrent products, dx and the weight
// gradients.
//
// Why our own: torch's CPU GEMM is MKL, which on AMD CPUs runs a generic AVX2 path. On the
// Zen 4 machines this project is measured on, one core's AVX-512 FMA peak is 115 GFLOP/s
// and its AVX2 one 66 (tests run there in a tight FMA loop), and MKL's sgemm reaches 18-89
// GFLOP/s on our shapes. torch.nn's LSTM is fast on such a CPU because oneDNN JIT-compiles
// AVX-512 GEMMs; this file is our equivalent.
//
// The right-hand operand is packed once into panels of 16 columns (one zmm register):
// panels[n / 16][k][n % 16], the last panel zero-padded. A panel's k-range is contiguous,
// so the same packing serves every K-block. The left operand is read in place with any
// row and column stride, so a transposed view (dgates^T for a weight gradient) needs no
// copy.
#pragma once

#include <cstdint>

namespace birnn::cpu::avx512 {

// True when this CPU has AVX-512F and BIRNN_EXT_CPU_SIMD allows it (see pointwise.h).
bool supported();

inline int64_t panel_floats(int64_t N, int64_t K) { return (N + 15) / 16 * 16 * K; }

// Packs op(W) [K, N] into panels: op(W)[k][n] = w[n * ldw + k] when `transposed` (W is
// stored [N, K], e.g. a torch weight used as W^T) else w[k * ldw + n].
void pack_panels(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed,
                 float* panels);

// Packs op(W) [K, N] with op(W)[k][n] = rows[k][n]: K rows gathered from anywhere.
void pack_rows(const float* const* rows, int64_t N, int64_t K, float* panels);

// C[M, N] = beta * C + A[M, K] @ op(W) (+ bias[N] when not null), beta 0 or 1, with
// A[m][k] = a[m * a_row + k * a_col] and op(W) packed by pack_panels. Single-threaded.
void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row, int64_t a_col,
          const float* panels, const float* bias, float beta, float* c, int64_t ldc);

}  // namespace birnn::cpu::avx512
