// The persistent kernels' step barrier: one monotonically increasing counter per direction
// in global memory, incremented with release semantics by each block once per step and
// polled with acquire semantics by one thread per block.
//
// DEVICE CODE: include from .cu files only. No torch headers, so scripts/barrier_bench.cu
// measures exactly this code.
//
// Protocol. A direction's NB blocks share one 32-bit counter, zeroed before the launch.
// After a block has written everything its step s produces, it calls block_signal(): the
// block's threads meet at __syncthreads(), then thread 0 adds 1 with red.release.gpu, so
// the counter reaches NB * (s + 1) only once every block's writes of step s are visible
// at device scope. Before a block reads anything step s produced, it calls
// block_wait(counter, NB * (s + 1)): thread 0 spins on ld.acquire.gpu until the counter
// reaches the target, then the block meets at __syncthreads(). The acquire by thread 0,
// ordered before the other threads' reads by the barrier, makes every write released
// before the matching increments visible to the whole block (the pattern cooperative
// groups' grid.sync() uses, without its second round trip). Data written by other blocks
// is read with ld.global.cg (L2, never a stale L1 line), see load_cg in
// persistent_kernels.h, which makes the argument independent of how L1 is invalidated.
//
// Why a counter and not a grid barrier: a block only ever waits for the step before its
// own, so a fast block can run ahead into its next step's local work while a slow one
// finishes; there is no second "everyone left the barrier" phase. The counter never resets
// inside a launch, so there is no sense-reversal state to get wrong.
//
// Co-residency. The spin-wait is only deadlock-free when every block of a direction is
// resident at once. The launcher guarantees that with a cooperative launch (which fails
// instead of running when the grid cannot be co-resident); it is never assumed. As a last
// resort against a hang (a bug, or a debugger stopping some blocks), a wait that lasts
// longer than kWaitTimeoutNs traps: the launch then fails with an error instead of hanging
// the process.
#pragma once

#include <cstdint>

namespace birnn {
namespace persistent {

// Longest a block waits for its direction's previous step before it gives up (traps).
// A real step takes microseconds; 20 s is far beyond any legitimate wait, including
// under compute-sanitizer.
constexpr uint64_t kWaitTimeoutNs = 20ull * 1000 * 1000 * 1000;

// Counters of different directions sit this many uint32 apart (128 bytes, one L2 line),
// so the two directions' pollers never contend for one line.
constexpr int kCounterStride = 32;

#if !defined(BIRNN_PERSISTENT_EMULATION)
// (The CPU emulation of the kernels, tests/persistent_emulation/emulation.h, defines these
// three as plain C++ instead.)
__device__ __forceinline__ unsigned load_acquire_gpu(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void add_release_gpu(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// Nanoseconds from the GPU's global timer (for the timeout only, never for results).
__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#endif  // !BIRNN_PERSISTENT_EMULATION

// All threads of the block call this. Returns once *counter >= target, with everything
// released before those increments visible to every thread of the block.
__device__ __forceinline__ void block_wait(const unsigned* counter, unsigned target) {
  if (threadIdx.x == 0 && load_acquire_gpu(counter) < target) {
    const uint64_t start = global_timer_ns();
    while (load_acquire_gpu(counter) < target) {
      if (global_timer_ns() - start > kWaitTimeoutNs) __trap();  // deadlock: fail the launch
    }
  }
  __syncthreads();
}

// All threads of the block call this after their last write of a step: publishes every
// thread's writes, then counts the block as done with the step.
__device__ __forceinline__ void block_signal(unsigned* counter) {
  __syncthreads();
  if (threadIdx.x == 0) add_release_gpu(counter, 1u);
}

}  // namespace persistent
}  // namespace birnn
