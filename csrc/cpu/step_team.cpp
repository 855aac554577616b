// The layer plan and unit slices of step_team.h.
#include "step_team.h"

#include <c10/util/Exception.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace birnn::cpu {
namespace {

// One core's L2 cache, as the OS reports it (1 MiB when it does not say).
int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long reported = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return reported > 0 ? int64_t(reported) : int64_t(1) << 20;
  }();
  return bytes;
}

// BIRNN_EXT_CPU_SLICES: unset or "auto" (0 here) lets plan_layer decide; an integer N >= 1
// asks for N slices per direction wherever a split is possible (1: never split). Read at every
// call, so tests can exercise both schedules on small layers.
int requested_slices() {
  const char* env = std::getenv("BIRNN_EXT_CPU_SLICES");
  if (env == nullptr || *env == '\0' || std::string(env) == "auto") return 0;
  char* end = nullptr;
  const long n = std::strtol(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && n >= 1 && n <= 1024, "birnn_ext: BIRNN_EXT_CPU_SLICES=",
              env, " is not 'auto' or an integer from 1 to 1024");
  return static_cast<int>(n);
}

// Below this many multiply-adds per batch row and step, a unidirectional layer's step is too
// short for a barrier per step to pay (a barrier costs about a microsecond).
constexpr int64_t kMinSplitMacsPerRow = 128 * 1024;

}  // namespace

std::vector<UnitSlice> unit_slices(int64_t H, int slices) {
  constexpr int64_t kVector = 16;
  const int64_t vectors = (H + kVector - 1) / kVector;
  std::vector<UnitSlice> out;
  for (int i = 0; i < slices; ++i) {
    const int64_t u0 = std::min(H, vectors * i / slices * kVector);
    const int64_t u1 = std::min(H, vectors * (i + 1) / slices * kVector);
    out.push_back({u0, u1});
  }
  return out;
}

std::vector<GateRows> gate_rows(int64_t G, int64_t H, UnitSlice slice) {
  if (slice.u0 == 0 && slice.u1 == H) return {{0, G * H}};
  std::vector<GateRows> rows;
  for (int64_t g = 0; g < G; ++g) rows.push_back({g * H + slice.u0, slice.size()});
  return rows;
}

Plan plan_layer(int64_t D, int64_t G, int64_t H, int64_t Hout, int64_t bytes, bool splittable) {
  const int threads = at::get_num_threads();
  const int asked = requested_slices();
  // A slice holds at least one vector of 16 units.
  const int most = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, (H + 15) / 16)));
  Plan plan;
  if (!splittable || most < 2 || asked == 1) return plan;
  if (asked > 1) {
    plan.slices = std::min(asked, static_cast<int>((H + 15) / 16));
  } else {
    const bool fits_l2 = G * H * Hout * bytes <= l2_bytes() * 3 / 4;
    const bool worth_it = D == 1 ? G * H * Hout >= kMinSplitMacsPerRow : !fits_l2;
    if (!worth_it) return plan;
    plan.slices = D == 1 ? most : std::max(2, most / int(D));
  }
  plan.directions_concurrent = D * plan.slices <= threads;
  return plan;
}

}  // namespace birnn::cpu
