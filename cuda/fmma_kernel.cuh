// y = x @ W.T + b for a packed layer and 1..32 tokens (by default 3..32, select_config.cu): the
// unit words streamed into shared memory by cp.async, decoded straight into mma.m16n8k16 A
// fragments from pair tables, f32 accumulators.
//
// Why: the gemv kernel (gemv_kernel.cuh) spends ~5.5 instructions and one shared-memory lookup per
// weight and row, and each more token adds an FMA per weight; qmma (qmma_kernel.cuh) decodes the
// same way and then goes through shared memory. Here a lane decodes two weights with one shift,
// one LOP3 and one 32-bit lookup of a pair table that holds (T_B[q_j], T_B[q_j+1]) as the two
// 16-bit halves of an A register, and one mma does 256 multiply-adds whatever the token count up
// to 8 per token tile. Measured (bench/KERNELS.md session 7): 4 to 16 tokens cost 1.06-1.5x
// what 1 token costs, but the unit loop's overhead and the per-block set-up are half of the
// instructions (134 per warp and unit of 16 rows x 32 positions at 8 tokens), so at 1-2 tokens the
// gemv kernel stays faster.
//
// The fragment mapping is decode.cuh's: lane (g, t) holds rows g and g + 8 of its warp's 16 rows
// and the 8 consecutive unit positions 8t .. 8t+7, i.e. the bits [8tB, 8tB + 8B) of each row's
// B-word bit string (Window<B>); A register i of k-step s holds window pair 4s + (0, 0, 2, 2)[i]
// of row (g, g+8, g, g+8)[i]; the B fragments of both k-steps for token g are the 16 bytes of xs
// at positions 8t .. 8t+7.
//
// Tables (shared memory): depths 1..4 as pair tables with one copy per bank (entry e of lane l at
// word 32 e + l: a lookup never conflicts; 43.5 KB), depths 5..8 as single 16-bit values combined
// by a byte permute (a 1024-entry depth-5 pair table would need 128 KB replicated).
//
// Memory: the words of a block's units are one contiguous range per unit (B planes of rows_c
// words, docs/format.md), copied by cp.async (16-byte copies when the layer's rows allow, else
// 4-byte) into a ring of kFmmaStages unit slots of 8 planes, 3 units ahead of the decode:
// the loads in flight cost no registers. One barrier per unit. Plane stride = 8 mod 32 words: the
// 4 planes a load instruction touches at depths 1..5 fall in distinct banks.
//
// Tried and slower (bench/RESULTS.md session 7): a ring of plane slots filled with as many units
// as fit (60 KB in flight per block: 1 token 237 -> 314 us on 49152x12288 at 4 bpw), steps of 4
// units with one group and two barriers each, and a schedule computed once per block.
//
// Work split and output as in gemv_kernel.cuh: block (chunk, K split) stages xs = scale * x in the
// mma type and the chunk term sum loc * x; one split writes y in original row order, several add
// f32 partials to a zeroed workspace [n][m] and the chunk's last block writes y.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "block_units.cuh"
#include "common.cuh"
#include "decode.cuh"
#include "gemv_kernel.cuh"  // pair_table_start
#include "transpose_x.cuh"

namespace radio::cuda {

constexpr int kFmmaMaxTokTiles = 4;   // 32 tokens
constexpr int kFmmaMaxRows = 256;     // chunk rows one block covers (16 per warp)
constexpr int kFmmaSlotPlanes = 8;    // planes per unit slot (the deepest unit)
// Unit slots of the ring. 3..6 slots timed the same (272-274 us, 49152x12288, 1 token, 4 bpw);
// the slot count as a runtime value (switch over wait_group immediates, slot arithmetic) cost
// ~15% against this constant (237 us).
constexpr int kFmmaStages = 4;
constexpr int kFmmaPairMaxDepth = 4;
constexpr int kFmmaPairEntries = 340;  // 4 + 16 + 64 + 256
static_assert(pair_table_start(kFmmaPairMaxDepth + 1) == kFmmaPairEntries, "fmma pair table size");

// xt: [k][8 * tiles] (x itself at 1 token); workspace: [n][m]; counters: [C].
struct FmmaParams : DecodeParams {
  int copy16;       // 1: every unit's words are 16-byte aligned runs of whole 4-row groups
  std::uint32_t pair_table[kFmmaPairEntries];  // depths 1..4: (T_B[q], T_B[q']) in the mma type
  std::uint16_t table[512];                    // T_B[q] in the mma type (entry 2^B - 2 + q)
};

// Words between planes of a slot: rows rounded up to 32, plus 8 (bank spread, see above).
__host__ __device__ constexpr int fmma_plane_stride(int gs) { return (gs + 31) / 32 * 32 + 8; }
// xs row stride in halves: a multiple of 32 halves that is 32 mod 64, so token rows g and g + 1
// of one 16-byte fragment load fall in different halves of the 32 banks.
__host__ __device__ constexpr int fmma_xs_stride(int units_per_split) {
  return (units_per_split * 32 + 63) / 64 * 64 + 32;
}
__host__ __device__ constexpr int fmma_pair_bytes() { return kFmmaPairEntries * 32 * 4; }
// Dynamic shared memory: pair tables, single table (u32, value in the low half), the ring, xs
// [m][stride] (mma type), the block's unit offsets (i32) and depths (u8).
__host__ __device__ constexpr int fmma_smem_bytes(int gs, int m, int units_per_split) {
  return fmma_pair_bytes() + 512 * 4 + kFmmaStages * kFmmaSlotPlanes * fmma_plane_stride(gs) * 4 +
         m * fmma_xs_stride(units_per_split) * 2 + units_per_split * (4 + 1);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned s = smem_addr(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = smem_addr(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}
// A register from window pair (j, j+1) of a depth <= 4 row: one shift and one AND-OR give the
// byte offset of the lane's copy of entry q_j | q_{j+1} << B (all 8B <= 32 bits sit in `lo`).
template <int kB, int kJ>
__device__ __forceinline__ std::uint32_t fmma_pair(const Window<kB>& w, const unsigned char* pairs_b,
                                                   std::uint32_t lane4) {
  constexpr int kLo = kJ * kB;
  constexpr std::uint32_t kMask = ((1u << (2 * kB)) - 1u) << 7;
  const std::uint32_t v = kLo < 7 ? w.lo << (7 - kLo) : w.lo >> (kLo - 7);
  return *reinterpret_cast<const std::uint32_t*>(pairs_b + ((v & kMask) | lane4));
}

// The same from the single table (depths 5..8): two lookups and one byte permute.
template <int kB, int kJ>
__device__ __forceinline__ std::uint32_t fmma_single_pair(const Window<kB>& w,
                                                          const std::uint32_t* table_b) {
  const std::uint32_t lo = table_b[w.template index<kJ>()];
  const std::uint32_t hi = table_b[w.template index<kJ + 1>()];
  return __byte_perm(lo, hi, 0x5410);
}

// The 8 A registers (two k-steps) of rows ra (mma row g) and rb (row g + 8): register i of k-step
// s holds window pair 4s + (0, 0, 2, 2)[i] of row (ra, rb, ra, rb)[i] (decode.cuh).
// lookup(window, std::integral_constant<int, j>{}) returns pair j's two 16-bit values. Shared
// with stream_kernel.cuh.
template <int kB, typename Lookup>
__device__ __forceinline__ void fill_a(std::uint32_t (&a0)[4], std::uint32_t (&a1)[4],
                                       const Window<kB>& ra, const Window<kB>& rb, Lookup lookup) {
  const std::integral_constant<int, 0> j0;
  const std::integral_constant<int, 2> j2;
  const std::integral_constant<int, 4> j4;
  const std::integral_constant<int, 6> j6;
  a0[0] = lookup(ra, j0);
  a0[1] = lookup(rb, j0);
  a0[2] = lookup(ra, j2);
  a0[3] = lookup(rb, j2);
  a1[0] = lookup(ra, j4);
  a1[1] = lookup(rb, j4);
  a1[2] = lookup(ra, j6);
  a1[3] = lookup(rb, j6);
}

// The mma B fragments of unit u for the lane: token rows 8 nt + g of xs ([token][stride] halves
// of x * scale), 8 halves from position 32 u + 8 t4; rows past m read as zeros. Shared with
// stream_kernel.cuh.
template <int kTT>
__device__ __forceinline__ void load_x_fragments(uint4 (&xv)[kTT], const std::uint16_t* xs,
                                                 int stride, int u, int g, int t4, int m) {
#pragma unroll
  for (int nt = 0; nt < kTT; ++nt) {
    const int tok = 8 * nt + g;
    xv[nt] = tok < m ? *reinterpret_cast<const uint4*>(xs + tok * stride + 32 * u + 8 * t4)
                     : make_uint4(0u, 0u, 0u, 0u);
  }
}

// One unit of depth kB for the warp's 16 rows: the lane's window of rows g and g + 8 from the
// slot, 8 A registers, 2 mma per token tile.
template <typename M, int kB, int kTT>
__device__ __forceinline__ void fmma_unit(float (&acc)[kTT][4], const std::uint32_t* slot,
                                          int plane_stride, int row_a, int t4,
                                          const unsigned char* pairs, const std::uint32_t* table,
                                          std::uint32_t lane4, const uint4 (&xv)[kTT]) {
  constexpr int kW = lane_words(kB);
  const int first = (8 * t4 * kB) >> 5, offset = (8 * t4 * kB) & 31;
  std::uint32_t wa[kW], wb[kW];
  // Planes past the unit's last (stale words of the slot's earlier unit) only fill window bits
  // >= 8B, never read.
  const std::uint32_t* src = slot + first * plane_stride + row_a;
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    wa[i] = src[i * plane_stride];
    wb[i] = src[i * plane_stride + 8];
  }
  const Window<kB> ra = Window<kB>::make(wa, offset), rb = Window<kB>::make(wb, offset);
  std::uint32_t a0[4], a1[4];
  if constexpr (kB <= kFmmaPairMaxDepth) {
    const unsigned char* pb = pairs + 128 * pair_table_start(kB);
    fill_a<kB>(a0, a1, ra, rb, [&](const Window<kB>& w, auto j) {
      return fmma_pair<kB, decltype(j)::value>(w, pb, lane4);
    });
  } else {
    const std::uint32_t* tb = table + ((1 << kB) - 2);
    fill_a<kB>(a0, a1, ra, rb, [&](const Window<kB>& w, auto j) {
      return fmma_single_pair<kB, decltype(j)::value>(w, tb);
    });
  }
#pragma unroll
  for (int nt = 0; nt < kTT; ++nt) {
    mma_16816<M>(acc[nt], a0, xv[nt].x, xv[nt].y);
    mma_16816<M>(acc[nt], a1, xv[nt].z, xv[nt].w);
  }
}

template <typename M, int kTT>
__device__ __forceinline__ void fmma_unit_any(int depth, float (&acc)[kTT][4],
                                              const std::uint32_t* slot, int plane_stride,
                                              int row_a, int t4, const unsigned char* pairs,
                                              const std::uint32_t* table, std::uint32_t lane4,
                                              const uint4 (&xv)[kTT]) {
#define RADIO_FMMA_CASE(B) \
  case B: fmma_unit<M, B, kTT>(acc, slot, plane_stride, row_a, t4, pairs, table, lane4, xv); break;
  switch (depth) {
    RADIO_FMMA_CASE(1)
    RADIO_FMMA_CASE(2)
    RADIO_FMMA_CASE(3)
    RADIO_FMMA_CASE(4)
    RADIO_FMMA_CASE(5)
    RADIO_FMMA_CASE(6)
    RADIO_FMMA_CASE(7)
    RADIO_FMMA_CASE(8)
    default: break;  // 0-bit units: loc only, in the chunk term
  }
#undef RADIO_FMMA_CASE
}

// Threads per block for chunks of gs rows: one warp per 16 rows.
__host__ __device__ constexpr int fmma_threads(int gs) { return 32 * ((gs + 15) / 16); }

template <typename Act, int kTT>
__global__ void __launch_bounds__(512, 2) fmma_kernel(const FmmaParams p) {
  using M = typename MmaTypeOf<Act>::type;
  constexpr int kTokens = 8 * kTT;
  __shared__ float s_term[kTokens];
  __shared__ int s_max_depth, s_is_last;
  extern __shared__ __align__(16) unsigned char smem[];
  std::uint32_t* s_pairs = reinterpret_cast<std::uint32_t*>(smem);
  std::uint32_t* s_table = s_pairs + kFmmaPairEntries * 32;
  const int plane_stride = fmma_plane_stride(p.gs);
  std::uint32_t* ring = s_table + 512;
  const int slot_words = kFmmaSlotPlanes * plane_stride;
  std::uint16_t* xs = reinterpret_cast<std::uint16_t*>(ring + kFmmaStages * slot_words);
  const int xs_stride = fmma_xs_stride(p.units_per_split);
  const int m = p.m;  // <= kTokens (select_config.cu)
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(xs + m * xs_stride);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units_per_split);

  const int chunk = blockIdx.x;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int u_begin = blockIdx.y * p.units_per_split;
  const int n_units = min(p.units, u_begin + p.units_per_split) - u_begin;
  const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31, warp = tid >> 5;

  if (tid == 0) s_max_depth = 0;
  if (tid < kTokens) s_term[tid] = 0.f;
  __syncthreads();
  const std::int64_t chunk_unit0 = static_cast<std::int64_t>(chunk) * p.units + u_begin;
  load_block_units(p.depth, p.unit_offset, chunk_unit0, n_units, tid, nthreads, lane, s_depth,
                   s_offset, &s_max_depth);
  __syncthreads();  // depths and offsets: the first copies below read them

  // This thread's share of a unit copy. 16-byte path: 4 rows of one plane (8 planes x rows_c / 4
  // copies <= threads, one each; offsets computed once); 4-byte path: up to 4 words (8 x rows_c
  // <= 4 x threads).
  const int quads = rows_c >> 2;
  const int my_plane = p.copy16 ? tid / max(quads, 1) : 0;
  const int my_row = p.copy16 ? 4 * (tid - my_plane * quads) : 0;
  const int my_src = my_plane * rows_c + my_row, my_dst = my_plane * plane_stride + my_row;
  auto issue_unit = [&](int v, std::uint32_t* slot) {
    const int d = s_depth[v];
    if (p.copy16) {
      if (my_plane < d) cp_async16(slot + my_dst, p.qweight + (s_offset[v] + my_src));
    } else {
      const std::uint32_t* src = p.qweight + s_offset[v];
      for (int c = tid; c < d * rows_c; c += nthreads) {
        const int plane = c / rows_c, row = c - plane * rows_c;
        cp_async4(slot + plane * plane_stride + row, src + c);
      }
    }
  };
  // The first kFmmaStages - 1 units start loading before the staging below.
#pragma unroll
  for (int v = 0; v < kFmmaStages - 1; ++v) {
    if (v < n_units) issue_unit(v, ring + v * slot_words);
    cp_async_commit();
  }

  // Stage xs (mma type) and the chunk term for the block's positions and the m tokens.
  const Act* xt = static_cast<const Act*>(p.xt);
  const int npos = n_units * 32;
  const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * p.padded_k + 32LL * u_begin;
  // Token groups of 8 one after another: 32 tokens' terms and values at once spilled.
#pragma unroll
  for (int grp = 0; grp < kTT; ++grp) {
    if (8 * grp >= m) break;  // block-uniform
    float term[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) term[t] = 0.f;
    for (int i = tid; i < npos; i += nthreads) {
      const int col = p.col_perm[pos0 + i];
      const float sc = __half2float(p.scale[pos0 + i]);
      const float lc = __half2float(p.loc[pos0 + i]);
      float xv[8];
#pragma unroll
      for (int t = 0; t < 8; ++t) xv[t] = 0.f;
      if (col < p.k) {
        if (m == 1) xv[0] = to_float(xt[col]);  // one token: xt is x
        else load_token_column<Act, 8>(xt + static_cast<std::int64_t>(col) * kTokens + 8 * grp, xv);
      }
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        if (8 * grp + t < m) {
          xs[(8 * grp + t) * xs_stride + i] = bits16<M>(sc * xv[t]);
          term[t] = fmaf(lc, xv[t], term[t]);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      if (8 * grp + t >= m) break;  // block-uniform
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) term[t] += __shfl_xor_sync(0xffffffffu, term[t], o);
      if (lane == 0) atomicAdd(&s_term[8 * grp + t], term[t]);
    }
  }
  // Tables of the depths in use: pairs of depths 1..min(D, 4) (4 copies per 16-byte store),
  // singles of depths 5..D.
  const int pair_depth = min(s_max_depth, kFmmaPairMaxDepth);
  const int pair_quads = 8 * pair_table_start(pair_depth + 1);
  for (int i = tid; i < pair_quads; i += nthreads) {
    const std::uint32_t v = p.pair_table[i >> 3];
    reinterpret_cast<uint4*>(s_pairs)[i] = make_uint4(v, v, v, v);
  }
  for (int i = tid + 30; i < (2 << s_max_depth) - 2; i += nthreads) s_table[i] = p.table[i];

  // The decode loop. Lane (g, t4) of warp w: rows 16 w + g and 16 w + g + 8.
  const int g = lane >> 2, t4 = lane & 3;
  const int row_a = 16 * warp + g;
  const bool warp_rows = 16 * warp < rows_c;  // warp-uniform
  const std::uint32_t lane4 = 4u * static_cast<std::uint32_t>(lane);
  const unsigned char* pairs = reinterpret_cast<const unsigned char*>(s_pairs);
  float acc[kTT][4];
#pragma unroll
  for (int nt = 0; nt < kTT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  for (int u = 0; u < n_units; ++u) {
    cp_async_wait<kFmmaStages - 2>();  // unit u's group done; the next ones may stay in flight
    __syncthreads();  // its words (the first time also xs and the tables); unit u - 1 consumed
    const int v = u + kFmmaStages - 1;
    if (v < n_units) issue_unit(v, ring + (v % kFmmaStages) * slot_words);
    cp_async_commit();
    const int d = s_depth[u];
    if (d > 0 && warp_rows) {
      uint4 xv[kTT];
      load_x_fragments<kTT>(xv, xs, xs_stride, u, g, t4, m);
      fmma_unit_any<M, kTT>(d, acc, ring + (u % kFmmaStages) * slot_words, plane_stride, row_a,
                            t4, pairs, s_table, lane4, xv);
    }
  }
  cp_async_wait<0>();  // no copy may land after the block exits (empty groups only, by now)

  // C fragment: element e of token tile nt is row row_a + 8 (e / 2), token 8 nt + 2 t4 + e % 2.
  Act* y = static_cast<Act*>(p.y);
  const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * p.gs;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row_a + 8 * h;
    if (row >= rows_c) continue;
    const std::int64_t prow = perm_row0 + row;
    const int orig = p.splits == 1 ? p.row_perm[prow] : 0;
    const float bias = (p.splits == 1 && p.bias) ? __half2float(p.bias[orig]) : 0.f;
#pragma unroll
    for (int nt = 0; nt < kTT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int t = 8 * nt + 2 * t4 + e;
        if (t >= m) continue;
        const float v = acc[nt][2 * h + e] + s_term[t];
        if (p.splits == 1)
          y[static_cast<std::int64_t>(t) * p.n + orig] = from_float<Act>(v + bias);
        else
          atomicAdd(p.workspace + prow * m + t, v);
      }
  }
  if (p.splits == 1) return;

  write_k_split_rows<Act>(p.counters + chunk, p.splits, &s_is_last, p.workspace, m, rows_c, m,
                          perm_row0, p.row_perm, p.bias, y, p.n, tid, nthreads, p.fence_all);
}

}  // namespace radio::cuda
