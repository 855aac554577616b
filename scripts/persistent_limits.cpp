// Host check of the persistent kernels' plan (csrc/cuda/persistent_plan.h), no GPU needed:
//   1. every plan make_plan() accepts keeps the invariants the kernels rely on
//      (plan_violation), over every hidden size 1..3072 and a spread of batch sizes, step
//      counts, cells, dtypes, direction counts and devices;
//   2. acceptance only gets worse as hidden_size grows (what the max_hidden op's bisection
//      assumes);
//   3. prints the on-chip size limits: the largest hidden_size the persistent path takes per
//      device, cell, dtype, directions, forward / backward. The GPU's real occupancy can
//      only lower these (persistent_launch.cu checks it at run time).
// Built and run by scripts/check_persistent_build.sh; exits non-zero on a violation.
//
//   g++ -std=c++17 -O1 -Icsrc scripts/persistent_limits.cpp -o persistent_limits
#include <cstdio>
#include <string>

#include "cuda/persistent_plan.h"

using birnn::persistent::DeviceLimits;
using birnn::persistent::LayerShape;
using birnn::persistent::make_plan;
using birnn::persistent::Plan;
using birnn::persistent::plan_violation;

namespace {

struct Device {
  const char* name;
  int sms;
  int64_t smem;  // sharedMemPerBlockOptin
};
// From the CUDA programming guide's per-arch tables: A100 SXM (sm_80, 108 SMs, 163 KiB per
// block), H100 SXM / H200 (sm_90, 132 SMs, 227 KiB per block).
const Device kDevices[] = {{"A100", 108, 166912}, {"H100", 132, 232448}};
const struct {
  const char* name;
  int gates;
} kCells[] = {{"RNN", 1}, {"GRU", 3}, {"LSTM", 4}};
const int kElemBytes[] = {4, 2};

DeviceLimits limits_of(const Device& dev) {
  DeviceLimits limits;
  limits.sm_count = dev.sms;
  limits.smem_per_block = dev.smem;
  return limits;
}

LayerShape shape_of(int gates, int64_t hidden, int64_t batch, int64_t steps, int dirs,
                    int elem_bytes, bool backward) {
  LayerShape s;
  s.gates = gates;
  s.hidden = hidden;
  s.batch = batch;
  s.steps = steps;
  s.dirs = dirs;
  s.elem_bytes = elem_bytes;
  s.backward = backward;
  return s;
}

}  // namespace

int main() {
  int64_t plans = 0, accepted = 0, failures = 0;
  const int64_t batches[] = {1, 3, 4, 5, 16, 33, 64, 257};
  const int64_t steps[] = {1, 100};
  for (const Device& dev : kDevices) {
    const DeviceLimits limits = limits_of(dev);
    for (const auto& cell : kCells) {
      for (int elem : kElemBytes) {
        for (int dirs = 1; dirs <= 2; ++dirs) {
          for (int backward = 0; backward <= 1; ++backward) {
            for (int64_t batch : batches) {
              for (int64_t t : steps) {
                bool previous_ok = true;
                for (int64_t hidden = 1; hidden <= 3072; ++hidden) {
                  const LayerShape s = shape_of(cell.gates, hidden, batch, t, dirs, elem, backward);
                  const Plan p = make_plan(s, limits);
                  ++plans;
                  if (p.ok) {
                    ++accepted;
                    const std::string broken = plan_violation(s, p);
                    if (!broken.empty() && failures++ < 20) {
                      std::printf("VIOLATION %s %s G=%d H=%lld B=%lld T=%lld D=%d e=%d bwd=%d\n",
                                  broken.c_str(), dev.name, cell.gates, (long long)hidden,
                                  (long long)batch, (long long)t, dirs, elem, backward);
                    }
                    if (!previous_ok && failures++ < 20) {
                      std::printf("NOT MONOTONE %s G=%d H=%lld accepted after a rejection\n",
                                  dev.name, cell.gates, (long long)hidden);
                    }
                  }
                  previous_ok = p.ok;
                }
              }
            }
          }
        }
      }
    }
  }
  std::printf("%lld plans, %lld accepted, %lld invariant violations\n", (long long)plans,
              (long long)accepted, (long long)failures);

  // Limits (batch 64, T 100; the batch only sets how many columns are staged at once).
  std::printf("\nlargest hidden_size on the persistent path (forward / backward)\n");
  std::printf("%-6s %-5s %-9s %5s %10s %10s   %s\n", "device", "cell", "dtype", "dirs",
              "forward", "backward", "at the forward limit: blocks/dir x units, chunk, smem");
  for (const Device& dev : kDevices) {
    const DeviceLimits limits = limits_of(dev);
    for (const auto& cell : kCells) {
      for (int elem : kElemBytes) {
        for (int dirs = 2; dirs >= 1; --dirs) {
          int64_t best[2] = {0, 0};
          for (int backward = 0; backward <= 1; ++backward) {
            for (int64_t hidden = 1; hidden <= 8192; ++hidden) {
              if (make_plan(shape_of(cell.gates, hidden, 64, 100, dirs, elem, backward), limits).ok) {
                best[backward] = hidden;
              }
            }
          }
          const Plan p = make_plan(shape_of(cell.gates, best[0], 64, 100, dirs, elem, false), limits);
          std::printf("%-6s %-5s %-9s %5d %10lld %10lld   %d x %d, %d, %lld B\n", dev.name,
                      cell.name, elem == 4 ? "float32" : "16-bit", dirs, (long long)best[0],
                      (long long)best[1], p.blocks_per_dir, p.units, p.batch_chunk,
                      (long long)p.smem_bytes);
        }
      }
    }
  }

  // The standard benchmark grid on an H100 (both directions): what each block holds and
  // moves per step (benchmarks/NOTES.md, "persistent kernel v1").
  std::printf("\nH100, bidirectional: per block and step (FLOP: 2 x rows_pad x chunk-padded"
              " batch x K; bcast: the previous step's vector read from L2)\n");
  std::printf("%-5s %-8s %5s %4s %4s  %-9s %8s %6s %7s %9s %10s %9s\n", "cell", "dtype", "H",
              "B", "dir", "blocks", "W KiB", "chunk", "chunks", "smem KiB", "MFLOP", "bcast KiB");
  const DeviceLimits limits = limits_of(kDevices[1]);  // H100
  for (const auto& cell : kCells) {
    if (cell.gates == 1) continue;
    for (int elem : kElemBytes) {
      for (int64_t hidden : {256, 512, 1024}) {
        for (int64_t batch : {1, 16, 64}) {
          for (int backward = 0; backward <= 1; ++backward) {
            const LayerShape s = shape_of(cell.gates, hidden, batch, 100, 2, elem, backward);
            const Plan p = make_plan(s, limits);
            if (!p.ok) {
              std::printf("%-5s %-8s %5lld %4lld %4s  not supported: %s\n", cell.name,
                          elem == 4 ? "float32" : "bf16/f16", (long long)hidden,
                          (long long)batch, backward ? "bwd" : "fwd", p.why.c_str());
              continue;
            }
            const int64_t chunks = (batch + p.batch_chunk - 1) / p.batch_chunk;
            const int64_t padded_batch = birnn::persistent::round_up(batch, 4);
            const double mflop = 2.0 * p.rows_pad * padded_batch * p.k / 1e6;
            const double bcast_kib = double(batch) * p.k * elem / 1024.0;
            std::printf("%-5s %-8s %5lld %4lld %4s  %3d x %-3d %8.1f %6d %7lld %9.1f %10.3f %9.1f\n",
                        cell.name, elem == 4 ? "float32" : "bf16/f16", (long long)hidden,
                        (long long)batch, backward ? "bwd" : "fwd", p.blocks_per_dir, p.units,
                        p.weight_bytes / 1024.0, p.batch_chunk, (long long)chunks,
                        p.smem_bytes / 1024.0, mflop, bcast_kib);
          }
        }
      }
    }
  }
  return failures == 0 ? 0 : 1;
}
