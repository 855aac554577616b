// torch's BLAS on raw pointers, for the per-step products that birnn_ext's own GEMM (gemm.h)
// does not take: double, and float on a CPU without AVX2.
//
// Why not at::mm: a step of a small layer (B = 1, H = 128) costs a few microseconds of
// arithmetic, so the dispatcher and tensor bookkeeping of an ATen call per step would
// dominate. torch's CPU build carries MKL and exports its Fortran BLAS symbols; we bind to
// them weakly, so a torch build without them still loads and takes the ATen route.
#pragma once

#include <ATen/ATen.h>

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

}  // namespace birnn::cpu
