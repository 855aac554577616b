// A weight that is the right-hand operand of the same product at every step of the time loop:
// out[rows, N] = x[rows, K] @ op(W) + beta * out, with op(W) = W^T for W [N, K] (transposed)
// or W for W [K, N], rows of W `ldw` elements apart. The engine is chosen once, when the
// weight is packed:
//   own    float on a CPU with AVX2 or AVX-512: birnn_ext's GEMM (gemm.h), W packed into panels
//   mkl    float without them, with MKL: W packed once into MKL's layout (cblas_sgemm_pack), as
//          oneDNN's RNNs do; T steps would otherwise re-pack the same weight T times
//   plain  everything else (double, reduced precision, no MKL): a BLAS/ATen GEMM per step
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>

#include "blas.h"
#include "gemm.h"

namespace birnn::cpu {

template <typename T>
class StepWeight {
 public:
  StepWeight(const T* w, int64_t ldw, int64_t N, int64_t K, bool transposed)
      : w_(w), ldw_(ldw), N_(N), K_(K), transposed_(transposed) {
    if (N == 0 || K == 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (cpu_isa() != Isa::Scalar) {
        own_.emplace(w, ldw, N, K, transposed);
      } else if (cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
                 cblas_sgemm_compute != nullptr) {
        // Column-major view: out^T [N, rows] = op'(W) [N, K] @ x^T [K, rows], W the A matrix.
        const size_t bytes = cblas_sgemm_pack_get_size(kAMatrix, N, 1, K);
        mkl_ = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
        cblas_sgemm_pack(kColMajor, kAMatrix, transposed ? kTrans : kNoTrans, N, 1, K, 1.f, w,
                         ldw, reinterpret_cast<float*>(mkl_.data_ptr()));
      }
    }
  }

  void apply(int64_t rows, const T* x, int64_t ldx, T beta, T* out, int64_t ldout) const {
    if (rows == 0 || N_ == 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (own_) return own_->multiply(rows, x, ldx, 1, nullptr, beta, out, ldout);
      if (mkl_.defined()) {
        return cblas_sgemm_compute(kColMajor, kPacked, kNoTrans, N_, rows, K_,
                                   reinterpret_cast<const float*>(mkl_.data_ptr()), N_, x, ldx,
                                   beta, out, ldout);
      }
    }
    if (transposed_) {
      gemm_nt<T>(rows, N_, K_, x, ldx, w_, ldw_, beta, out, ldout);
    } else {
      gemm_nn<T>(rows, N_, K_, x, ldx, w_, ldw_, beta, out, ldout);
    }
  }

 private:
  // CBLAS enum values (cblas.h), spelled out since no CBLAS header ships with torch.
  static constexpr int kColMajor = 102, kNoTrans = 111, kTrans = 112, kPacked = 151,
                       kAMatrix = 161;
  const T* w_;
  int64_t ldw_, N_, K_;
  bool transposed_;
  std::optional<PackedMatrix> own_;  // engine "own", or empty
  at::Tensor mkl_;                   // engine "mkl": MKL's packed copy of W, or undefined
};

}  // namespace birnn::cpu
