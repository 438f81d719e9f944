// What every decode kernel (gemv_kernel.cuh, qmma_kernel.cuh, fmma_kernel.cuh) shares: the
// layer, activation and split fields of its parameters, the block's unit depths and offsets into
// shared memory, and the K split's last-block write of y in original row order.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "common.cuh"

namespace radio::cuda {

// The first fields of GemvParams, HgemvParams, QmmaParams, FmmaParams and StreamParams (each
// adds its tables after them).
struct DecodeParams {
  const void* x;                    // [m, k] in Act
  const void* xt;                   // x transposed and zero-padded per kernel (transpose_x.cuh),
                                    // or x itself at 1 token
  const std::uint32_t* qweight;     // [W]
  const __half* scale;              // [C, Kp]
  const __half* loc;                // [C, Kp]
  const std::uint8_t* depth;        // [C, U]
  const std::int32_t* unit_offset;  // [C, U]
  const std::int32_t* row_perm;     // [n]
  const std::int32_t* col_perm;     // [C, Kp]
  const __half* bias;               // [n] or null
  void* y;                          // [m, n] in Act
  float* workspace;                 // f32 partials per permuted row and token, zeroed (splits > 1)
  int* counters;                    // per chunk (and token group), zeroed (splits > 1 only)
  int m, n, k, gs, units, padded_k;
  int units_per_split, splits;
  std::int64_t qweight_words;       // qweight's length; -1: unknown (pdl.cuh's prefetch skipped)
  int fence_all;  // the K split's end as before session 15 (set_fence_all: benchmark A/B only)
  // The K split's output by finalize_kernel.cuh after the grid (set_defer_output): blocks only
  // add their partials and leave (no counter, no last block).
  int defer_output;
};

// Depths and word offsets of the block's n_units units (unit index chunk_unit0 on) into shared
// memory, and the largest depth into *s_max_depth (zeroed and synchronised by the caller).
__device__ __forceinline__ void load_block_units(const std::uint8_t* depth,
                                                 const std::int32_t* unit_offset,
                                                 std::int64_t chunk_unit0, int n_units, int tid,
                                                 int nthreads, int lane, std::uint8_t* s_depth,
                                                 std::int32_t* s_offset, int* s_max_depth) {
  int max_depth = 0;
  for (int i = tid; i < n_units; i += nthreads) {
    const int d = depth[chunk_unit0 + i];
    s_depth[i] = static_cast<std::uint8_t>(d);
    s_offset[i] = unit_offset[chunk_unit0 + i];
    max_depth = max(max_depth, d);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    max_depth = max(max_depth, __shfl_xor_sync(0xffffffffu, max_depth, o));
  if (lane == 0 && max_depth > 0) atomicMax(s_max_depth, max_depth);
}

// col_perm, scale and loc of the kStage staged positions base + j * stride (j < kStage) of a
// block whose positions start at pos0, all loads issued before any use (the x gather depends on
// col_perm: the block's startup latency). Positions past npos read position npos - 1 (in bounds);
// the caller skips them.
template <int kStage>
struct PositionMeta {
  int col[kStage];
  float scale[kStage], loc[kStage];
};
template <int kStage>
__device__ __forceinline__ PositionMeta<kStage> load_position_meta(const DecodeParams& p,
                                                                   std::int64_t pos0, int base,
                                                                   int stride, int npos) {
  PositionMeta<kStage> m;
#pragma unroll
  for (int j = 0; j < kStage; ++j) {
    const int i = min(base + j * stride, npos - 1);
    m.col[j] = p.col_perm[pos0 + i];
    m.scale[j] = __half2float(p.scale[pos0 + i]);
    m.loc[j] = __half2float(p.loc[pos0 + i]);
  }
  return m;
}

// One output from its summed partial: y[t, row_perm[prow]] = partial + bias, and the partial
// zeroed again (a kept workspace stays zero between calls). Shared by the chunk's last block
// (write_k_split_rows, stream_consume.cuh's stream_complete_chunk) and the deferred output's
// kernel (finalize_kernel.cuh).
template <typename Act>
__device__ __forceinline__ void write_row_output(float* partial, std::int64_t prow, int t,
                                                 const std::int32_t* row_perm,
                                                 const __half* bias, Act* y, int n) {
  const int orig = row_perm[prow];
  const float b = bias ? __half2float(bias[orig]) : 0.f;
  y[static_cast<std::int64_t>(t) * n + orig] = from_float<Act>(__ldcg(partial) + b);
  __stcg(partial, 0.f);
}

// The block's arrival at its chunk's counter, by one thread after the block's barrier: a release
// fence (covering the block's partial sums, ordered before it by the barrier), the count of
// `add` out of `total`, and on the block that completes it an acquire fence (the other blocks'
// partials, for the whole block through the barrier that follows). True on that block.
__device__ __forceinline__ bool count_block_done(int* counter, int add, int total) {
  __threadfence();
  const bool done = atomicAdd(counter, add) + add == total;
  if (done) __threadfence();
  return done;
}

// After every block of a K split has added its f32 partials to the workspace (permuted row prow,
// token t at ws[prow * ws_stride + t]): the chunk's last block (the one that brings *counter to
// splits; it resets it) writes y[t, row_perm[prow]] = partial + bias for its rows_c rows and m
// tokens, and zeroes the partials it read: a workspace that was zero before the call is zero
// after it (the one-token calls keep one per layer and skip the memset: ops.cu). Every thread of
// the block calls this.
//
// Only the counting thread fences, after the block's barrier, as the grid barrier of cooperative
// groups does: the barrier orders every thread's partial-sum atomics before that fence, and its
// release covers them (the PTX memory model's cumulativity); on the last block the same thread's
// fence after the count acquires the other blocks' partials for the whole block, through the
// second barrier. fence_all (DecodeParams, set_fence_all): every thread also fences before the
// barrier and after the count, as before session 15 (each block's end waited for every thread's
// atomics), for the benchmark's side-by-side timing (bench_gemm.py --compare-fence; the
// structure benchmark bench/decode_ladder.cu times both as rungs output and output1).
template <typename Act>
__device__ __forceinline__ void write_k_split_rows(int* counter, int splits, int* s_is_last,
                                                   float* ws, int ws_stride, int rows_c,
                                                   int m, std::int64_t perm_row0,
                                                   const std::int32_t* row_perm,
                                                   const __half* bias, Act* y, int n, int tid,
                                                   int nthreads, bool fence_all) {
  if (fence_all) __threadfence();
  __syncthreads();
  if (tid == 0) *s_is_last = count_block_done(counter, 1, splits);
  __syncthreads();
  if (!*s_is_last) return;
  if (fence_all) __threadfence();
  for (int i = tid; i < rows_c * m; i += nthreads) {
    const int row = i / m, t = i % m;
    const std::int64_t prow = perm_row0 + row;
    write_row_output(ws + prow * ws_stride + t, prow, t, row_perm, bias, y, n);
  }
  if (tid == 0) *counter = 0;
}

}  // namespace radio::cuda
