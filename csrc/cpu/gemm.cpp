// The per-ISA GEMM table and PackedMatrix (gemm.h).
#include "gemm.h"

#include "memory.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace birnn::cpu {

#ifdef BIRNN_X86_SIMD
namespace avx512 { extern const GemmIsa kGemm; }  // gemm_avx512.cpp
namespace avx2 { extern const GemmIsa kGemm; }    // gemm_avx2.cpp
#endif

const GemmIsa* gemm_for(Isa isa) {
#ifdef BIRNN_X86_SIMD
  switch (isa) {
    case Isa::Avx512: return &avx512::kGemm;
    case Isa::Avx2: return &avx2::kGemm;
    case Isa::Scalar: break;
  }
#endif
  return nullptr;
}

PackedMatrix::PackedMatrix(int64_t N, int64_t K) : isa_(gemm_for(cpu_isa())), N_(N), K_(K) {
  TORCH_INTERNAL_ASSERT(isa_ != nullptr, "birnn_ext: no SIMD GEMM on this CPU path");
  panels_ = at::empty({isa_->panel_floats(N, K)}, at::kFloat);
  advise_huge_pages(panels_);
}

PackedMatrix::PackedMatrix(const float* w, int64_t ldw, int64_t N, int64_t K, bool transposed)
    : PackedMatrix(N, K) {
  isa_->pack_panels(w, ldw, N, K, transposed, panels_.data_ptr<float>());
}

PackedMatrix::PackedMatrix(const float* const* rows, int64_t N, int64_t K) : PackedMatrix(N, K) {
  isa_->pack_rows(rows, N, K, panels_.data_ptr<float>());
}

}  // namespace birnn::cpu
