// How a persistent launch divides one layer among thread blocks, and whether it fits on
// chip: pure arithmetic on the layer's sizes and two device limits (SM count, shared memory
// per block), so the same code answers on the host of a GPU machine, in
// scripts/persistent_limits.cpp on a machine without one, and in the tests.
//
// No torch and no CUDA headers: the caller supplies the device numbers
// (csrc/cuda/persistent_launch.cu reads them from cudaDeviceProp and then checks the
// kernel's real occupancy, which this arithmetic cannot know).
//
// The layout it plans (csrc/cuda/persistent_kernels.h has the kernels):
//   - each direction gets NB = blocks_per_dir thread blocks; block i of a direction owns
//     hidden units [i*U, min((i+1)*U, H)) (U = units), all gates of those units;
//   - the block keeps, for the whole launch, its slice of the recurrent weights in shared
//     memory as w_s [K][rows_pad] (storage dtype, k-major):
//       forward : K = H,   rows = G*U (row g*U + u is gate g of unit u), W_hh rows
//       backward: K = G*H, rows = U   (column u of W_hh, i.e. a row of W_hh^T)
//     rows_pad = rows rounded up to kTileRows; padded rows are zero;
//   - per step it multiplies that slice by the previous step's broadcast vector (h, or the
//     backward's dgates_h), batch_chunk batch columns at a time, staged in shared memory as
//     x_s [K][batch_chunk] (storage dtype); the same shared memory then holds the threads'
//     float32 partial sums red [kThreads * kTileRows * kTileBatch] (a union: the two are
//     never live together).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

// Functions the kernels share with the host-side checks.
#if defined(__CUDACC__)
#define BIRNN_PLAN_HD __host__ __device__ __forceinline__
#else
#define BIRNN_PLAN_HD inline
#endif

namespace birnn {
namespace persistent {

constexpr int kThreads = 256;       // threads per block (8 warps); __launch_bounds__ too
constexpr int kTileRows = 4;        // weight rows per thread's register tile
constexpr int kTileBatch = 4;       // batch columns per thread's register tile
constexpr int kMaxBatchChunk = 128; // batch columns staged at once, at most
constexpr int64_t kSmemAlign = 16;  // byte alignment of each shared-memory region

// The float32 partial-sum area: every thread's kTileRows x kTileBatch tile.
constexpr int64_t kReduceBytes = int64_t(kThreads) * kTileRows * kTileBatch * 4;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

// How the kThreads threads split one chunk's product (persistent_kernels.h,
// block_product). Thread tid < splits * tiles computes the kTileRows x kTileBatch tile
// `tid % tiles` (row tile tile % row_tiles, batch tile tile / row_tiles) over the K range
// [split * k_per_split, min(K, (split + 1) * k_per_split)) of split `tid / tiles`.
struct TileMap {
  int row_tiles;    // rows_pad / kTileRows
  int tiles;        // row_tiles * (batch_chunk / kTileBatch), <= kThreads (the plan's rule)
  int splits;       // kThreads / tiles: the K range is cut into this many parts
  int k_per_split;  // ceil(K / splits)
};

BIRNN_PLAN_HD TileMap make_tile_map(int rows_pad, int batch_chunk, int K) {
  TileMap m;
  m.row_tiles = rows_pad / kTileRows;
  m.tiles = m.row_tiles * (batch_chunk / kTileBatch);
  m.splits = kThreads / m.tiles;
  m.k_per_split = (K + m.splits - 1) / m.splits;
  return m;
}

// What a plan needs to know about the layer.
struct LayerShape {
  int gates = 0;          // G: 1 (RNN), 3 (GRU), 4 (LSTM)
  int64_t hidden = 0;     // H
  int64_t batch = 0;      // B
  int64_t steps = 0;      // T
  int dirs = 0;           // D: 1 or 2
  int elem_bytes = 0;     // storage dtype size: 4 (float32) or 2 (float16, bfloat16)
  bool backward = false;  // the backward recurrence (K = G*H) instead of the forward (K = H)
};

// What a plan needs to know about the device.
struct DeviceLimits {
  int sm_count = 0;            // cudaDeviceProp::multiProcessorCount
  int64_t smem_per_block = 0;  // cudaDeviceProp::sharedMemPerBlockOptin (dynamic, opted in)
  int blocks_override = 0;     // >0: blocks per direction asked for (tuning), else automatic
};

struct Plan {
  bool ok = false;
  std::string why;             // when !ok: a sentence saying which limit is exceeded
  int blocks_per_dir = 0;      // NB
  int units = 0;               // U: hidden units per block (the last block may own fewer)
  int k = 0;                   // K: reduction length of the per-step product
  int rows_pad = 0;            // rows of w_s, a multiple of kTileRows
  int batch_chunk = 0;         // batch columns per staged chunk, a multiple of kTileBatch
  int64_t weight_bytes = 0;    // w_s, rounded up to kSmemAlign
  int64_t union_bytes = 0;     // max(x_s, red), rounded up to kSmemAlign
  int64_t smem_bytes = 0;      // dynamic shared memory per block: weight_bytes + union_bytes
  int grid = 0;                // blocks in the launch: blocks_per_dir * dirs
};

// The largest batch chunk (a multiple of kTileBatch, at least kTileBatch) whose staging
// area fits beside the weights, or 0 when not even kTileBatch columns (or the partial
// sums) fit.
inline int fit_batch_chunk(const LayerShape& s, int64_t k, int64_t rows_pad,
                           int64_t avail_union_bytes) {
  if (avail_union_bytes < kReduceBytes) return 0;
  const int64_t per_column = k * s.elem_bytes;
  int64_t chunk = (avail_union_bytes / per_column) / kTileBatch * kTileBatch;
  // Every (row tile, batch tile) pair needs its own thread: tiles <= kThreads.
  const int64_t row_tiles = rows_pad / kTileRows;
  chunk = std::min<int64_t>(chunk, (kThreads / row_tiles) * kTileBatch);
  chunk = std::min<int64_t>(chunk, round_up(s.batch, kTileBatch));
  chunk = std::min<int64_t>(chunk, kMaxBatchChunk);
  return chunk >= kTileBatch ? static_cast<int>(chunk) : 0;
}

inline Plan make_plan(const LayerShape& s, const DeviceLimits& dev) {
  Plan p;
  auto fail = [&](std::string why) {
    p.ok = false;
    p.why = std::move(why);
    return p;
  };
  if (s.gates < 1 || s.hidden < 1 || s.batch < 1 || s.steps < 1 || s.dirs < 1 || s.dirs > 2 ||
      (s.elem_bytes != 2 && s.elem_bytes != 4)) {
    return fail("unsupported layer shape");
  }
  if (dev.sm_count < 1 || dev.smem_per_block < 1) return fail("no device limits");
  // Blocks per direction: one per SM, the SMs split evenly between the directions, so the
  // whole launch is co-resident with one block per SM.
  int64_t nb_max = dev.sm_count / s.dirs;
  if (dev.blocks_override > 0) nb_max = std::min<int64_t>(nb_max, dev.blocks_override);
  if (nb_max < 1) return fail("fewer SMs than directions");
  const int64_t units = ceil_div(s.hidden, nb_max);
  const int64_t nb = ceil_div(s.hidden, units);  // every block owns at least one unit
  const int64_t k = s.backward ? s.gates * s.hidden : s.hidden;
  const int64_t rows = s.backward ? units : s.gates * units;
  const int64_t rows_pad = round_up(rows, kTileRows);
  if (rows_pad / kTileRows > kThreads) {
    return fail("a block's " + std::to_string(rows) + " weight rows exceed " +
                std::to_string(kThreads * kTileRows) + " (hidden_size too large for the SMs)");
  }
  const int64_t weight_bytes = round_up(k * rows_pad * s.elem_bytes, kSmemAlign);
  if (weight_bytes + kReduceBytes > dev.smem_per_block) {
    return fail("a block's slice of the recurrent weights (" + std::to_string(weight_bytes) +
                " bytes) plus " + std::to_string(kReduceBytes) +
                " bytes of partial sums exceeds the device's " +
                std::to_string(dev.smem_per_block) + " bytes of shared memory per block");
  }
  const int chunk = fit_batch_chunk(s, k, rows_pad, dev.smem_per_block - weight_bytes);
  if (chunk == 0) {
    return fail("the weight slice (" + std::to_string(weight_bytes) +
                " bytes) leaves no room to stage " + std::to_string(kTileBatch) +
                " batch columns of length " + std::to_string(k) + " in " +
                std::to_string(dev.smem_per_block) + " bytes of shared memory");
  }
  // The step counters count to blocks_per_dir * (steps + 1) in 32 bits.
  if (nb * (s.steps + 1) >= (int64_t(1) << 31)) return fail("too many steps");
  p.ok = true;
  p.blocks_per_dir = static_cast<int>(nb);
  p.units = static_cast<int>(units);
  p.k = static_cast<int>(k);
  p.rows_pad = static_cast<int>(rows_pad);
  p.batch_chunk = chunk;
  p.weight_bytes = weight_bytes;
  p.union_bytes = round_up(std::max<int64_t>(k * chunk * s.elem_bytes, kReduceBytes), kSmemAlign);
  p.smem_bytes = p.weight_bytes + p.union_bytes;
  p.grid = static_cast<int>(nb * s.dirs);
  return p;
}

// The sizes a kernel launch runs with (the layer's and the plan's), passed to both kernels
// as the base of their parameter structs (persistent_kernels.h).
struct Geometry {
  int steps = 0, batch = 0, hidden = 0, dirs = 0;  // T, B, H, D
  int blocks_per_dir = 0, units = 0, rows_pad = 0, batch_chunk = 0;  // from the Plan
  int weight_bytes = 0;  // byte offset of the staging / partial-sum union in shared memory
};

// The Geometry of a plan the caller has checked (plan_violation() empty); every size fits
// in an int by the plan's limits and the launcher's checks (B * D * H < 2^31, T < 2^31).
inline Geometry geometry_of(const LayerShape& s, const Plan& p) {
  Geometry g;
  g.steps = static_cast<int>(s.steps);
  g.batch = static_cast<int>(s.batch);
  g.hidden = static_cast<int>(s.hidden);
  g.dirs = s.dirs;
  g.blocks_per_dir = p.blocks_per_dir;
  g.units = p.units;
  g.rows_pad = p.rows_pad;
  g.batch_chunk = p.batch_chunk;
  g.weight_bytes = static_cast<int>(p.weight_bytes);
  return g;
}

// The invariants the kernels rely on, checked on every launch (and by
// scripts/persistent_limits.cpp over whole grids of shapes): "" when they hold, else the
// first one broken.
inline std::string plan_violation(const LayerShape& s, const Plan& p) {
  if (!p.ok) return "plan not ok: " + p.why;
  const int64_t k = s.backward ? s.gates * s.hidden : s.hidden;
  const int64_t rows = s.backward ? p.units : int64_t(s.gates) * p.units;
  if (p.blocks_per_dir < 1 || p.units < 1) return "no blocks or no units";
  if (int64_t(p.blocks_per_dir) * p.units < s.hidden) return "units do not cover hidden_size";
  if (int64_t(p.blocks_per_dir - 1) * p.units >= s.hidden) return "a block owns no unit";
  if (p.k != k) return "wrong reduction length";
  if (p.rows_pad % kTileRows != 0 || p.rows_pad < rows) return "bad rows_pad";
  if (p.batch_chunk < kTileBatch || p.batch_chunk % kTileBatch != 0) return "bad batch_chunk";
  if (int64_t(p.rows_pad / kTileRows) * (p.batch_chunk / kTileBatch) > kThreads) {
    return "more register tiles than threads";
  }
  if (p.weight_bytes < k * p.rows_pad * s.elem_bytes || p.weight_bytes % kSmemAlign != 0) {
    return "weight area too small or misaligned";
  }
  if (p.union_bytes < std::max<int64_t>(k * p.batch_chunk * s.elem_bytes, kReduceBytes) ||
      p.union_bytes % kSmemAlign != 0) {
    return "staging / partial-sum area too small or misaligned";
  }
  if (p.smem_bytes != p.weight_bytes + p.union_bytes) return "smem_bytes is not the sum";
  const TileMap m = make_tile_map(p.rows_pad, p.batch_chunk, p.k);
  if (m.splits < 1 || int64_t(m.splits) * m.tiles > kThreads) return "bad tile map";
  if (int64_t(m.splits) * m.k_per_split < k) return "the K splits do not cover K";
  // Partial sums of every thread: splits * tiles tiles of kTileRows x kTileBatch floats.
  if (int64_t(m.splits) * m.tiles * kTileRows * kTileBatch * 4 > p.union_bytes) {
    return "partial sums overflow their area";
  }
  if (int64_t(p.grid) != int64_t(p.blocks_per_dir) * s.dirs) return "grid != blocks * dirs";
  if (int64_t(p.blocks_per_dir) * (s.steps + 1) >= (int64_t(1) << 31)) return "counter overflow";
  return "";
}

}  // namespace persistent
}  // namespace birnn
