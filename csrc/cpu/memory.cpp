// advise_huge_pages and prefault (memory.h).
#include "memory.h"

#include <algorithm>
#include <cstdint>

#include "tasks.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace birnn::cpu {

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (!t.is_cpu() || t.nbytes() < 2 * kHugePage) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

void prefault(const at::Tensor& t) {
  constexpr int64_t kPage = 4096, kMinBytes = int64_t(4) << 20;
  if (!t.is_cpu() || int64_t(t.nbytes()) < kMinBytes) return;
  char* begin = static_cast<char*>(t.data_ptr());
  const int64_t pages = (int64_t(t.nbytes()) + kPage - 1) / kPage;
  const int parts = std::max(1, at::get_num_threads());
  run_tasks(parts, [&](int part) {
    for (int64_t p = pages * part / parts; p < pages * (part + 1) / parts; ++p) {
      // The byte written back as it was, so a buffer poisoned with NaN (BIRNN_EXT_POISON)
      // stays poisoned; volatile, so the compiler keeps the store.
      volatile char* byte = begin + p * kPage;
      *byte = *byte;
    }
  });
}

}  // namespace birnn::cpu
