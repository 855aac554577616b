// Small row-major GEMMs on raw pointers for the CPU recurrence's per-step products.
//
// Why not at::mm: a step of a small layer (B = 1, H = 128) costs a few microseconds of
// arithmetic, so the dispatcher and tensor bookkeeping of an ATen call per step would
// dominate. torch's CPU build carries MKL and exports its Fortran BLAS symbols; we bind to
// them weakly, so a torch build without them still loads and takes the ATen route.
#pragma once

#include <ATen/ATen.h>

#include "gemm_avx512.h"
#include "pointwise.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's packed GEMM: a matrix packed once into MKL's internal layout, reused by many GEMMs.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k,
                         const float* a, int lda, const float* b, int ldb, float beta, float* c,
                         int ldc) __attribute__((weak));
// MKL's C entry point (the lower-case name is its Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));
}

namespace birnn::cpu {

// op(W) packed into a fresh tensor of AVX-512 panels (gemm_avx512.h): W [N, K] used
// transposed, or W [K, N] as it is.
inline at::Tensor packed_panels(const float* w, int64_t N, int64_t K, bool transposed) {
  at::Tensor panels = at::empty({avx512::panel_floats(N, K)}, at::kFloat);
  avx512::pack_panels(w, transposed ? K : N, N, K, transposed, panels.data_ptr<float>());
  return panels;
}

// Makes MKL single-threaded on this thread for the guard's lifetime (no-op without MKL).
struct SingleThreadedBlas {
  int previous = 0;
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

// Column-major BLAS call, or false when no BLAS symbol is available for this type.
template <typename T>
bool blas_gemm(char ta, char tb, int m, int n, int k, const T* a, int lda, const T* b, int ldb,
               T beta, T* c, int ldc) {
  const T one = T(1);
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ == nullptr) return false;
    sgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
    return true;
  } else if constexpr (std::is_same_v<T, double>) {
    if (dgemm_ == nullptr) return false;
    dgemm_(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &beta, c, &ldc);
    return true;
  }
  return false;
}

// A row-major matrix view over a raw pointer: rows x cols, `ld` elements between rows.
template <typename T>
at::Tensor view_of(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// C[M, N] = A[M, K] @ B[N, K]^T + beta * C     (row-major, leading dims in elements)
template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  // Row-major C = A B^T is column-major C^T = B A^T.
  if (blas_gemm<T>('T', 'N', N, M, K, B, ldb, A, lda, beta, C, ldc)) return;
  at::Tensor c = view_of(C, M, N, ldc);
  c.addmm_(view_of(A, M, K, lda), view_of(B, N, K, ldb).t(), beta, 1);
}

// C[M, N] = A[M, K] @ B[K, N] + beta * C
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (blas_gemm<T>('N', 'N', N, M, K, B, ldb, A, lda, beta, C, ldc)) return;
  at::Tensor c = view_of(C, M, N, ldc);
  c.addmm_(view_of(A, M, K, lda), view_of(B, K, N, ldb), beta, 1);
}

// A weight that is the right-hand operand of the same product at every step of the time loop:
// out[rows, N] = x[rows, K] @ op(W) + beta * out, with op(W) = W^T for W [N, K] (transposed)
// or W for W [K, N]. For float with MKL, W is packed once into MKL's blocked layout
// (cblas_sgemm_pack) and each step runs cblas_sgemm_compute on it, as oneDNN's RNNs do:
// T steps would otherwise re-pack the same weight T times. On an AVX-512 CPU our own GEMM
// (gemm_avx512.h) replaces it for every batch size; on an AVX2-only CPU our AVX2 panel GEMM
// does for a small batch (at most kSmallRows rows): MKL's small-M GEMMs pay a fixed cost per
// call that dominates a step of a small layer. Elsewhere a plain GEMM.
template <typename T>
class StepWeight {
 public:
  static constexpr int64_t kSmallRows = 16;

  StepWeight(const T* w, int64_t N, int64_t K, bool transposed, int64_t rows)
      : w_(w), N_(N), K_(K), transposed_(transposed) {
    if constexpr (std::is_same_v<T, float>) {
      if (avx512::supported() && N > 0) {
        panels512_ = packed_panels(w, N, K, transposed);
        return;
      }
    }
    if constexpr (std::is_same_v<T, float> && kHasSimdPath<T>) {
      if (rows <= kSmallRows && use_avx2() && N > 0 && K > 0) {
        panels_ = at::empty({avx2::panel_floats(N, K)}, at::kFloat);
        avx2::pack_panels(w, N, K, transposed, panels_.data_ptr<float>());
        return;
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
          cblas_sgemm_compute != nullptr && N > 0 && K > 0) {
        // Column-major view: out^T [N, rows] = op'(W) [N, K] @ x^T [K, rows], W the A matrix.
        const size_t bytes = cblas_sgemm_pack_get_size(kAMatrix, N, 1, K);
        packed_ = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
        cblas_sgemm_pack(kColMajor, kAMatrix, transposed ? kTrans : kNoTrans, N, 1, K, 1.f, w,
                         transposed ? K : N, reinterpret_cast<float*>(packed_.data_ptr()));
      }
    }
  }

  void apply(int64_t rows, const T* x, int64_t ldx, T beta, T* out, int64_t ldout) const {
    if (rows == 0 || N_ == 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (panels512_.defined()) {
        avx512::gemm(rows, N_, K_, x, ldx, 1, panels512_.data_ptr<float>(), nullptr, beta, out,
                     ldout);
        return;
      }
    }
    if constexpr (std::is_same_v<T, float> && kHasSimdPath<T>) {
      if (panels_.defined()) {
        avx2::small_gemm(rows, N_, K_, x, ldx, panels_.data_ptr<float>(), beta, out, ldout);
        return;
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (packed_.defined()) {
        cblas_sgemm_compute(kColMajor, kPacked, kNoTrans, N_, rows, K_,
                            reinterpret_cast<const float*>(packed_.data_ptr()), N_, x, ldx, beta,
                            out, ldout);
        return;
      }
    }
    if (transposed_) {
      gemm_nt<T>(rows, N_, K_, x, ldx, w_, K_, beta, out, ldout);
    } else {
      gemm_nn<T>(rows, N_, K_, x, ldx, w_, N_, beta, out, ldout);
    }
  }

 private:
  // CBLAS enum values (cblas.h), spelled out since no CBLAS header ships with torch.
  static constexpr int kColMajor = 102, kNoTrans = 111, kTrans = 112, kPacked = 151,
                       kAMatrix = 161;
  const T* w_;
  int64_t N_, K_;
  bool transposed_;
  at::Tensor packed_;  // MKL's packed copy of W, or undefined
  at::Tensor panels_;  // our AVX2 panel copy of op(W) for small batches, or undefined
  at::Tensor panels512_;  // our AVX-512 panel copy of op(W), or undefined
};

}  // namespace birnn::cpu
