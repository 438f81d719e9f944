// y = x @ W.T + b for a packed layer and 1..16 tokens on sm_90: one persistent block per SM streams
// a contiguous range of the layer's words through shared memory with the TMA, while its warps
// decode them into mma.m16n8k16 A fragments (pair tables, as fmma_kernel.cuh) and other warps
// stage x * scale.
//
// Why (bench/KERNELS.md sessions 7-9): the per-block kernels (gemv, fmma) pay per block for their
// set-up (43.5 KB of tables, the x gathers, the first loads) and per unit for address arithmetic
// and barriers; at 1 token the best of them reads HBM at ~70% of its bandwidth. Here:
// - the words of the units of consecutive chunks are one contiguous range of qweight
//   (docs/format.md: chunk c's words follow chunk c-1's; unit u+1's follow unit u's), so a block
//   takes a range of (chunk, unit) in flattened order and one thread streams its word rows (256
//   words of one unit depth plane) with cp.async.bulk.tensor into a ring of stages, no matter
//   where units begin or end; the consumers find a unit from the prefix sums of depths that the
//   stagers write per piece;
// - the TMA writes each 128-byte line of 32 rows with the 128-byte swizzle, 16-byte quad q of
//   word row i at quad q ^ (i % 8): the 4 lanes t of one row group read 4 different word rows
//   of the same quad without bank conflicts;
// - the tables are filled once per block (one block per SM, grid = SMs);
// - x * scale and the chunk term sum(loc * x) are staged per piece of <= 32 units by separate
//   warps into a ring of buffers, ahead of the decode.
//
// Roles (warp index):
//   [0, 8 kGroups)        consumers: warp w decodes rows 32 (w % 8) .. +31 of the chunk, for
//                         the units v with v % kGroups == w / 8 of each piece (lane g: rows
//                         4g .. 4g+3 as two m16 tiles, as in fmma_warp_rings.patch);
//   8 kGroups             producer: lane 0 issues the TMA copies;
//   8 kGroups + 1 ..      stagers, 4 x buf_stagers warps: warp s stages the pieces k with
//                         k % 4 == s % 4 (half s / 4 of each piece's batches).
// Synchronisation by mbarriers: stage_full (TMA bytes), stage_empty (one arrival per consumer
// warp), xs_full (the threads of the buffer's stager warps), xs_empty (one per consumer warp).
//
// Output: every block adds its f32 partial sums of a chunk to the zeroed workspace [n][m] and the
// count of the chunk's units it covered to the chunk's counter; the block that completes the count
// writes the chunk's rows of y in original row order (+ bias) and resets the counter.
//
// Requirements (select_config.cu, ops.cu): sm_90, rows_per_group = 256 and N % 256 == 0 (every
// chunk 256 rows: one word row = 1 KB, the tensor map's row), qweight 16-byte aligned, m <= 16
// (token tiles of 8: kTT = 1 or 2; pieces of 32 / kTT units keep xs within 4 x 17 KB).
#pragma once

#include <cuda.h>  // CUtensorMap (the type only; nothing links libcuda)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "decode.cuh"
#include "fmma_kernel.cuh"  // kFmmaPairEntries, fill_a, fmma_single_pair, pair_table_start,
                            // load_x_fragments
#include "pdl.cuh"
#include "stream_consume.cuh"
#include "stream_h2.cuh"
#include "stream_layout.cuh"
#include "tma.cuh"
#include "transpose_x.cuh"

namespace radio::cuda {

template <int kR>
__device__ __forceinline__ std::uint32_t quad_word(const uint4& v) {
  if constexpr (kR == 0) return v.x;
  else if constexpr (kR == 1) return v.y;
  else if constexpr (kR == 2) return v.z;
  else return v.w;
}

// A register from window pair (j, j+1) of a depth <= 4 row: the pair's 2B bits masked in place
// (LOP3), then shifted to bit 7 and added to the lane's table base in one LEA / LEA.HI, and one
// shared load. `lane_base`: shared-window address of the depth's table plus 4 * lane (entry e of
// lane l at word 32 e + l). fmma_pair's generic-pointer form cost an extra add per lookup here.
template <int kB, int kJ>
__device__ __forceinline__ std::uint32_t stream_pair(const Window<kB>& w, std::uint32_t lane_base) {
  constexpr int kLo = kJ * kB;
  constexpr std::uint32_t kMask = ((1u << (2 * kB)) - 1u) << kLo;
  std::uint32_t v;
  if constexpr (kLo < 7) {
    // In PTX so that the AND stays before the shift (C++ gets rewritten to shift-then-AND, which
    // costs a separate add).
    asm volatile(
        "{\n .reg .b32 t;\n and.b32 t, %1, %2;\n shl.b32 t, t, %3;\n add.u32 t, t, %4;\n"
        " ld.shared.b32 %0, [t];\n}\n"
        : "=r"(v)
        : "r"(w.lo), "n"(kMask), "n"(7 - kLo), "r"(lane_base));
  } else {
    const std::uint32_t addr = lane_base + ((w.lo & kMask) >> (kLo - 7));
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  }
  return v;
}

// The 8 A registers (two k-steps) of one m16 tile: mma row g is quad word kRa of the lane's word
// rows, mma row g + 8 quad word kRb.
template <int kB, int kRa, int kRb>
__device__ __forceinline__ void stream_tile_a(std::uint32_t (&a0)[4], std::uint32_t (&a1)[4],
                                              const uint4 (&w)[lane_words(kB)], int offset,
                                              std::uint32_t pairs_lane,
                                              const std::uint32_t* table) {
  constexpr int kW = lane_words(kB);
  std::uint32_t wa[kW], wb[kW];
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    wa[i] = quad_word<kRa>(w[i]);
    wb[i] = quad_word<kRb>(w[i]);
  }
  const Window<kB> ra = Window<kB>::make(wa, offset), rb = Window<kB>::make(wb, offset);
  if constexpr (kB <= kFmmaPairMaxDepth) {
    const std::uint32_t pb = pairs_lane + 128 * pair_table_start(kB);
    fill_a<kB>(a0, a1, ra, rb, [&](const Window<kB>& w, auto j) {
      return stream_pair<kB, decltype(j)::value>(w, pb);
    });
  } else {
    const std::uint32_t* tb = table + ((1 << kB) - 2);
    fill_a<kB>(a0, a1, ra, rb, [&](const Window<kB>& w, auto j) {
      return fmma_single_pair<kB, decltype(j)::value>(w, tb);
    });
  }
}

// One unit of depth kB whose first word row sits at row `ring_row` of the slab's ring, for the
// warp's 32 rows: the lane's word rows (one 16-byte load each: its 4 rows), two m16 tiles of 2
// mma each. Word rows past the unit's last only fill window bits >= 8B (never read); they stay
// inside the ring.
template <typename M, int kB, int kTT>
__device__ __forceinline__ void stream_unit(float (&acc)[kTT][2][4],
                                            const unsigned char* slab_ring, int ring_row, int g,
                                            int t4, std::uint32_t pairs_lane,
                                            const std::uint32_t* table, const uint4 (&xv)[kTT]) {
  constexpr int kW = lane_words(kB);
  const int first = (8 * t4 * kB) >> 5, offset = (8 * t4 * kB) & 31;
  uint4 w[kW];
#pragma unroll
  for (int k = 0; k < kW; ++k) {
    int r = ring_row + first + k;
    r -= r >= kStreamRingRows ? kStreamRingRows : 0;
    w[k] = *reinterpret_cast<const uint4*>(slab_ring + r * 128 + 16 * ((g ^ r) & 7));
  }
  std::uint32_t a0[4], a1[4];
  stream_tile_a<kB, 0, 1>(a0, a1, w, offset, pairs_lane, table);
#pragma unroll
  for (int nt = 0; nt < kTT; ++nt) {
    mma_16816<M>(acc[nt][0], a0, xv[nt].x, xv[nt].y);
    mma_16816<M>(acc[nt][0], a1, xv[nt].z, xv[nt].w);
  }
  stream_tile_a<kB, 2, 3>(a0, a1, w, offset, pairs_lane, table);
#pragma unroll
  for (int nt = 0; nt < kTT; ++nt) {
    mma_16816<M>(acc[nt][1], a0, xv[nt].x, xv[nt].y);
    mma_16816<M>(acc[nt][1], a1, xv[nt].z, xv[nt].w);
  }
}

template <typename M, int kTT>
__device__ __forceinline__ void stream_unit_any(int depth, float (&acc)[kTT][2][4],
                                                const unsigned char* slab_ring, int ring_row, int g,
                                                int t4, std::uint32_t pairs_lane,
                                                const std::uint32_t* table,
                                                const uint4 (&xv)[kTT]) {
#define RADIO_STREAM_CASE(B) \
  case B: stream_unit<M, B, kTT>(acc, slab_ring, ring_row, g, t4, pairs_lane, table, xv); break;
  switch (depth) {
    RADIO_STREAM_CASE(1)
    RADIO_STREAM_CASE(2)
    RADIO_STREAM_CASE(3)
    RADIO_STREAM_CASE(4)
    RADIO_STREAM_CASE(5)
    RADIO_STREAM_CASE(6)
    RADIO_STREAM_CASE(7)
    RADIO_STREAM_CASE(8)
    default: break;
  }
#undef RADIO_STREAM_CASE
}

// The mma decoder of the consumer walk (stream_consume.cuh): warp = one 32-row slab of every
// unit of its group, lane (g, t4) rows 4g .. 4g+3 as two m16 tiles, kTT token tiles of 8.
template <typename M, int kTT>
struct StreamMmaDecoder {
  float acc[kTT][2][4];
  const unsigned char* slab_ring;
  const std::uint32_t* table;
  float* workspace;
  std::uint32_t pairs_lane;
  int g, t4, slab, m;

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int nt = 0; nt < kTT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][h][e] = 0.f;
  }
  __device__ __forceinline__ void add_term(const float* terms, int stagers) {
#pragma unroll
    for (int nt = 0; nt < kTT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tok = 8 * nt + 2 * t4 + e;
        if (tok >= m) continue;
        float term = terms[tok];
        if (stagers == 2) term += terms[16 + tok];
        acc[nt][0][e] += term;
        acc[nt][0][e + 2] += term;
        acc[nt][1][e] += term;
        acc[nt][1][e + 2] += term;
      }
  }
  __device__ __forceinline__ void unit(int depth, int v, int ring_row, const std::uint16_t* xs) {
    uint4 xv[kTT];
    load_x_fragments<kTT>(xv, xs, stream_xs_stride(kTT), v, g, t4, m);
    stream_unit_any<M, kTT>(depth, acc, slab_ring, ring_row, g, t4, pairs_lane, table, xv);
  }
  __device__ __forceinline__ void flush(int chunk) {
#pragma unroll
    for (int nt = 0; nt < kTT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int tok = 8 * nt + 2 * t4 + (e & 1);
          if (tok >= m) continue;
          const int row = 32 * slab + 4 * g + 2 * h + (e >> 1);
          atomicAdd(workspace + (static_cast<std::int64_t>(chunk) * kStreamRows + row) * m + tok,
                    acc[nt][h][e]);
        }
  }
};

// Bytes of its words a block asks into L2 before the previous kernel ends (pdl.cuh): one
// persistent block per SM, ~4.3 MB on an H100 (the ring's first 4 of 12 stages).
constexpr int kStreamPrefetchBytes = 32 * 1024;

// kH2: one token, f16, the half2 consumers of stream_h2.cuh (kTT = 1; the same roles and ring,
// the tensor map without swizzle).
template <typename Act, int kGroups, int kTT, bool kH2 = false>
__global__ void __launch_bounds__(stream_threads(kGroups, kStreamMaxBufStagers), 1)
    stream_kernel(const __grid_constant__ StreamParams p, const __grid_constant__ CUtensorMap tmap) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using M = typename MmaTypeOf<Act>::type;
  constexpr int kConsumers = kStreamSlabs * kGroups;  // warps
  constexpr int kTokens = 8 * kTT;
  constexpr int kPiece = stream_piece_units(kTT);
  constexpr int kXsStride = stream_xs_stride(kTT);
  extern __shared__ unsigned char smem_raw[];
  // Aligned by an offset added to smem_raw itself: a pointer rebuilt from an integer loses the
  // shared address space, and every access became a generic 64-bit load (SASS LD.E, not LDS).
  unsigned char* smem = smem_raw + ((1024u - (smem_addr(smem_raw) & 1023u)) & 1023u);
  __shared__ uint4 s_pairs[kFmmaPairEntries * 8];
  __shared__ std::uint32_t s_table[512];
  const int m = p.m;
  unsigned char* ring = smem;
  std::uint16_t* s_xs = reinterpret_cast<std::uint16_t*>(ring + kStreamStages * kStreamStageBytes);
  const int xs_buf_halves = m * kXsStride;
  // Per unit of a staged piece: depth | (word rows of the piece's units before it) << 8, so a
  // consumer warp visits only its own group's units and still knows where each one starts.
  std::uint32_t* s_unit =
      reinterpret_cast<std::uint32_t*>(s_xs + kStreamXsBufs * xs_buf_halves);
  float* s_term = reinterpret_cast<float*>(s_unit + kStreamXsBufs * kStreamMaxPieceUnits);
  int* s_flag = reinterpret_cast<int*>(s_term + kStreamXsBufs * kStreamMaxBufStagers * 16);
  std::uint64_t* bars = reinterpret_cast<std::uint64_t*>(s_flag + 4);
  std::uint64_t* stage_full = bars;
  std::uint64_t* stage_empty = stage_full + kStreamStages;
  std::uint64_t* xs_full = stage_empty + kStreamStages;
  std::uint64_t* xs_empty = xs_full + kStreamXsBufs;

  // The next kernel may be scheduled as this one's blocks leave (pdl.cuh): here at once, as a
  // block takes most of an SM's shared memory no block of the next stream kernel can wait beside
  // it (gemv and hgemv, smaller, allow it only once their words are read).
  pdl_allow_next();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int units = p.units;
  const std::int64_t total = static_cast<std::int64_t>(p.n / kStreamRows) * units;

  if (tid == 0) {
    for (int s = 0; s < kStreamStages; ++s) {
      mbar_init(&stage_full[s], 1);
      mbar_init(&stage_empty[s], kConsumers);
    }
    for (int b = 0; b < kStreamXsBufs; ++b) {
      mbar_init(&xs_full[b], 32 * p.buf_stagers);  // the buffer's stager warps
      mbar_init(&xs_empty[b], kConsumers);
    }
    mbar_init_fence();
  }
  // Tables (all depths: the block serves many units).
  for (int i = tid; i < kFmmaPairEntries * 8; i += blockDim.x) {
    const std::uint32_t v = p.pair_table[i >> 3];
    s_pairs[i] = make_uint4(v, v, v, v);
  }
  for (int i = tid; i < 512; i += blockDim.x) s_table[i] = p.table[i];
  __syncthreads();
  // Programmatic dependent launch (pdl.cuh): barriers and tables are ready; the block's first
  // words and its first four pieces' side information are asked into L2 while the previous
  // kernel drains, then every role waits for it (the producer too: the TMA would read words a
  // previous kernel may still write). The prefetch goes to the block's equal share of the units
  // (exact without quantiles, near the cut with them) and, with quantiles, to the table entries
  // the block's cut reads after the wait. (Session 17's first version also read the table here,
  // to place the prefetch at the cut: two dependent reads before every block's wait. It and
  // this version were both 1-3 us slower than equal units on the 7B shapes at 16 tokens, so the
  // table is used on larger blocks only: select_config.cu, RESULTS.md session 17.)
  if (tid == 0) {
    const std::int64_t guess = total * blockIdx.x / gridDim.x;
    const std::int64_t left = total * (blockIdx.x + 1) / gridDim.x - guess;
    if (left > 0) {
      // flattened (chunk, unit) u is positions [32 u, 32 u + 32) of the [C, Kp] side arrays
      const int first_units = static_cast<int>(left < 4 * kStreamMaxPieceUnits
                                                   ? left : 4 * kStreamMaxPieceUnits);
      prefetch_block_inputs(p, guess, first_units, 32 * guess, 32 * first_units,
                            kStreamPrefetchBytes);
    }
    if (p.work_quantiles != nullptr) {
      const std::int64_t steps = p.work_quantile_count - 1;
      const std::int64_t j0 = steps * blockIdx.x / gridDim.x;
      const std::int64_t j1 = steps * (blockIdx.x + 1) / gridDim.x + 1;
      prefetch_l2(p.work_quantiles, 4LL * p.work_quantile_count, (4 * j0) & ~15LL,
                  4 * (j1 - j0) + 32);
    }
  }
  pdl_wait_previous();
  // (the roles read the range from shared memory where they use it: StreamConsumerSmem::range;
  // kept in registers through the walk it made the 16-token builds spill)
  volatile int* s_range = s_flag + 2;
  if (tid == 0) {
    const FlatRange range = block_range(p, total, blockIdx.x, gridDim.x);
    s_range[0] = static_cast<int>(range.begin);
    s_range[1] = static_cast<int>(range.end);
  }
  __syncthreads();
  const std::int64_t begin = s_range[0], end = s_range[1];
  if (begin >= end) return;

  // The stream: word rows [row_begin, row_end) of qweight, in stages of 8 rows from row_begin.
  const std::int64_t row_begin = p.unit_offset[begin] / kStreamRows;
  const std::int64_t row_end =
      (p.unit_offset[end - 1] + static_cast<std::int64_t>(p.depth[end - 1]) * kStreamRows) /
      kStreamRows;
  const int n_stages = static_cast<int>((row_end - row_begin + kStreamStageRows - 1) /
                                        kStreamStageRows);

  if (warp == kConsumers) {  // producer
    if (lane == 0) {
      const std::uint64_t policy = l2_evict_first_policy();
      for (int j = 0; j < n_stages; ++j) {
        const int s = j % kStreamStages, use = j / kStreamStages;
        if (use > 0) mbar_wait_sleep<500>(&stage_empty[s], (use - 1) & 1);
        mbar_arrive_expect_tx(&stage_full[s], kStreamStageBytes);
        const int y = static_cast<int>(row_begin + static_cast<std::int64_t>(j) * kStreamStageRows);
#pragma unroll
        for (int slab = 0; slab < kStreamSlabs; ++slab)
          tma_load_2d(ring + slab * (kStreamStages * 1024) + s * 1024, &tmap, 32 * slab, y,
                      &stage_full[s], policy);
      }
    }
    return;
  }

  if (warp > kConsumers) {  // stagers: warp sw stages pieces k with k % kStreamXsBufs == sw % 4
    // A warp per piece, not four warps on each: a piece's loads are two dependent gathers
    // (col_perm, then x), and with the four warps sharing one piece at a time the block waited on
    // those round trips piece after piece (session 10: ~16 us per piece, twice the decode's time).
    // Lane = column of a unit, so every load and store of a batch is coalesced along the piece.
    const int sw = warp - kConsumers - 1;
    const int my_buf = sw % kStreamXsBufs, half = sw / kStreamXsBufs;  // half < p.buf_stagers
    const Act* xt = static_cast<const Act*>(p.xt);
    // Units per batch (a batch's loads are all in flight at once): 8 at one token; with more, the
    // x runs of a batch take 16 registers per lane (kMultiBatch * run bytes = 64; 32 spilled in
    // the 16-consumer-warp build, whose 672 threads get 80 registers each).
    constexpr int kRunVecs = (kTokens * static_cast<int>(sizeof(Act)) + 15) / 16;
    constexpr int kMultiBatch = kRunVecs >= 4 ? 1 : 4 / kRunVecs;
    static_assert(kPiece % 8 == 0 && kPiece % kMultiBatch == 0, "a piece is whole batches");
    int k = 0;
    for (std::int64_t flat = s_range[0]; flat < s_range[1]; ++k) {
      const StreamPiece<kPiece> pc(flat, s_range[1], units);
      flat += pc.n;
      if (k % kStreamXsBufs != my_buf) continue;
      const int buf = my_buf, use = k / kStreamXsBufs;
      if (use > 0) mbar_wait_sleep<2000>(&xs_empty[buf], (use - 1) & 1);
      std::uint16_t* xs = s_xs + buf * xs_buf_halves;
      const std::int64_t pos0 = static_cast<std::int64_t>(pc.chunk) * p.padded_k + 32 * pc.unit0;
      float term[kTokens];
#pragma unroll
      for (int t = 0; t < kTokens; ++t) term[t] = 0.f;
      auto stage_batches = [&](auto batch_c, auto single_c) {
        constexpr int kBatch = decltype(batch_c)::value;
        constexpr bool kSingle = decltype(single_c)::value;
        constexpr int kT = kSingle ? 1 : kTokens;
        for (int v0 = half * kBatch; v0 < pc.n; v0 += p.buf_stagers * kBatch) {
          int col[kBatch];
          float sc[kBatch], lc[kBatch];
#pragma unroll
          for (int r = 0; r < kBatch; ++r) {
            const int i = 32 * (v0 + r) + lane;
            col[r] = p.k;
            sc[r] = lc[r] = 0.f;
            if (v0 + r < pc.n) {  // uniform across the warp
              col[r] = p.col_perm[pos0 + i];
              sc[r] = __half2float(p.scale[pos0 + i]);
              lc[r] = __half2float(p.loc[pos0 + i]);
            }
          }
          // Every x load of the batch in flight at once: padding columns (col >= k) read column
          // 0 and are zeroed after the load.
          union MultiRun {
            uint4 v[kRunVecs];
            Act a[kRunVecs * 16 / sizeof(Act)];
          };
          struct SingleRun {
            Act a[1];
          };
          std::conditional_t<kSingle, SingleRun, MultiRun> run[kBatch];
#pragma unroll
          for (int r = 0; r < kBatch; ++r) {
            const int c = col[r] < p.k ? col[r] : 0;
            if constexpr (kSingle) {
              run[r].a[0] = xt[c];
            } else {
#pragma unroll
              for (int i = 0; i < kRunVecs; ++i)
                run[r].v[i] = __ldg(reinterpret_cast<const uint4*>(
                                        xt + static_cast<std::int64_t>(c) * kTokens) + i);
            }
          }
#pragma unroll
          for (int r = 0; r < kBatch; ++r) {
            if (v0 + r >= pc.n) continue;
            const int i = 32 * (v0 + r) + lane;
            const bool real = col[r] < p.k;
#pragma unroll
            for (int t = 0; t < kT; ++t) {
              if (t < m) {
                const float xv = real ? to_float(run[r].a[t]) : 0.f;
                xs[t * kXsStride + i] = bits16<M>(sc[r] * xv);
                term[t] = fmaf(lc[r], xv, term[t]);
              }
            }
          }
        }
      };
      if (m == 1)
        stage_batches(std::integral_constant<int, 8>{}, std::true_type{});
      else
        stage_batches(std::integral_constant<int, kMultiBatch>{}, std::false_type{});
      if (half == 0) {  // lane = unit of the piece: its depth and the piece's rows before it
        const int d = lane < pc.n
                          ? p.depth[static_cast<std::int64_t>(pc.chunk) * units + pc.unit0 + lane]
                          : 0;
        int rows = d;  // inclusive prefix sum over the lanes
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int r = __shfl_up_sync(0xffffffffu, rows, o);
          if (lane >= o) rows += r;
        }
        if (lane < pc.n)
          s_unit[buf * kStreamMaxPieceUnits + lane] =
              static_cast<std::uint32_t>(d) | (static_cast<std::uint32_t>(rows - d) << 8);
      }
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) term[t] += __shfl_xor_sync(0xffffffffu, term[t], o);
      }
      if (lane == 0) {
#pragma unroll
        for (int t = 0; t < kTokens; ++t)
          s_term[(buf * kStreamMaxBufStagers + half) * 16 + t] = term[t];
      }
      mbar_arrive(&xs_full[buf]);
    }
    return;
  }

  // Consumers.
  const StreamConsumerSmem sm{s_unit, s_xs, xs_buf_halves, s_term, s_flag,
                              stage_full, stage_empty, xs_full, xs_empty, s_range};
  if constexpr (kH2) {
    static_assert(std::is_same_v<Act, __half> && kTT == 1, "half2 consumers: f16, one token");
    // warp w: rows 32 (w % 4) + lane and + 128; groups of 4 warps take interleaved units
    constexpr int kH2Groups = kConsumers / kStreamH2SlabB;
    const int pair = warp % kStreamH2SlabB, group = warp / kStreamH2SlabB;
    StreamH2Decoder dec;
    dec.row_a = 32 * pair + lane;
    dec.lane_ring = ring + pair * kStreamSlabRingBytes + 4 * lane;
    dec.pairs = reinterpret_cast<const unsigned char*>(s_pairs);
    dec.table = reinterpret_cast<const unsigned char*>(s_table);
    dec.workspace = p.workspace;
    dec.lane4 = 4u * static_cast<std::uint32_t>(lane);
    stream_consume<Act, kPiece, kH2Groups>(dec, p, sm, n_stages, group, lane, tid,
                                           32 * kConsumers);
    return;
  }
  const int slab = warp % kStreamSlabs, group = warp / kStreamSlabs;
  StreamMmaDecoder<M, kTT> dec;
  dec.g = lane >> 2;
  dec.t4 = lane & 3;
  dec.slab = slab;
  dec.m = m;
  dec.pairs_lane = smem_addr(s_pairs) + 4u * static_cast<std::uint32_t>(lane);
  dec.table = s_table;
  dec.slab_ring = ring + slab * (kStreamStages * 1024);
  dec.workspace = p.workspace;
  stream_consume<Act, kPiece, kGroups>(dec, p, sm, n_stages, group, lane, tid,
                                       32 * kConsumers);
#else
  __trap();  // sm_90 only: select_config.cu never picks this kernel elsewhere
#endif
}

}  // namespace radio::cuda
