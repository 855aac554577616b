// The AVX-512 build of the cells' pointwise pass (pointwise_simd.h: 16 floats or 8 doubles
// at a time, with Sleef's 16-wide exp and tanh). Only this file is compiled for AVX-512,
// and it runs only where cpu_isa() (isa.h) saw AVX-512F at run time.
// The include order follows pointwise_avx2.cpp, which says why.
#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "isa.h"

#ifdef BIRNN_X86_SIMD
#pragma GCC push_options
// ATen's vec512 headers carry clang's and nvcc's loop pragmas, which GCC would warn about.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
// The feature macros sleef.h and ATen's vec512 headers read (see pointwise_avx2.cpp).
#ifndef __AVX512F__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __AVX512F__ 1
#define __AVX512DQ__ 1
#define __AVX512VL__ 1
#define __AVX512BW__ 1
#endif
#include <ATen/cpu/vec/vec.h>

#define BIRNN_SIMD_NS avx512
#define BIRNN_SIMD_TANHF Sleef_tanhf16_u35avx512f
#include "pointwise_simd.h"

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // BIRNN_X86_SIMD
