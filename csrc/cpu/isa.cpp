// CPU feature detection and the BIRNN_EXT_CPU_SIMD switch (isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace birnn::cpu {
namespace {

Isa best_supported() {
#ifdef BIRNN_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Scalar;
}

// The most BIRNN_EXT_CPU_SIMD allows.
Isa requested() {
  const char* env = std::getenv("BIRNN_EXT_CPU_SIMD");
  const std::string value = env ? env : "";
  if (value.empty() || value == "auto" || value == "avx512") return Isa::Avx512;
  if (value == "avx2") return Isa::Avx2;
  if (value == "0" || value == "scalar") return Isa::Scalar;
  TORCH_CHECK(false, "birnn_ext: BIRNN_EXT_CPU_SIMD=", value,
              " is not one of auto, avx512, avx2, scalar, 0");
}

}  // namespace

Isa cpu_isa() {
  // A bad value throws here at every call (the static is never initialised), so every op
  // call reports it rather than running on some default.
  static const Isa isa = [] {
    const Isa best = best_supported(), wanted = requested();
    return static_cast<int>(wanted) < static_cast<int>(best) ? wanted : best;
  }();
  return isa;
}

bool cpu_is_intel() {
#ifdef BIRNN_X86_SIMD
  __builtin_cpu_init();
  return __builtin_cpu_is("intel");
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Scalar: break;
  }
  return "scalar";
}

}  // namespace birnn::cpu
