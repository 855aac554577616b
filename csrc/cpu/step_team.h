// How a layer's recurrence is spread over threads, and the per-step barrier that lets several
// threads share one direction's time loop.
//
// A direction's hidden units can be cut into slices (all G gates of a unit stay together, so
// the cell update of a unit needs no other slice). One slice per thread makes each thread's
// share of the recurrent weight 1/S of it: when a direction's W_hh is larger than a core's L2
// cache, the whole of it streams from L3 at every step, while each slice's share stays in its
// core's L2 (benchmarks/NOTES.md, "Splitting a direction"). The price is a barrier per step,
// since the next step's product reads every unit of h; so slices are used only where the
// weights do not fit, and the two directions then run one after the other, each on every
// thread.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "tasks.h"

namespace birnn::cpu {

struct UnitSlice {
  int64_t u0, u1;  // hidden units [u0, u1) of the direction
  int64_t size() const { return u1 - u0; }
};

// The rows of a gate-major [G*H, ...] weight (or columns of a [.., G*H] product) that belong to
// the units of `slice`: one run when the slice is every unit, else one run per gate.
struct GateRows {
  int64_t first, count;
};
std::vector<GateRows> gate_rows(int64_t G, int64_t H, UnitSlice slice);

// The split of one layer: `slices` slices per direction (1: no split), and whether the two
// directions run at the same time (each on its own thread) or one after the other.
struct Plan {
  int slices = 1;
  bool directions_concurrent = true;
};

// The slices of H units: as equal as whole vectors of 16 units allow, so no slice's SIMD pass
// ends in a scalar tail that another slice's could have absorbed.
std::vector<UnitSlice> unit_slices(int64_t H, int slices);

// Decides the plan for a layer: D directions, G gates of H units, recurrent weight of
// Hout columns, `bytes` per value; `splittable` is false where the cell's update needs every
// unit (LSTM with a projection).
Plan plan_layer(int64_t D, int64_t G, int64_t H, int64_t Hout, int64_t bytes, bool splittable);

// Runs `units` steps of `slices` slices each: fn(step, slice) for every pair, every slice of a
// step finished before any slice of the next one starts. Called by every thread of a team
// with its own `home` slice: a thread runs its home slice of each step when nobody has taken
// it, then helps with any slice still unclaimed, then waits for the step to finish. Any
// thread may run any slice, so a team smaller than `slices` (one thread, say) still finishes
// every step; with one thread per slice, each keeps its slice (and its weights in its cache).
// When fn throws (a slice's first step allocates its packed weights), the thread rethrows and
// the others stop waiting and return, so run_tasks reports the error instead of the team
// waiting forever for a step that will never finish.
class StepTeam {
 public:
  StepTeam(int64_t units, int slices)
      : units_(units), slices_(slices), claimed_(new std::atomic<bool>[units * slices]) {
    for (int64_t i = 0; i < units * slices; ++i) claimed_[i].store(false, std::memory_order_relaxed);
  }

  template <typename Fn>
  void run(int home, const Fn& fn) {
    for (int64_t step = 0; step < units_; ++step) {
      for (int k = 0; k < slices_; ++k) {
        const int slice = (home + k) % slices_;
        if (claim(step, slice)) {
          try {
            fn(step, slice);
          } catch (...) {
            failed_.store(true, std::memory_order_relaxed);
            throw;
          }
          done_.fetch_add(1, std::memory_order_release);
        }
      }
      if (!wait_for((step + 1) * slices_)) return;  // another thread's fn threw
    }
  }

 private:
  bool claim(int64_t step, int slice) {
    std::atomic<bool>& flag = claimed_[step * slices_ + slice];
    return !flag.load(std::memory_order_relaxed) && !flag.exchange(true, std::memory_order_acq_rel);
  }

  // Spins until `count` slices are done (a step's slices finish only after every earlier
  // step's, so the count says which steps are complete), yielding when it waits long: the
  // thread it waits for may share its core.
  // Returns false, without waiting further, once a thread's fn has thrown.
  bool wait_for(int64_t count) const {
    for (int spins = 0; done_.load(std::memory_order_acquire) < count; ++spins) {
      if (failed_.load(std::memory_order_relaxed)) return false;
      if (spins < 4096) {
#if defined(__x86_64__)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
    return true;
  }

  const int64_t units_;
  const int slices_;
  std::unique_ptr<std::atomic<bool>[]> claimed_;  // [units, slices]
  std::atomic<int64_t> done_{0};
  std::atomic<bool> failed_{false};  // some thread's fn threw
};

}  // namespace birnn::cpu
