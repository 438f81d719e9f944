// The half2 one-token decoder of the stream kernel (stream_kernel.cuh, template parameter kH2):
// f16 activations, one token, the persistent TMA stream feeding hgemv's decode.
//
// Why. hgemv (hgemv_kernel.cuh) decodes at 4 instructions per two weights, but its per-block
// structure (each block writes 45.5 KB of tables and stages its x before its first word; each
// thread keeps one unit of words in flight in registers; blocks in ~2 waves) streams HBM at only
// 0.73-0.77 of the read bandwidth even with the decode replaced by an XOR (bench/KERNELS.md
// session 12). The stream kernel has the opposite profile: one block per SM writes its tables
// once, the TMA keeps 96 KB of words in flight per SM, separate warps stage x; at one token its
// mma decode (7 of 8 token columns wasted) was the bound (session 11). Here its consumers decode
// with hgemv's half2 pair lookups instead.
//
// Mapping. The producer loads the word rows without swizzle (SWIZZLE_NONE tensor map): word r of
// slab s's stage lies at byte 4 r of a 128-byte line, so the 32 lanes reading their rows' words
// of one word row touch 32 different banks. Consumer warp w: rows 32 (w % 4) + lane (slab w % 4)
// and 128 more (slab w % 4 + 4), as hgemv's rows t and t + 128; group w / 4 takes units v with
// v % groups == w / 4 of every piece. A unit's depth d word rows are d loads per row at
// immediate offsets from one address (unless the unit wraps around the ring's end), then
// hgemv_unit's pair lookups and HFMA2, f16 sums inside the unit, f32 across units.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "hgemv_kernel.cuh"  // RowWords, hgemv_unit
#include "stream_layout.cuh"

namespace radio::cuda {

// Slabs a consumer warp's second row lies after its first (rows r and r + 128).
constexpr int kStreamH2SlabB = 4;
constexpr int kStreamSlabRingBytes = kStreamStages * kStreamStageRows * 128;  // one slab's ring

// Unit of depth kB whose first word row is ring row `row`: the lane's words of both rows (row b
// one kStreamH2SlabB slabs further), then the half2 decode.
template <int kB>
__device__ __forceinline__ void stream_h2_unit(float& acc_a, float& acc_b,
                                               const unsigned char* lane_ring, int row,
                                               const unsigned char* pairs,
                                               const unsigned char* table, std::uint32_t lane4,
                                               const __half2* xs_unit) {
  constexpr int kB_off = kStreamH2SlabB * kStreamSlabRingBytes;
  RowWords w;
  if (row + kB <= kStreamRingRows) {  // the common case: kB rows in a row, immediate offsets
    const unsigned char* base = lane_ring + row * 128;
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      w.a[i] = *reinterpret_cast<const std::uint32_t*>(base + i * 128);
      w.b[i] = *reinterpret_cast<const std::uint32_t*>(base + i * 128 + kB_off);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kB; ++i) {
      int r = row + i;
      r -= r >= kStreamRingRows ? kStreamRingRows : 0;
      const unsigned char* base = lane_ring + r * 128;
      w.a[i] = *reinterpret_cast<const std::uint32_t*>(base);
      w.b[i] = *reinterpret_cast<const std::uint32_t*>(base + kB_off);
    }
  }
  hgemv_unit<kB>(acc_a, acc_b, w, pairs, table, lane4, xs_unit,
                 std::make_integer_sequence<int, 4>{});
}

// The decoder (stream_consume.cuh's interface) of one consumer warp.
struct StreamH2Decoder {
  float acc_a, acc_b;
  const unsigned char* lane_ring;  // slab ring of row a + 4 * lane
  const unsigned char* pairs;      // pair tables (one copy per bank)
  const unsigned char* table;      // single table (u32 per entry, f16 in the low half)
  float* workspace;
  std::uint32_t lane4;
  int row_a;  // row in the chunk (row b = row_a + 128)

  __device__ __forceinline__ void reset() { acc_a = acc_b = 0.f; }
  __device__ __forceinline__ void add_term(const float* terms, int stagers) {
    float term = terms[0];
    if (stagers == 2) term += terms[16];
    acc_a += term;
    acc_b += term;
  }
  __device__ __forceinline__ void unit(int depth, int v, int ring_row, const std::uint16_t* xs) {
    const __half2* xs_unit = reinterpret_cast<const __half2*>(xs) + 16 * v;
#define RADIO_STREAM_H2_CASE(B)                                                                \
  case B:                                                                                      \
    stream_h2_unit<B>(acc_a, acc_b, lane_ring, ring_row, pairs, table, lane4, xs_unit);        \
    break;
    switch (depth) {
      RADIO_STREAM_H2_CASE(1)
      RADIO_STREAM_H2_CASE(2)
      RADIO_STREAM_H2_CASE(3)
      RADIO_STREAM_H2_CASE(4)
      RADIO_STREAM_H2_CASE(5)
      RADIO_STREAM_H2_CASE(6)
      RADIO_STREAM_H2_CASE(7)
      RADIO_STREAM_H2_CASE(8)
      default: break;
    }
#undef RADIO_STREAM_H2_CASE
  }
  __device__ __forceinline__ void flush(int chunk) {
    float* ws = workspace + static_cast<std::int64_t>(chunk) * kStreamRows + row_a;
    atomicAdd(ws, acc_a);
    atomicAdd(ws + kStreamH2SlabB * 32, acc_b);
  }
};

}  // namespace radio::cuda
