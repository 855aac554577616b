// Micro-benchmark of the persistent kernels' step barrier alone (csrc/cuda/persistent_sync.h:
// one release/acquire counter per direction), with the numbers it must beat next to it:
//   - counter: G groups (directions) of N blocks, each block per step waits for its group's
//     previous step and signals; optionally each block also reads P floats another block
//     wrote the step before (ld.global.cg) and writes its share of the next step's P floats,
//     which is the forward's h broadcast of B x H values;
//   - grid.sync(): cooperative groups' grid-wide barrier, one per step (the FlashRNN way);
//   - launch: an empty kernel launched back to back, the per-step cost a host-driven loop
//     pays at the very least (the standard path launches 4 per step and direction).
// Times with CUDA events, median of 5 runs after a warm-up; prints microseconds per step.
// Built and run by scripts/barrier_bench.sh; no torch needed.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/persistent_sync.h"

namespace cg = cooperative_groups;
using birnn::persistent::block_signal;
using birnn::persistent::block_wait;
using birnn::persistent::kCounterStride;

#define CHECK(call)                                                                      \
  do {                                                                                   \
    const cudaError_t err_ = (call);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                   cudaGetErrorString(err_));                                            \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

constexpr int kThreads = 256;

// bcast: [2][groups][payload] floats; block i of a group owns floats
// [i * share, (i + 1) * share) of its group's slot, share = payload / blocks_per_group.
__global__ void __launch_bounds__(kThreads, 1)
    counter_kernel(unsigned* counters, int blocks_per_group, int steps, int payload,
                   float* bcast, float* sink) {
  const int group = blockIdx.x / blocks_per_group, block = blockIdx.x % blocks_per_group;
  const int groups = gridDim.x / blocks_per_group;
  unsigned* counter = counters + group * kCounterStride;
  const int share = payload / blocks_per_group;
  float sum = 0.f;
  for (int s = 0; s < steps; ++s) {
    if (s > 0) block_wait(counter, unsigned(blocks_per_group) * unsigned(s));
    const float* prev = bcast + (size_t((s + 1) & 1) * groups + group) * payload;
    float* next = bcast + (size_t(s & 1) * groups + group) * payload;
    for (int i = threadIdx.x; i < payload; i += kThreads) sum += __ldcg(prev + i);
    for (int i = threadIdx.x; i < share; i += kThreads) next[block * share + i] = sum;
    block_signal(counter);
  }
  if (sum == 12345.f) sink[blockIdx.x] = sum;  // keeps the reads alive
}

__global__ void __launch_bounds__(kThreads, 1) grid_sync_kernel(int steps) {
  cg::grid_group grid = cg::this_grid();
  for (int s = 0; s < steps; ++s) grid.sync();
}

__global__ void empty_kernel() {}

template <typename Launch>
float median_ms(Launch&& launch) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  launch();  // warm-up
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> times;
  for (int r = 0; r < 5; ++r) {
    CHECK(cudaEventRecord(start));
    launch();
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(stop));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void launch_cooperative(const void* kernel, int grid, void** args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(kThreads);
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  CHECK(cudaLaunchKernelExC(&config, kernel, args));
}

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 2000;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, cooperative launch %s; %d steps per run\n", prop.name,
              prop.multiProcessorCount, prop.cooperativeLaunch ? "yes" : "NO", steps);
  if (!prop.cooperativeLaunch) return 1;
  int per_sm = 0;
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, counter_kernel, kThreads, 0));
  const int max_grid = per_sm * prop.multiProcessorCount;

  const int max_payload = 64 * 1024;  // floats per group and slot (B x H = 64 x 1024)
  unsigned* counters = nullptr;
  float *bcast = nullptr, *sink = nullptr;
  CHECK(cudaMalloc(&counters, 2 * kCounterStride * sizeof(unsigned)));
  CHECK(cudaMalloc(&bcast, size_t(2) * 2 * max_payload * sizeof(float)));
  CHECK(cudaMemset(bcast, 0, size_t(2) * 2 * max_payload * sizeof(float)));
  CHECK(cudaMalloc(&sink, size_t(max_grid) * sizeof(float)));

  const float launch_us = median_ms([&] {
    for (int s = 0; s < steps; ++s) empty_kernel<<<1, 32>>>();
  }) * 1000.f / steps;
  std::printf("\nempty kernel launched back to back: %.2f us per launch\n", launch_us);

  std::printf("\n%-10s %7s %7s %10s %14s\n", "barrier", "groups", "blocks", "payload", "us/step");
  const int half = prop.multiProcessorCount / 2;
  const int block_counts[] = {1, 2, 8, 16, 32, 64, half, 2 * half};
  const int payloads[] = {0, 16 * 512, 64 * 512};  // floats: none, B x H = 16 x 512, 64 x 512
  for (int groups = 1; groups <= 2; ++groups) {
    for (int blocks : block_counts) {
      if (blocks * groups > max_grid || blocks < 1) continue;
      for (int payload : payloads) {
        int n = blocks, st = steps, pl = payload;
        void* args[] = {&counters, &n, &st, &pl, &bcast, &sink};
        const float us = median_ms([&] {
          CHECK(cudaMemsetAsync(counters, 0, 2 * kCounterStride * sizeof(unsigned)));
          launch_cooperative(reinterpret_cast<const void*>(counter_kernel), blocks * groups,
                             args);
        }) * 1000.f / steps;
        std::printf("%-10s %7d %7d %10d %14.3f\n", "counter", groups, blocks, payload, us);
      }
    }
  }
  for (int blocks : block_counts) {
    if (blocks > max_grid) continue;
    int st = steps;
    void* args[] = {&st};
    const float us = median_ms([&] {
      launch_cooperative(reinterpret_cast<const void*>(grid_sync_kernel), blocks, args);
    }) * 1000.f / steps;
    std::printf("%-10s %7d %7d %10d %14.3f\n", "grid.sync", 1, blocks, 0, us);
  }
  CHECK(cudaFree(counters));
  CHECK(cudaFree(bcast));
  CHECK(cudaFree(sink));
  return 0;
}
