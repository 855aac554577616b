// The persistent recurrence kernels (v1: correctness first, float32 FMA): ONE launch runs
// every step of both directions of a layer, forward or backward.
//
// DEVICE CODE: include from .cu files only (persistent_forward.cu, persistent_backward.cu).
//
// What each block does (persistent_plan.h has the numbers; csrc/birnn.h the contract):
//   - it owns hidden units [j0, j0 + units) of one direction d (blockIdx.x / blocks_per_dir)
//     and copies its slice of that direction's recurrent weights into shared memory once;
//   - per step it waits until all blocks of its direction have finished the previous step
//     (persistent_sync.h), stages the previous step's broadcast vector for a chunk of the
//     batch in shared memory, multiplies it by the weight slice (each thread a 4 x 4 tile of
//     rows x batch over a share of K, float32 accumulation, partial sums combined through
//     shared memory), runs the cell's pointwise math for its units (csrc/cells.h, the one
//     source of the cell math), writes its share of the step's outputs and of the next
//     broadcast vector, and signals;
//   - the per-unit carries (h and c forward, dLoss/dh and dLoss/dc backward) stay in
//     float32 in global scratch that only the owning block touches, so reduced-precision
//     storage rounds the outputs but never the carried state.
//
// What is broadcast between blocks each step, in the storage dtype (what the standard path
// and cuDNN also feed their per-step GEMMs):
//   forward : h of the step, in a two-slot buffer h_bcast [2, D, B, H] (slot s % 2 holds
//             step s; step 0 reads h0 straight from the h argument);
//   backward: dgates_h of the step, read straight from the dgates_h output (each step's
//             rows are distinct, so no slots are needed).
//
// Lengths: exactly the standard path's rules (csrc/birnn.h): steps t >= lengths[b] are
// padding (outputs, reserve and dgates zero; the carries pass through unchanged), and
// direction 1 of sequence b starts at step lengths[b] - 1, whose previous state is h0 / c0
// because the padded steps after it carried h0 / c0 through unchanged.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#if !defined(BIRNN_PERSISTENT_EMULATION)
#include <cuda_fp16.h>
// The block's dynamic shared memory (the CPU emulation, tests/persistent_emulation/, gives
// each emulated block its own buffer instead).
#define BIRNN_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include "../birnn.h"
#include "persistent_plan.h"
#include "persistent_sync.h"

namespace birnn {
namespace persistent {

// ----------------------------------------------------------------------------------------
// arguments

// Forward recurrence of one layer, both directions. Shapes: T steps, B batch, D directions,
// H hidden, G gates; every tensor contiguous. The sizes are the Geometry base
// (persistent_plan.h).
template <typename T>
struct ForwardParams : Geometry {
  const T* gates_x;        // [T, B, D, G*H] W_ih x + b_ih of every step
  const T* w_hh;           // [D, G*H, H]
  const T* b_hh;           // [D, G*H], or nullptr
  const int64_t* lengths;  // [B], or nullptr: every sequence has T steps
  T* output;               // [T, B, D, H] written: h of every step, zero past each length
  T* h;                    // [D, B, H] in: h0, out: h_n
  T* c;                    // [D, B, H] in: c0, out: c_n (LSTM), else nullptr
  T* reserve;              // [T, B, D, kReserve*H] written (training), else nullptr
  T* h_bcast;              // [2, D, B, H] scratch: the broadcast h, slot s % 2 = step s
  float* h_state;          // [D, B, H] scratch: float32 h of each unit (owner block only)
  float* c_state;          // [D, B, H] scratch: float32 c (LSTM), else nullptr
  unsigned* counters;      // [D * kCounterStride] step counters, zero at launch
};

// Backward recurrence of one layer, both directions (the op then turns dgates into dx and
// the weight gradients with large GEMMs).
template <typename T>
struct BackwardParams : Geometry {
  const T* grad_output;    // [T, B, D, H] dLoss/doutput
  const int64_t* lengths;  // [B], or nullptr
  const T* w_hh;           // [D, G*H, H]
  const T* output;         // [T, B, D, H] the forward's h of every step
  const T* h0;             // [D, B, H]
  const T* c0;             // [D, B, H] (LSTM), else nullptr
  const T* reserve;        // [T, B, D, kReserve*H] saved by the forward
  T* dh;                   // [D, B, H] in: dLoss/dh_n, out: dLoss/dh0
  T* dc;                   // [D, B, H] in: dLoss/dc_n, out: dLoss/dc0 (LSTM), else nullptr
  T* dgates_x;             // [T, B, D, G*H] written, zero past each length
  T* dgates_h;             // [T, B, D, G*H] written; == dgates_x unless the cell splits them
  float* dh_state;         // [D, B, H] scratch: float32 carry of dLoss/dh (owner block only)
  float* dc_state;         // [D, B, H] scratch: float32 carry of dLoss/dc (LSTM), else nullptr
  unsigned* counters;      // [D * kCounterStride] step counters, zero at launch
};

// ----------------------------------------------------------------------------------------
// loads and conversions

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

// Loads a value another block wrote during this launch: ld.global.cg caches in L2 only, so
// a line this SM's L1 kept from an earlier step can never be returned.
__device__ __forceinline__ float load_cg(const float* p) { return __ldcg(p); }
__device__ __forceinline__ c10::Half load_cg(const c10::Half* p) {
  return c10::Half(__ldcg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits());
}
__device__ __forceinline__ c10::BFloat16 load_cg(const c10::BFloat16* p) {
  return c10::BFloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)),
                       c10::BFloat16::from_bits());
}

// Four consecutive shared-memory values (16-byte aligned for float, 8 for 16-bit types)
// as float32.
__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const c10::BFloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);  // element 0 in the low half of u.x
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                     __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float4 load4(const c10::Half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  return make_float4(__half2float(__ushort_as_half(static_cast<unsigned short>(u.x))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.x >> 16))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.y))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(u.y >> 16))));
}

// Length of sequence b clamped into [0, T], so that lengths no host has checked (CUDA graph
// replays) can never index outside the buffers.
__device__ __forceinline__ int64_t sequence_length(const int64_t* lengths, int64_t b,
                                                   int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t len = lengths[b];
  return len < 0 ? 0 : (len > T ? T : len);
}

// ----------------------------------------------------------------------------------------
// the block's per-step product: out[row][col] = sum_k w_s[k][row] * x_s[k][col]

// x_s [K][batch_chunk] = columns [0, cols) of the rows src[col * ld + k], zeros beyond.
// Consecutive threads read consecutive k: coalesced global loads.
template <typename T>
__device__ __forceinline__ void stage_columns(T* x_s, int batch_chunk, const T* src, int64_t ld,
                                              int cols, int K) {
  for (int i = threadIdx.x; i < batch_chunk * K; i += kThreads) {
    const int col = i / K, k = i - col * K;
    x_s[k * batch_chunk + col] = col < cols ? load_cg(src + col * ld + k) : T(0);
  }
}

// The product of w_s [K][rows_pad] and x_s [K][batch_chunk] (both in shared memory), left
// as float32 partial sums in red (which overlays x_s). Starts with x_s staged and visible
// (after a __syncthreads); ends with red complete and visible.
template <typename T>
__device__ __forceinline__ void block_product(const T* w_s, const T* x_s, float* red,
                                              int rows_pad, int batch_chunk, int K,
                                              const TileMap& m) {
  float acc[kTileRows][kTileBatch];
#pragma unroll
  for (int r = 0; r < kTileRows; ++r) {
#pragma unroll
    for (int c = 0; c < kTileBatch; ++c) acc[r][c] = 0.f;
  }
  const int tid = threadIdx.x;
  const bool active = tid < m.splits * m.tiles;
  if (active) {
    const int tile = tid % m.tiles, split = tid / m.tiles;
    const int k_begin = split * m.k_per_split;
    const int k_end = min(K, k_begin + m.k_per_split);
    const T* w = w_s + (tile % m.row_tiles) * kTileRows;
    const T* x = x_s + (tile / m.row_tiles) * kTileBatch;
#pragma unroll 4
    for (int k = k_begin; k < k_end; ++k) {
      const float4 wv = load4(w + k * rows_pad);
      const float4 xv = load4(x + k * batch_chunk);
      const float wr[kTileRows] = {wv.x, wv.y, wv.z, wv.w};
      const float xc[kTileBatch] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
      for (int r = 0; r < kTileRows; ++r) {
#pragma unroll
        for (int c = 0; c < kTileBatch; ++c) acc[r][c] = fmaf(wr[r], xc[c], acc[r][c]);
      }
    }
  }
  __syncthreads();  // every thread has finished reading x_s, which red overwrites
  if (active) {
    float4* out = reinterpret_cast<float4*>(red + tid * (kTileRows * kTileBatch));
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) {
      out[r] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    }
  }
  __syncthreads();
}

// The finished product out[row][col]: the sum of the splits' partial sums, always in the
// same order, so a result never depends on timing.
__device__ __forceinline__ float product_at(const float* red, const TileMap& m, int row,
                                            int col) {
  const int tile = row / kTileRows + (col / kTileBatch) * m.row_tiles;
  const int at = tile * (kTileRows * kTileBatch) + (row % kTileRows) * kTileBatch +
                 col % kTileBatch;
  float sum = 0.f;
  for (int split = 0; split < m.splits; ++split) {
    sum += red[split * m.tiles * (kTileRows * kTileBatch) + at];
  }
  return sum;
}

// ----------------------------------------------------------------------------------------
// the cells' pointwise step for one (b, j), through csrc/cells.h
//
// The cell structs take row pointers with gate g of unit j at [g * H + j]. Each call here
// hands them small float32 arrays with H = 1 and j = 0 (so gate g sits at [g]); after
// inlining, the indices are constants and the arrays live in registers.

// Forward step t of direction d for sequence b, unit j. gh[g]: the recurrent product
// (W_hh h)[g*H + j] without bias. Writes output, reserve, the float32 state and the
// broadcast slot `h_next` ([B, H] of direction d).
template <typename Cell, typename T, bool kTraining>
__device__ __forceinline__ void forward_point(const ForwardParams<T>& p, int d, int64_t t,
                                              int64_t b, int64_t j, const float* gh,
                                              T* h_next) {
  constexpr int G = Cell::kGates, R = Cell::kReserve;
  const int64_t B = p.batch, D = p.dirs, H = p.hidden, GH = G * H;
  const int64_t row = (t * B + b) * D + d;            // the (t, b, d) row of [T, B, D, *]
  const int64_t at = (int64_t(d) * B + b) * H + j;    // (d, b, j) of [D, B, H]
  T* reserve_row = kTraining ? p.reserve + row * (R * H) : nullptr;
  if (t >= sequence_length(p.lengths, b, p.steps)) {  // padding: zeros out, state kept
    p.output[row * H + j] = T(0);
    if constexpr (kTraining) {
#pragma unroll
      for (int k = 0; k < R; ++k) reserve_row[k * H + j] = T(0);
    }
    h_next[b * H + j] = T(p.h_state[at]);
    return;
  }
  float gx[G], bias[G], reserve[R > 0 ? R : 1];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    gx[g] = to_float(p.gates_x[row * GH + g * H + j]);
    bias[g] = p.b_hh != nullptr ? to_float(p.b_hh[d * GH + g * H + j]) : 0.f;
  }
  float h_prev = p.h_state[at], c_prev = 0.f, h_new = 0.f, c_new = 0.f;
  if constexpr (Cell::kCellSlot >= 0) c_prev = p.c_state[at];
  // Without b_hh the bias array holds zeros rather than passing nullptr: x + 0.f == x, and
  // a pointer that is either a register array or null would force the array to memory.
  const ForwardRow<float> r{gx,     gh,     bias,   &h_prev,
                            &c_prev, &h_new, &c_new, kTraining ? reserve : nullptr};
  Cell::template forward<float, float>(r, 0, 1);
  p.h_state[at] = h_new;
  if constexpr (Cell::kCellSlot >= 0) p.c_state[at] = c_new;
  const T h_out = T(h_new);
  p.output[row * H + j] = h_out;
  h_next[b * H + j] = h_out;
  if constexpr (kTraining) {
#pragma unroll
    for (int k = 0; k < R; ++k) reserve_row[k * H + j] = T(reserve[k]);
  }
}

// Backward step t of direction d for sequence b, unit j. dh_in: the recurrent product
// (dgates_h of the step processed before this one) @ W_hh at [j], zero at the first step.
template <typename Cell, typename T>
__device__ __forceinline__ void backward_point(const BackwardParams<T>& p, int d, int64_t t,
                                               int64_t b, int64_t j, float dh_in) {
  constexpr int G = Cell::kGates, R = Cell::kReserve;
  const int64_t B = p.batch, D = p.dirs, H = p.hidden, GH = G * H;
  const int64_t row = (t * B + b) * D + d;
  const int64_t at = (int64_t(d) * B + b) * H + j;
  // dLoss/dh reaching this step's h from later steps (in this direction's order).
  const float carry = p.dh_state[at] + dh_in;
  const int64_t len = sequence_length(p.lengths, b, p.steps);
  if (t >= len) {  // padding: no gradient into its gates; the carry passes through
#pragma unroll
    for (int g = 0; g < G; ++g) {
      p.dgates_x[row * GH + g * H + j] = T(0);
      if constexpr (Cell::kSplitHiddenGrad) p.dgates_h[row * GH + g * H + j] = T(0);
    }
    p.dh_state[at] = carry;
    return;
  }
  const int64_t prev = previous_step(d, t, len);
  const int64_t prev_row = (prev * B + b) * D + d;  // used only when prev >= 0
  // This step's h feeds the output at t and the next step: both gradients meet here.
  float dh = to_float(p.grad_output[row * H + j]) + carry;
  float reserve[R > 0 ? R : 1];
#pragma unroll
  for (int k = 0; k < R; ++k) reserve[k] = to_float(p.reserve[row * (R * H) + k * H + j]);
  float h = to_float(p.output[row * H + j]);
  float h_prev = prev < 0 ? to_float(p.h0[at]) : to_float(p.output[prev_row * H + j]);
  float c_prev = 0.f, dc = 0.f;
  if constexpr (Cell::kCellSlot >= 0) {
    c_prev = prev < 0 ? to_float(p.c0[at])
                      : to_float(p.reserve[prev_row * (R * H) + Cell::kCellSlot * H + j]);
    dc = p.dc_state[at];
  }
  float direct = 0.f;  // GRU: the direct path z * dh into dLoss/dh_prev; others leave it 0
  float dgates_x[G], dgates_h[G];
  const BackwardRow<float> r{&dh, reserve, &h, &h_prev, &c_prev, &dc, &direct, dgates_x,
                             dgates_h};
  Cell::template backward<float, float>(r, 0, 1);
#pragma unroll
  for (int g = 0; g < G; ++g) {
    p.dgates_x[row * GH + g * H + j] = T(dgates_x[g]);
    if constexpr (Cell::kSplitHiddenGrad) p.dgates_h[row * GH + g * H + j] = T(dgates_h[g]);
  }
  p.dh_state[at] = direct;
  if constexpr (Cell::kCellSlot >= 0) p.dc_state[at] = dc;
}

// ----------------------------------------------------------------------------------------
// kernels
//
// Grid: blocks_per_dir * dirs blocks of kThreads threads, launched cooperatively (all
// co-resident); dynamic shared memory: Plan::smem_bytes. Block i serves direction
// i / blocks_per_dir. No block returns early: each one signals once per step, or the other
// blocks of its direction would wait forever.

template <typename Cell, typename T, bool kTraining>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(const ForwardParams<T> p) {
  constexpr int G = Cell::kGates;
  BIRNN_DYNAMIC_SMEM(smem);
  T* w_s = reinterpret_cast<T*>(smem);                      // [K][rows_pad]
  T* x_s = reinterpret_cast<T*>(smem + p.weight_bytes);     // [K][batch_chunk]
  float* red = reinterpret_cast<float*>(smem + p.weight_bytes);  // overlays x_s

  const int H = p.hidden, B = p.batch, K = H, chunk = p.batch_chunk;
  const int d = blockIdx.x / p.blocks_per_dir;
  const int j0 = (blockIdx.x - d * p.blocks_per_dir) * p.units;
  const int units = min(p.units, H - j0);  // this block's units; >= 1 by the plan
  if (d >= p.dirs || units < 1) __trap();  // a launch that breaks the plan's invariants

  // This block's slice of W_hh[d] [G*H, H], as w_s[k][g*U + u] = W_hh[d][g*H + j0 + u][k].
  const T* w_dir = p.w_hh + int64_t(d) * G * H * H;
  for (int i = threadIdx.x; i < p.rows_pad * K; i += kThreads) {
    const int row = i / K, k = i - row * K;
    const int g = row / p.units, u = row - g * p.units;
    w_s[k * p.rows_pad + row] =
        g < G && u < units ? w_dir[(int64_t(g) * H + j0 + u) * H + k] : T(0);
  }
  // The float32 state of this block's units starts from h0 / c0.
  for (int i = threadIdx.x; i < B * units; i += kThreads) {
    const int b = i / units, j = j0 + (i - b * units);
    const int64_t at = (int64_t(d) * B + b) * H + j;
    p.h_state[at] = to_float(p.h[at]);
    if constexpr (Cell::kCellSlot >= 0) p.c_state[at] = to_float(p.c[at]);
  }
  // (The first chunk's __syncthreads below orders these writes before their readers.)

  unsigned* counter = p.counters + d * kCounterStride;
  const TileMap m = make_tile_map(p.rows_pad, chunk, K);
  const int64_t dir_rows = int64_t(d) * B * H;             // direction d in [D, B, H]
  const int64_t slot_size = int64_t(p.dirs) * B * H;       // one slot of h_bcast
  for (int s = 0; s < p.steps; ++s) {
    // Step s reads h of step s - 1 (h0 at s = 0) from all blocks of this direction.
    if (s > 0) block_wait(counter, unsigned(p.blocks_per_dir) * unsigned(s));
    const int64_t t = d == 0 ? s : p.steps - 1 - s;
    const T* h_prev = s == 0 ? p.h + dir_rows : p.h_bcast + ((s - 1) & 1) * slot_size + dir_rows;
    T* h_next = p.h_bcast + (s & 1) * slot_size + dir_rows;
    for (int b0 = 0; b0 < B; b0 += chunk) {
      const int cols = min(chunk, B - b0);
      stage_columns(x_s, chunk, h_prev + int64_t(b0) * H, H, cols, K);
      __syncthreads();
      block_product(w_s, x_s, red, p.rows_pad, chunk, K, m);
      for (int i = threadIdx.x; i < cols * units; i += kThreads) {
        const int col = i / units, u = i - col * units;
        float gh[G];
#pragma unroll
        for (int g = 0; g < G; ++g) gh[g] = product_at(red, m, g * p.units + u, col);
        forward_point<Cell, T, kTraining>(p, d, t, b0 + col, j0 + u, gh, h_next);
      }
      __syncthreads();  // red is consumed before the next chunk stages over it
    }
    block_signal(counter);
  }
  // h_n / c_n overwrite h0 / c0, which step 0 of every block reads: wait until all blocks
  // of the direction are past it (they are past all steps then).
  block_wait(counter, unsigned(p.blocks_per_dir) * unsigned(p.steps));
  for (int i = threadIdx.x; i < B * units; i += kThreads) {
    const int b = i / units, j = j0 + (i - b * units);
    const int64_t at = (int64_t(d) * B + b) * H + j;
    p.h[at] = T(p.h_state[at]);
    if constexpr (Cell::kCellSlot >= 0) p.c[at] = T(p.c_state[at]);
  }
}

template <typename Cell, typename T>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(const BackwardParams<T> p) {
  constexpr int G = Cell::kGates;
  BIRNN_DYNAMIC_SMEM(smem);
  T* w_s = reinterpret_cast<T*>(smem);                      // [K][rows_pad], K = G*H
  T* x_s = reinterpret_cast<T*>(smem + p.weight_bytes);     // [K][batch_chunk]
  float* red = reinterpret_cast<float*>(smem + p.weight_bytes);  // overlays x_s

  const int H = p.hidden, B = p.batch, K = G * H, chunk = p.batch_chunk;
  const int d = blockIdx.x / p.blocks_per_dir;
  const int j0 = (blockIdx.x - d * p.blocks_per_dir) * p.units;
  const int units = min(p.units, H - j0);
  if (d >= p.dirs || units < 1) __trap();

  // Columns [j0, j0 + units) of W_hh[d] [G*H, H]: w_s[k][u] = W_hh[d][k][j0 + u].
  const T* w_dir = p.w_hh + int64_t(d) * K * H;
  for (int i = threadIdx.x; i < K * p.rows_pad; i += kThreads) {
    const int k = i / p.rows_pad, u = i - k * p.rows_pad;
    w_s[k * p.rows_pad + u] = u < units ? w_dir[int64_t(k) * H + j0 + u] : T(0);
  }
  for (int i = threadIdx.x; i < B * units; i += kThreads) {
    const int b = i / units, j = j0 + (i - b * units);
    const int64_t at = (int64_t(d) * B + b) * H + j;
    p.dh_state[at] = to_float(p.dh[at]);
    if constexpr (Cell::kCellSlot >= 0) p.dc_state[at] = to_float(p.dc[at]);
  }
  __syncthreads();  // the s = 0 phase has no product (and so no barrier) before its reads

  unsigned* counter = p.counters + d * kCounterStride;
  const TileMap m = make_tile_map(p.rows_pad, chunk, K);
  const int64_t T_ = p.steps, D = p.dirs;
  // Phase s < T runs backward step s (t = T-1-s in direction 0, t = s in direction 1);
  // phase T only adds the last product to the carry, which is then dLoss/dh0.
  for (int s = 0; s <= p.steps; ++s) {
    const bool has_product = s > 0;  // phase 0 starts from dh_n: nothing to multiply yet
    if (has_product) block_wait(counter, unsigned(p.blocks_per_dir) * unsigned(s));
    // dgates_h rows [b][G*H] of the step processed in phase s - 1 (row stride D*G*H).
    const int64_t t_prev = d == 0 ? T_ - s : s - 1;
    const T* dgates_prev =
        has_product ? p.dgates_h + (t_prev * B * D + d) * int64_t(K) : nullptr;
    const int64_t t = d == 0 ? T_ - 1 - s : s;  // valid for s < T only
    for (int b0 = 0; b0 < B; b0 += chunk) {
      const int cols = min(chunk, B - b0);
      if (has_product) {
        stage_columns(x_s, chunk, dgates_prev + int64_t(b0) * D * K, D * K, cols, K);
        __syncthreads();
        block_product(w_s, x_s, red, p.rows_pad, chunk, K, m);
      }
      for (int i = threadIdx.x; i < cols * units; i += kThreads) {
        const int col = i / units, u = i - col * units;
        const float dh_in = has_product ? product_at(red, m, u, col) : 0.f;
        const int64_t b = b0 + col, j = j0 + u;
        if (s < p.steps) {
          backward_point<Cell, T>(p, d, t, b, j, dh_in);
        } else {  // past the first step: the carry is dLoss/dh0
          const int64_t at = (int64_t(d) * B + b) * H + j;
          p.dh[at] = T(p.dh_state[at] + dh_in);
          if constexpr (Cell::kCellSlot >= 0) p.dc[at] = T(p.dc_state[at]);
        }
      }
      __syncthreads();  // red is consumed before the next chunk stages over it
    }
    if (s < p.steps) block_signal(counter);
  }
}

}  // namespace persistent
}  // namespace birnn
