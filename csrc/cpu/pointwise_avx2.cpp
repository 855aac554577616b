// The AVX2 build of the cells' pointwise pass (pointwise_simd.h: 8 floats or 4 doubles at
// a time). Only this file is compiled for AVX2 + FMA, and it runs only where cpu_isa()
// (isa.h) saw those features at run time.
//
// Library headers are included BEFORE the target pragma, so the generic inline functions
// they define are not compiled for AVX2 here. The cell headers come AFTER it on purpose:
// their templates take their code generation (and their calling convention for 32-byte
// vector arguments) from where they are defined, which must be AVX2 code like Math<V>'s.
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
#pragma GCC target("avx2,fma")
// ATen's vector types live in an inline namespace named after the capability, so these
// AVX2 definitions cannot collide with any other build of them.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// The pragma switches code generation but not the feature macros, which sleef.h reads to
// declare its 8-wide functions. Set them for this file only.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#endif
#include <ATen/cpu/vec/vec.h>

#define BIRNN_SIMD_NS avx2
#define BIRNN_SIMD_TANHF Sleef_tanhf8_u35avx2
#include "pointwise_simd.h"

#pragma GCC pop_options
#endif  // BIRNN_X86_SIMD
