// birnn_ext's own float32 GEMM for the CPU, one micro-kernel per instruction set
// (gemm_kernel.h, built for AVX-512 in gemm_avx512.cpp and for AVX2 + FMA in gemm_avx2.cpp),
// used for every float32 product of the CPU path on a CPU that has either: the input
// projection, the per-step recurrent products, dx and the weight gradients.
//
// Why our own rather than torch's BLAS: benchmarks/NOTES.md ("GEMM engines") compares it with
// MKL, oneDNN and OpenBLAS on the recurrence's shapes on each ISA.
//
// The right-hand operand op(W) [K, N] is packed once into panels of `panel` columns (one
// vector register): panels[n / panel][k][n % panel], the last panel zero-padded. The left
// operand may have any row and column stride (gemm_kernel.h copies it where it must be read
// across its storage).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "isa.h"

namespace birnn::cpu {

struct GemmIsa {
  int64_t panel;  // columns per panel: floats per vector register
  // Packs op(W) [K, N]: op(W)[k][n] = w[n * ldw + k] when `transposed` (W stored [N, K],
  // e.g. a torch weight used as W^T), else w[k * ldw + n].
  void (*pack_panels)(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed,
                      float* panels);
  // Packs op(W) [K, N] with op(W)[k][n] = rows[k][n]: K rows gathered from anywhere.
  void (*pack_rows)(const float* const* rows, int64_t N, int64_t K, float* panels);
  // C[M, N] = beta * C + A[M, K] @ op(W) (+ bias[N] when not null), beta 0 or 1, with
  // A[m][k] = a[m * a_row + k * a_col]. Single-threaded.
  void (*gemm)(int64_t M, int64_t N, int64_t K, const float* a, int64_t a_row, int64_t a_col,
               const float* panels, const float* bias, float beta, float* c, int64_t ldc);

  int64_t panel_floats(int64_t N, int64_t K) const { return (N + panel - 1) / panel * panel * K; }
};

// The GEMM for `isa`, or nullptr for Isa::Scalar.
const GemmIsa* gemm_for(Isa isa);

// op(W) packed once for the GEMM of the ISA in use, then multiplied from the left many times.
class PackedMatrix {
 public:
  // op(W) [K, N] from W as GemmIsa::pack_panels reads it. Requires cpu_isa() >= Avx2.
  PackedMatrix(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed);
  // op(W) [K, N] whose row k is rows[k].
  PackedMatrix(const float* const* rows, int64_t N, int64_t K);

  // C[M, N] = beta * C + A[M, K] @ op(W) (+ bias), A[m][k] = a[m * a_row + k * a_col].
  void multiply(int64_t M, const float* a, int64_t a_row, int64_t a_col, const float* bias,
                float beta, float* c, int64_t ldc) const {
    isa_->gemm(M, N_, K_, a, a_row, a_col, panels_.data_ptr<float>(), bias, beta, c, ldc);
  }

 private:
  PackedMatrix(int64_t N, int64_t K);
  const GemmIsa* isa_;
  int64_t N_, K_;
  at::Tensor panels_;
};

}  // namespace birnn::cpu
