// Just enough of CUDA's device side to run csrc/cuda/persistent_kernels.h as plain C++ on
// the CPU, with the kernels' own source (compiled under BIRNN_PERSISTENT_EMULATION, which
// swaps only the barrier's inline PTX and the shared-memory declaration; see
// persistent_sync.h and persistent_kernels.h).
//
// Every GPU thread of a launch is a fiber (ucontext) on one OS thread. A fiber runs until it
// reaches __syncthreads() or polls the step counter, then yields; the scheduler resumes the
// fibers in a freshly shuffled order every round, and each round a random half of the blocks
// sits out. So:
//   - __syncthreads() is a real barrier among the block's fibers, and a read of shared or
//     global memory that a missing barrier leaves unordered is likely to see stale data;
//   - a block waiting on another block's counter really waits, and if no fiber can ever make
//     progress (a deadlock in the step protocol) the launch fails instead of hanging;
//   - __trap() fails the launch.
// What it cannot show: the memory model (acquire/release, L1 staleness), timing, or anything
// the compiler does to the device code. Include this AFTER the ATen / torch headers (it
// defines threadIdx, blockIdx and __syncthreads as macros) and BEFORE persistent_kernels.h.
#pragma once

#define BIRNN_PERSISTENT_EMULATION 1

#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
using __half = c10::Half;
inline __half __ushort_as_half(unsigned short bits) {
  return c10::Half(bits, c10::Half::from_bits());
}
inline float __half2float(__half h) { return static_cast<float>(h); }
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
using std::min;

namespace emu {

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  Dim thread_idx, block_idx;
  int block = 0;
  bool done = false;
};

struct Block {
  int live = 0;        // fibers of the block that have not returned
  int arrived = 0;     // fibers waiting at the current barrier
  uint64_t generation = 0;
  std::vector<unsigned char> smem;
};

struct Launch {
  std::vector<Fiber> fibers;
  std::vector<Block> blocks;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::function<void()> body;
  std::string error;
  uint64_t progress = 0;  // barrier releases, counter increments and returns so far
};

inline Launch*& active() {
  static Launch* launch = nullptr;
  return launch;
}

inline Fiber* current() { return active()->current; }

// Back to the scheduler; returns when the scheduler resumes this fiber.
inline void yield() {
  Launch* l = active();
  swapcontext(&l->current->context, &l->scheduler);
}

[[noreturn]] inline void fail(const char* what) {
  Launch* l = active();
  l->error = what;
  setcontext(&l->scheduler);  // never resumed: the launch is abandoned
  std::abort();
}

inline void release_if_complete(Block& b) {
  if (b.arrived > 0 && b.arrived == b.live) {
    b.arrived = 0;
    ++b.generation;
    ++active()->progress;
  }
}

inline void syncthreads() {
  Launch* l = active();
  Block& b = l->blocks[l->current->block];
  const uint64_t generation = b.generation;
  ++b.arrived;
  release_if_complete(b);
  while (b.generation == generation) yield();
}

inline unsigned char* dynamic_smem() { return active()->blocks[current()->block].smem.data(); }

inline void fiber_main() {
  Launch* l = active();
  l->body();
  Fiber* f = l->current;
  f->done = true;
  Block& b = l->blocks[f->block];
  --b.live;
  ++l->progress;
  release_if_complete(b);
  setcontext(&l->scheduler);
}

// Runs body() as every thread of a grid x threads launch with smem_bytes of dynamic shared
// memory per block (filled with 0xff bytes: NaN in every float type). Throws on __trap(), on
// a deadlock, or when a fiber overflows nothing (stacks are generous).
inline void run(int grid, int threads, int64_t smem_bytes, uint64_t seed,
                std::function<void()> body) {
  constexpr size_t kStack = 256 * 1024;
  Launch l;
  l.body = std::move(body);
  l.blocks.resize(grid);
  for (Block& b : l.blocks) {
    b.live = threads;
    b.smem.assign(static_cast<size_t>(smem_bytes), 0xff);
  }
  l.fibers.resize(static_cast<size_t>(grid) * threads);
  for (int b = 0; b < grid; ++b) {
    for (int t = 0; t < threads; ++t) {
      Fiber& f = l.fibers[static_cast<size_t>(b) * threads + t];
      f.block = b;
      f.block_idx.x = b;
      f.thread_idx.x = t;
      f.stack.reset(new char[kStack]);
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStack;
      f.context.uc_link = nullptr;
      makecontext(&f.context, fiber_main, 0);
    }
  }
  active() = &l;
  std::mt19937_64 rng(seed);
  std::vector<size_t> order(l.fibers.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  int idle_rounds = 0;
  std::vector<char> stalled(static_cast<size_t>(grid));
  for (size_t remaining = l.fibers.size(); remaining > 0;) {
    std::shuffle(order.begin(), order.end(), rng);
    // Each block sits out a round with probability 1/2, so blocks drift apart by whole
    // steps, as they can on a GPU; a read of another block's data that no wait orders then
    // sees it missing or stale.
    for (char& s : stalled) s = static_cast<char>(rng() & 1);
    const uint64_t before = l.progress;
    for (size_t i : order) {
      Fiber& f = l.fibers[i];
      if (f.done || stalled[static_cast<size_t>(f.block)]) continue;
      l.current = &f;
      swapcontext(&l.scheduler, &f.context);
      if (!l.error.empty()) {
        active() = nullptr;
        TORCH_CHECK(false, "emulated launch failed in block ", f.block_idx.x, " thread ",
                    f.thread_idx.x, ": ", l.error);
      }
      if (f.done) --remaining;
    }
    idle_rounds = l.progress == before ? idle_rounds + 1 : 0;
    if (idle_rounds > 1000) {  // (a block needed for progress sits out 1000 rounds: 2^-1000)
      active() = nullptr;
      TORCH_CHECK(false, "emulated launch deadlocked: 1000 rounds without a barrier release, "
                  "a counter increment or a thread finishing");
    }
  }
  active() = nullptr;
}

}  // namespace emu

#define threadIdx (::emu::current()->thread_idx)
#define blockIdx (::emu::current()->block_idx)
#define __syncthreads() ::emu::syncthreads()
#define __trap() ::emu::fail("__trap()")
#define BIRNN_DYNAMIC_SMEM(name) unsigned char* name = ::emu::dynamic_smem()

// The barrier's device primitives (persistent_sync.h declares them under the macro).
namespace birnn {
namespace persistent {
inline unsigned load_acquire_gpu(const unsigned* p) {
  ::emu::yield();  // a poll: let the other fibers run
  return *p;
}
inline void add_release_gpu(unsigned* p, unsigned v) {
  *p += v;
  ++::emu::active()->progress;
}
inline uint64_t global_timer_ns() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}
}  // namespace persistent
}  // namespace birnn
