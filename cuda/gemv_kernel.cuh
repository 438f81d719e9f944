// y = x @ W.T + b for a packed layer and 1..2 tokens (1..4 with fmma off; instances up to 8): CUDA
// cores, f32 accumulation, one thread per two rows of a chunk.
//
// Why not the tensor cores here: at a few tokens the mma tiles are mostly padding, and their
// fragment layout makes each lane read a window of a row's bit string (4 word rows per load,
// bench/KERNELS.md v1-v3). The format's natural order is one row per thread: word row `b` of a
// unit is 32 consecutive rows in 32 consecutive words, so a warp's load is one 128-byte line,
// and the unit's 32 indices of a row sit in the thread's B registers at compile-time bit
// positions once the depth is known (warp-uniform: the whole chunk shares a unit's depth).
//
// Work split. Block (chunk c, split s) owns all rows of chunk c (thread t: rows t and t + blockDim)
// and the unit range of split s. It stages xs[token][position] = scale * x[token, col_perm] in f32
// shared memory and the chunk term sum loc * x (the same for every row of the chunk), then walks
// its units, the next unit's words loaded while the current one is decoded. Per weight and row:
// one shift and one AND give 4 * q (unit_index_x4, decode.cuh), one shared load of T_B[q] from a
// float table at a compile-time address (laplace or uniform table, filled on the host; entries of
// one depth <= 5 sit in distinct banks), one FMA per token. Depths 1..3 read two table values per
// lookup from a pair table with one copy per bank (gemv_pair_quad).
//
// Output: one split writes y[token, row_perm[row]] (+ bias) in x's dtype directly; with several,
// each block adds its f32 partial to a zeroed workspace [n, kTokens] in permuted-row order and the
// last block of the chunk (counter per chunk, reset by that block) writes y in original order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "block_units.cuh"
#include "common.cuh"
#include "decode.cuh"
#include "ops.hpp"  // kGemvMaxTokens
#include "pdl.cuh"
#include "transpose_x.cuh"

namespace radio::cuda {

constexpr int kGemvMaxThreads = 1024;  // two rows each: chunks of up to 2048 rows
constexpr int kTableEntries = 510;     // T_B[q] of depths 1..8: depth B starts at 2^B - 2
// Depths 1..3 look up two indices at once: entry q_j | q_{j+1} << B of a pair table holds
// (T_B[q_j], T_B[q_{j+1}]) as f16 halves; 4 + 16 + 64 entries, depth B from (4^B - 4) / 3.
constexpr int kPairMaxDepth = 3;
constexpr int kPairEntries = 84;
__host__ __device__ constexpr int pair_table_start(int depth) { return ((1 << (2 * depth)) - 4) / 3; }
static_assert(pair_table_start(kPairMaxDepth + 1) == kPairEntries, "pair table size");
// Static shared memory of gemv_kernel: the f32 table, the pair table (one copy per bank), s_term
// (up to 8 tokens) and two ints.
constexpr int kGemvStaticSmemBytes = 512 * 4 + kPairEntries * 32 * 4 + 8 * 4 + 2 * 4;

// xt: [k, kTokens]; workspace: [n, kTokens]; counters: [C].
struct GemvParams : DecodeParams {
  float table[512];  // T_B[q] of the layer's quantizer in f32 (entry 2^B - 2 + q), from the host
  std::uint32_t pair_table[kPairEntries];  // (T_B[q], T_B[q']) as f16 pairs, depths 1..3 (host)
};

// Dynamic shared memory: xs [kTokens][units_per_split * 32] f32, then the block's unit offsets
// (i32) and depths (u8).
__host__ __device__ constexpr int gemv_smem_bytes(int tokens, int units_per_split) {
  return tokens * units_per_split * 32 * 4 + units_per_split * (4 + 1);
}

struct RowWords {
  std::uint32_t a[8], b[8];
};

// Words of one unit for the thread's two rows (up to 8 each; only `depth` are loaded). `unit_a`
// points at row a's first word of the unit; word row i lies i * rows_c words further and row b's
// words `b_off` words after row a's. Plain pointer steps: the per-plane 64-bit index arithmetic and
// row checks this replaced were ~14 instructions per plane (1.4 per weight at 4 bits, ncu/SASS of
// session 5), a fifth of the kernel's instructions in an issue-bound loop.
__device__ __forceinline__ void load_row_words(RowWords& w, const std::uint32_t* __restrict__ unit_a,
                                               int depth, int rows_c, int b_off) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (i < depth) {
      w.a[i] = __ldg(unit_a);
      w.b[i] = __ldg(unit_a + b_off);
      unit_a += rows_c;
    }
  }
}

// One position j of a unit for both rows: T_B[q] from the table, times xs of every token.
template <int kTokens, int kB, int kJ>
__device__ __forceinline__ void gemv_position(float (&acc_a)[kTokens], float (&acc_b)[kTokens],
                                              const std::uint32_t (&wa)[kB],
                                              const std::uint32_t (&wb)[kB],
                                              const unsigned char* table_b, const float (&x)[kTokens]) {
  const float ta = *reinterpret_cast<const float*>(table_b + unit_index_x4<kB, kJ>(wa));
  const float tb = *reinterpret_cast<const float*>(table_b + unit_index_x4<kB, kJ>(wb));
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    acc_a[t] = fmaf(ta, x[t], acc_a[t]);
    acc_b[t] = fmaf(tb, x[t], acc_b[t]);
  }
}

// Four positions 4g .. 4g+3: xs of every token as one 16-byte broadcast load.
template <int kTokens, int kB, int kG>
__device__ __forceinline__ void gemv_quad(float (&acc_a)[kTokens], float (&acc_b)[kTokens],
                                          const std::uint32_t (&wa)[kB],
                                          const std::uint32_t (&wb)[kB],
                                          const unsigned char* table_b, const float* xs_unit,
                                          int xs_stride) {
  float4 v[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
    v[t] = *reinterpret_cast<const float4*>(xs_unit + t * xs_stride + 4 * kG);
  float x0[kTokens], x1[kTokens], x2[kTokens], x3[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    x0[t] = v[t].x;
    x1[t] = v[t].y;
    x2[t] = v[t].z;
    x3[t] = v[t].w;
  }
  gemv_position<kTokens, kB, 4 * kG>(acc_a, acc_b, wa, wb, table_b, x0);
  gemv_position<kTokens, kB, 4 * kG + 1>(acc_a, acc_b, wa, wb, table_b, x1);
  gemv_position<kTokens, kB, 4 * kG + 2>(acc_a, acc_b, wa, wb, table_b, x2);
  gemv_position<kTokens, kB, 4 * kG + 3>(acc_a, acc_b, wa, wb, table_b, x3);
}

// Positions 4g .. 4g+3 of a depth <= 3 unit: two lookups per row, each one 32-bit load of a pair
// of f16 table values from the lane's own bank (unit_pair_offset, decode.cuh): half the
// shared-memory wavefronts of one lookup per index (the L1 data pipe is ~86% busy at 1 token,
// bench/KERNELS.md session 6).
template <int kTokens, int kB, int kG>
__device__ __forceinline__ void gemv_pair_quad(float (&acc_a)[kTokens], float (&acc_b)[kTokens],
                                               const std::uint32_t (&wa)[kB],
                                               const std::uint32_t (&wb)[kB],
                                               const unsigned char* pairs_b, std::uint32_t lane4,
                                               const float* xs_unit, int xs_stride) {
  float4 v[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t)
    v[t] = *reinterpret_cast<const float4*>(xs_unit + t * xs_stride + 4 * kG);
  const float2 a0 = __half22float2(*reinterpret_cast<const __half2*>(
      pairs_b + unit_pair_offset<kB, 4 * kG>(wa, lane4)));
  const float2 a1 = __half22float2(*reinterpret_cast<const __half2*>(
      pairs_b + unit_pair_offset<kB, 4 * kG + 2>(wa, lane4)));
  const float2 b0 = __half22float2(*reinterpret_cast<const __half2*>(
      pairs_b + unit_pair_offset<kB, 4 * kG>(wb, lane4)));
  const float2 b1 = __half22float2(*reinterpret_cast<const __half2*>(
      pairs_b + unit_pair_offset<kB, 4 * kG + 2>(wb, lane4)));
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    acc_a[t] = fmaf(a0.x, v[t].x, acc_a[t]);
    acc_a[t] = fmaf(a0.y, v[t].y, acc_a[t]);
    acc_a[t] = fmaf(a1.x, v[t].z, acc_a[t]);
    acc_a[t] = fmaf(a1.y, v[t].w, acc_a[t]);
    acc_b[t] = fmaf(b0.x, v[t].x, acc_b[t]);
    acc_b[t] = fmaf(b0.y, v[t].y, acc_b[t]);
    acc_b[t] = fmaf(b1.x, v[t].z, acc_b[t]);
    acc_b[t] = fmaf(b1.y, v[t].w, acc_b[t]);
  }
}

template <int kTokens, int kB, int... kGs>
__device__ __forceinline__ void gemv_unit(float (&acc_a)[kTokens], float (&acc_b)[kTokens],
                                          const RowWords& w, const unsigned char* table,
                                          const unsigned char* pairs, std::uint32_t lane4,
                                          const float* xs_unit, int xs_stride,
                                          std::integer_sequence<int, kGs...>) {
  std::uint32_t wa[kB], wb[kB];
#pragma unroll
  for (int i = 0; i < kB; ++i) {
    wa[i] = w.a[i];
    wb[i] = w.b[i];
  }
  if constexpr (kB <= kPairMaxDepth) {
    const unsigned char* pairs_b = pairs + 128 * pair_table_start(kB);
    (gemv_pair_quad<kTokens, kB, kGs>(acc_a, acc_b, wa, wb, pairs_b, lane4, xs_unit, xs_stride), ...);
  } else {
    const unsigned char* table_b = table + 4 * ((1 << kB) - 2);
    (gemv_quad<kTokens, kB, kGs>(acc_a, acc_b, wa, wb, table_b, xs_unit, xs_stride), ...);
  }
}

// The depth switch: one fully unrolled decode per bit width (0-bit units are loc only, already
// in the chunk term).
template <int kTokens>
__device__ __forceinline__ void gemv_unit_any(int depth, float (&acc_a)[kTokens],
                                              float (&acc_b)[kTokens], const RowWords& w,
                                              const unsigned char* table,
                                              const unsigned char* pairs, std::uint32_t lane4,
                                              const float* xs_unit, int xs_stride) {
  constexpr auto kQuads = std::make_integer_sequence<int, 8>{};
  switch (depth) {
    case 1: gemv_unit<kTokens, 1>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 2: gemv_unit<kTokens, 2>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 3: gemv_unit<kTokens, 3>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 4: gemv_unit<kTokens, 4>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 5: gemv_unit<kTokens, 5>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 6: gemv_unit<kTokens, 6>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 7: gemv_unit<kTokens, 7>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    case 8: gemv_unit<kTokens, 8>(acc_a, acc_b, w, table, pairs, lane4, xs_unit, xs_stride, kQuads); break;
    default: break;
  }
}

// Bytes of its words a block asks into L2 before the previous kernel ends (pdl.cuh): the first
// wave (8 blocks per SM) asks ~8.6 MB on an H100, about what HBM delivers in the ~3 us the
// previous kernel's last blocks take to drain.
constexpr int kGemvPrefetchBytes = 8 * 1024;

template <typename Act, int kTokens>
__global__ void __launch_bounds__(128) gemv_kernel(const GemvParams p) {
  // The table at a fixed shared address: the lookup is one LDS [offset + constant].
  __shared__ __align__(16) float s_table[512];
  __shared__ std::uint32_t s_pairs[kPairEntries * 32];  // pair table, one copy per bank
  __shared__ float s_term[kTokens];
  __shared__ int s_max_depth, s_is_last;
  extern __shared__ __align__(16) unsigned char smem[];
  const int xs_stride = p.units_per_split * 32;
  float* xs = reinterpret_cast<float*>(smem);
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(xs + kTokens * xs_stride);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units_per_split);

  const int chunk = blockIdx.x;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int u_begin = blockIdx.y * p.units_per_split;
  const int n_units = min(p.units, u_begin + p.units_per_split) - u_begin;
  const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31;
  const int m = p.m;

  const std::int64_t chunk_unit0 = static_cast<std::int64_t>(chunk) * p.units + u_begin;
  // Programmatic dependent launch (pdl.cuh): this block's first words and its side information
  // are asked into L2 while the previous kernel drains.
  decode_block_wait_previous(p, chunk, u_begin, n_units, tid, kGemvPrefetchBytes);

  if (tid == 0) s_max_depth = 0;
  if (tid < kTokens) s_term[tid] = 0.f;
  __syncthreads();
  load_block_units(p.depth, p.unit_offset, chunk_unit0, n_units, tid, nthreads, lane, s_depth,
                   s_offset, &s_max_depth);

  // Stage xs and the chunk term for the block's positions.
  const Act* xt = static_cast<const Act*>(p.xt);
  const int npos = n_units * 32;
  const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * p.padded_k + 32LL * u_begin;
  float term[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) term[t] = 0.f;
  // Four positions per thread per pass, their loads issued before any use (the x gather
  // depends on col_perm: two dependent global loads per position, the block's startup latency).
  // A position's tokens are one run of xt (transpose_x.cuh), zero beyond m.
  constexpr int kStage = 4;
  for (int base = tid; base < npos; base += kStage * nthreads) {
    const PositionMeta<kStage> meta = load_position_meta<kStage>(p, pos0, base, nthreads, npos);
    float xv[kStage][kTokens];
#pragma unroll
    for (int j = 0; j < kStage; ++j) {
      if (meta.col[j] < p.k) {
        load_token_column<Act, kTokens>(xt + static_cast<std::int64_t>(meta.col[j]) * kTokens,
                                        xv[j]);
      } else {
#pragma unroll
        for (int t = 0; t < kTokens; ++t) xv[j][t] = 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < kStage; ++j) {
      const int i = base + j * nthreads;
      if (i >= npos) break;
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        xs[t * xs_stride + i] = meta.scale[j] * xv[j][t];
        term[t] = fmaf(meta.loc[j], xv[j][t], term[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) term[t] += __shfl_xor_sync(0xffffffffu, term[t], o);
    if (lane == 0 && t < m) atomicAdd(&s_term[t], term[t]);
  }
  __syncthreads();  // s_max_depth, depths, offsets, xs
  // Only the tables of the depths this block uses: depths 1..D are entries [0, 2^(D+1) - 2).
  for (int i = tid; i < (2 << s_max_depth) - 2; i += nthreads) s_table[i] = p.table[i];
  // Entry e of the pair table for lane l at word 32 e + l; a warp's 32 words share e (broadcast).
  const int pair_words = 32 * pair_table_start(min(s_max_depth, kPairMaxDepth) + 1);
  for (int i = tid; i < pair_words; i += nthreads) s_pairs[i] = p.pair_table[i >> 5];
  __syncthreads();

  const int row_a = tid, row_b = tid + nthreads;
  float acc_a[kTokens], acc_b[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) acc_a[t] = acc_b[t] = 0.f;
  const unsigned char* table = reinterpret_cast<const unsigned char*>(s_table);
  const unsigned char* pairs = reinterpret_cast<const unsigned char*>(s_pairs);
  const std::uint32_t lane4 = 4u * static_cast<std::uint32_t>(lane);
  if (row_a < rows_c) {
    // Row b of a short last chunk may lie beyond it: it then re-reads row a's words (in bounds),
    // and its sums are never written.
    const int b_off = row_b < rows_c ? row_b - row_a : 0;
    const std::uint32_t* qa = p.qweight + row_a;
    // One unit ahead. Two ahead at 1 token (16 more registers: 8 blocks per SM instead of 10)
    // was slower (49152x12288: 151.8 -> 153.6 us at 4 bpw, 141.6 -> 147.3 at 3; session 5).
    RowWords cur, next;
    if (n_units > 0) load_row_words(cur, qa + s_offset[0], s_depth[0], rows_c, b_off);
    for (int u = 0; u < n_units; ++u) {
      if (u + 1 < n_units) load_row_words(next, qa + s_offset[u + 1], s_depth[u + 1], rows_c, b_off);
      gemv_unit_any<kTokens>(s_depth[u], acc_a, acc_b, cur, table, pairs, lane4, xs + 32 * u,
                             xs_stride);
      cur = next;
    }
  }

  // The block's words are read: the next kernel may be scheduled as blocks leave (pdl.cuh; a
  // trigger at the start let several kernels' waiting blocks pile up on a small layer and made
  // 4096x4096 27% slower on an H200, RESULTS.md session 14).
  pdl_allow_next();
  Act* y = static_cast<Act*>(p.y);
  const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * p.gs;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = h == 0 ? row_a : row_b;
    if (row >= rows_c) continue;
    const std::int64_t prow = perm_row0 + row;
    if (p.splits == 1) {
      const int orig = p.row_perm[prow];
      const float b = p.bias ? __half2float(p.bias[orig]) : 0.f;
#pragma unroll
      for (int t = 0; t < kTokens; ++t)
        if (t < m)
          y[static_cast<std::int64_t>(t) * p.n + orig] =
              from_float<Act>((h == 0 ? acc_a[t] : acc_b[t]) + s_term[t] + b);
    } else {
#pragma unroll
      for (int t = 0; t < kTokens; ++t)
        if (t < m) atomicAdd(p.workspace + prow * kTokens + t, (h == 0 ? acc_a[t] : acc_b[t]) + s_term[t]);
    }
  }
  if (p.splits == 1 || p.defer_output) return;

  write_k_split_rows<Act>(p.counters + chunk, p.splits, &s_is_last, p.workspace, kTokens, rows_c, m,
                          perm_row0, p.row_perm, p.bias, y, p.n, tid, nthreads, p.fence_all);
}

}  // namespace radio::cuda
