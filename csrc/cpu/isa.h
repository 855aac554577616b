// Which instruction set the CPU kernels use: the one place that reads the CPU's features and
// the BIRNN_EXT_CPU_SIMD switch.
//
//   BIRNN_EXT_CPU_SIMD unset or "auto": the best this CPU has (AVX-512F, else AVX2 with FMA,
//                                       else scalar code)
//   "avx512", "avx2": at most that (a CPU without it gets the best it has below)
//   "0" or "scalar": no SIMD code at all (scalar cells; BLAS GEMMs)
// Any other value is an error at the first call, naming the valid ones.
#pragma once

#include <cstdint>

// The SIMD builds (gemm_avx*.cpp, pointwise_avx*.cpp) exist on x86-64 with GCC or clang only.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BIRNN_X86_SIMD 1
#endif

namespace birnn::cpu {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// The ISA in use, decided once per process.
Isa cpu_isa();

// Whether the CPU is Intel's: MKL, inside torch, takes its fast code paths only there.
bool cpu_is_intel();

// "avx512", "avx2" or "scalar": benchmark records and `python -m birnn_ext.info` name it.
const char* isa_name(Isa isa);

}  // namespace birnn::cpu
