// W[N, K] (original row and column order, in f16 / bf16 / f32) from a packed layer: the first
// half of the large-batch path (the second is a cuBLAS matmul through torch).
//
// Two kernels; select_config.cu picks one.
// - dequant_rows_kernel (default): a block owns a tile of R rows of one chunk and ALL its units.
//   A warp decodes a unit at a time (lane = position) for the tile's rows and scatters the values
//   into a shared-memory copy of the rows in ORIGINAL column order (col_perm); then the block
//   writes each row to W[row_perm[r]] with 16-byte stores. The column scatter happens in shared
//   memory, and global memory sees whole rows written once. Needs R * K * sizeof(Out) bytes of
//   shared memory (select_config.cu: K up to 48K f16 with R = 1). R is a template parameter.
// - dequant_kernel (fallback for wider layers): one thread per chunk row, a block per range of
//   units, writes W[row_perm[r], col_perm[c, p]] directly: scattered 2-byte stores, ~30x slower
//   (bench/KERNELS.md).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "common.cuh"
#include "decode.cuh"

namespace radio::cuda {

struct DequantParams {
  const std::uint32_t* qweight;
  const __half* scale;
  const __half* loc;
  const std::uint8_t* depth;
  const std::int32_t* unit_offset;
  const std::int32_t* row_perm;
  const std::int32_t* col_perm;
  void* out;  // [n, k]
  int n, k, gs, units, padded_k;
  int rows_per_block, row_blocks_per_chunk, units_per_split;
  int tile_rows;   // dequant_rows_kernel: rows per block (R)
  float lut[512];  // T_B[q] of the layer's quantizer, all depths, f32 (entry 2^B - 2 + q), host
};

constexpr int kDequantThreads = 256;
constexpr int kMaxTileRows = 8;  // dequant_rows_kernel: rows per block at most (1, 2, 4 or 8)

template <typename Out, Quant kQ, int kB, int kJ>
__device__ __forceinline__ void store_index(const std::uint32_t (&w)[kB], const float* lut_b,
                                            const DequantParams& p, std::int64_t pos0,
                                            std::int64_t out_row) {
  const std::uint32_t q = unit_index<kB, kJ>(w);
  const std::int64_t ci = pos0 + kJ;
  const int col = p.col_perm[ci];
  if (col >= p.k) return;
  float tv;
  if constexpr (kQ == Quant::kLaplace) {
    tv = lut_b[q];
  } else {
    tv = static_cast<float>(q) - 0.5f * static_cast<float>((1 << kB) - 1);
  }
  const float v = __half2float(p.loc[ci]) + __half2float(p.scale[ci]) * tv;
  static_cast<Out*>(p.out)[out_row + col] = from_float<Out>(v);
}

template <typename Out, Quant kQ, int kB, int... kJs>
__device__ __forceinline__ void store_unit(const std::uint32_t (&w)[kB], const float* lut_b,
                                           const DequantParams& p, std::int64_t pos0,
                                           std::int64_t out_row,
                                           std::integer_sequence<int, kJs...>) {
  (store_index<Out, kQ, kB, kJs>(w, lut_b, p, pos0, out_row), ...);
}

template <typename Out, Quant kQ, int kB>
__device__ __forceinline__ void dequant_unit(const DequantParams& p, std::int64_t unit_word,
                                             int rows_c, int row, std::int64_t pos0,
                                             std::int64_t out_row, const float* lut) {
  std::uint32_t w[kB];
#pragma unroll
  for (int b = 0; b < kB; ++b) w[b] = __ldg(p.qweight + unit_word + static_cast<std::int64_t>(b) * rows_c + row);
  store_unit<Out, kQ, kB>(w, lut + ((1 << kB) - 2), p, pos0, out_row,
                          std::make_integer_sequence<int, 32>{});
}

template <typename Out, Quant kQ>
__global__ void __launch_bounds__(kDequantThreads) dequant_kernel(const DequantParams p) {
  __shared__ float lut[510];
  if constexpr (kQ == Quant::kLaplace) {
    for (int i = threadIdx.x; i < 510; i += blockDim.x) lut[i] = p.lut[i];
    __syncthreads();
  }
  const int chunk = blockIdx.y / p.row_blocks_per_chunk;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int row = (blockIdx.y % p.row_blocks_per_chunk) * p.rows_per_block + threadIdx.x;
  if (static_cast<int>(threadIdx.x) >= p.rows_per_block || row >= rows_c) return;
  const int u_begin = blockIdx.x * p.units_per_split;
  const int u_end = min(p.units, u_begin + p.units_per_split);
  const std::int64_t out_row =
      static_cast<std::int64_t>(p.row_perm[static_cast<std::int64_t>(chunk) * p.gs + row]) * p.k;
  for (int u = u_begin; u < u_end; ++u) {
    const std::int64_t cu = static_cast<std::int64_t>(chunk) * p.units + u;
    const int depth = p.depth[cu];
    const std::int64_t word = p.unit_offset[cu];
    const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * p.padded_k + 32 * u;
    switch (depth) {
      case 0:
        for (int j = 0; j < 32; ++j) {
          const int col = p.col_perm[pos0 + j];
          if (col < p.k) static_cast<Out*>(p.out)[out_row + col] = from_float<Out>(__half2float(p.loc[pos0 + j]));
        }
        break;
      case 1: dequant_unit<Out, kQ, 1>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 2: dequant_unit<Out, kQ, 2>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 3: dequant_unit<Out, kQ, 3>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 4: dequant_unit<Out, kQ, 4>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 5: dequant_unit<Out, kQ, 5>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 6: dequant_unit<Out, kQ, 6>(p, word, rows_c, row, pos0, out_row, lut); break;
      case 7: dequant_unit<Out, kQ, 7>(p, word, rows_c, row, pos0, out_row, lut); break;
      default: dequant_unit<Out, kQ, 8>(p, word, rows_c, row, pos0, out_row, lut); break;
    }
  }
}

// --- dequant_rows_kernel ----------------------------------------------------------------------
// A warp walks units; lane j owns position j of the unit, so the per-position tensors (col_perm,
// scale, loc) are read once per block and coalesced. Lane j's index of row r sits in bits
// [jB, jB + B) of the row's B words, i.e. in words lo = jB / 32 and lo + 1; word w of the tile's
// kR rows is kR consecutive u32 (the unit's words are [B][rows_c]), so a lane fetches its two
// words of every row with two kR-wide loads (L1 broadcasts: the 32 lanes touch B words per row).
// v1 of this kernel had lanes 0..B-1 load one word per row and spread them with two shuffles
// per row and weight, all rows up to kMaxTileRows predicated: ~59 instructions per weight and
// issue-bound at ~2 ms for 49152x12288 (ncu, bench/KERNELS.md); this form needs ~12.

// Units a warp decodes per step: their loads are all issued before the first decode, so the
// warp waits on one chain of dependent loads (unit offset -> words) per step, not per unit. The
// kernel is latency-bound (v2 with 2 units per step took as long as v1 on the H100), so as many
// as fit 80 registers without spills (3 blocks of 256 threads per SM): 2 * kR words per unit.
template <int kR>
constexpr int units_in_flight() { return kR >= 8 ? 2 : kR >= 4 ? 3 : 5; }

// kR consecutive u32 from `src` into `dst`: one vector load when `vec` (16 / 8-byte aligned and
// all kR rows inside the chunk), else `rows` scalar loads (the rest zero).
template <int kR>
__device__ __forceinline__ void load_row_words(const std::uint32_t* src, bool vec, int rows,
                                               std::uint32_t (&dst)[kR]) {
  if constexpr (kR == 8) {
    if (vec) {
      const uint4 a = __ldg(reinterpret_cast<const uint4*>(src));
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(src) + 1);
      dst[0] = a.x; dst[1] = a.y; dst[2] = a.z; dst[3] = a.w;
      dst[4] = b.x; dst[5] = b.y; dst[6] = b.z; dst[7] = b.w;
      return;
    }
  } else if constexpr (kR == 4) {
    if (vec) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
      dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
      return;
    }
  } else if constexpr (kR == 2) {
    if (vec) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
      dst[0] = v.x; dst[1] = v.y;
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < kR; ++r) dst[r] = r < rows ? __ldg(src + r) : 0u;
}

// Threads of a dequant_rows_kernel block: 1024 for 8-row tiles (one block of up to ~200 KB of
// shared memory per SM still has 32 warps), else kDequantThreads at 3 blocks per SM.
template <int kR>
constexpr int dequant_rows_threads() { return kR >= 8 ? 1024 : kDequantThreads; }

// kR rows per block (1, 2, 4 or 8; select_config.cu). The per-position tensors (col_perm, scale,
// loc: 8 bytes per position) are read once per block, i.e. 8 / kR bytes per weight from L2: at
// kR = 2 that was ~2.4 GB for 49152x12288, the kernel's largest traffic (ncu: L2 hit 92%). The
// word loads are kR wide for kR <= 4 (two 16-byte loads for 8).
template <typename Out, int kR>
__global__ void __launch_bounds__(dequant_rows_threads<kR>(), kR >= 8 ? 1 : 3)
    dequant_rows_kernel(const DequantParams p) {
  __shared__ float table[512];
  extern __shared__ __align__(16) unsigned char smem[];
  // [kR][k] values, then the chunk's unit offsets (i32) and depths (u8)
  Out* tile = reinterpret_cast<Out*>(smem);
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(
      smem + (static_cast<std::int64_t>(kR) * p.k * sizeof(Out) + 15) / 16 * 16);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units);
  const int chunk = blockIdx.x / p.row_blocks_per_chunk;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int r0 = (blockIdx.x % p.row_blocks_per_chunk) * kR;
  if (r0 >= rows_c) return;  // whole block, before any barrier
  const int rows = min(kR, rows_c - r0);
  const std::int64_t cu0 = static_cast<std::int64_t>(chunk) * p.units;
  for (int i = threadIdx.x; i < 510; i += blockDim.x) table[i] = p.lut[i];
  for (int u = threadIdx.x; u < p.units; u += blockDim.x) {
    s_offset[u] = p.unit_offset[cu0 + u];
    s_depth[u] = p.depth[cu0 + u];
  }
  __syncthreads();

  // Vector loads need every row present and 4*kR-byte alignment of each word row's start: the
  // unit offsets are multiples of rows_c (format: B*rows_c words per unit), so rows_c, r0 and
  // the base pointer decide it once per block.
  const bool vec = rows == kR && rows_c % kR == 0 &&
                   reinterpret_cast<std::uintptr_t>(p.qweight) % (4 * (kR > 4 ? 4 : kR)) == 0;
  const std::uint32_t* qrows = p.qweight + r0;
  const std::int64_t chunk_pos0 = static_cast<std::int64_t>(chunk) * p.padded_k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  constexpr int kUnitsInFlight = units_in_flight<kR>();
  for (int u0 = warp * kUnitsInFlight; u0 < p.units; u0 += warps * kUnitsInFlight) {
    int col[kUnitsInFlight], depth[kUnitsInFlight], shift[kUnitsInFlight];
    float scale[kUnitsInFlight], loc[kUnitsInFlight];
    std::uint32_t lo[kUnitsInFlight][kR], hi[kUnitsInFlight][kR];
#pragma unroll
    for (int i = 0; i < kUnitsInFlight; ++i) {
      const bool real = u0 + i < p.units;
      const int u = real ? u0 + i : p.units - 1;
      const std::int64_t pos = chunk_pos0 + 32 * u + lane;
      depth[i] = real ? s_depth[u] : 0;
      col[i] = real ? p.col_perm[pos] : p.k;
      scale[i] = __half2float(p.scale[pos]);
      loc[i] = __half2float(p.loc[pos]);
      const int bit = lane * depth[i];
      shift[i] = bit & 31;
      // The second word only matters when the index spans two words; then it is < depth.
      const int lo_word = bit >> 5, hi_word = min(lo_word + 1, max(depth[i] - 1, 0));
      const std::uint32_t* unit = qrows + s_offset[u];
      if (depth[i] > 0) {
        load_row_words<kR>(unit + static_cast<std::int64_t>(lo_word) * rows_c, vec, rows, lo[i]);
        load_row_words<kR>(unit + static_cast<std::int64_t>(hi_word) * rows_c, vec, rows, hi[i]);
      }
    }
#pragma unroll
    for (int i = 0; i < kUnitsInFlight; ++i) {
      if (col[i] >= p.k) continue;  // padding position (or no unit)
      Out* dst = tile + col[i];
      if (depth[i] == 0) {
        const Out v = from_float<Out>(loc[i]);
#pragma unroll
        for (int r = 0; r < kR; ++r)
          if (r < rows) dst[static_cast<std::int64_t>(r) * p.k] = v;
        continue;
      }
      const std::uint32_t mask = (1u << depth[i]) - 1u;
      const float* table_b = table + ((1 << depth[i]) - 2);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        if (r >= rows) break;
        const std::uint32_t q = __funnelshift_r(lo[i][r], hi[i][r], shift[i]) & mask;
        dst[static_cast<std::int64_t>(r) * p.k] = from_float<Out>(fmaf(scale[i], table_b[q], loc[i]));
      }
    }
  }
  __syncthreads();

  // Whole rows out: 16-byte stores when the row length allows, else element by element.
  Out* out = static_cast<Out*>(p.out);
  const std::int64_t row_bytes = static_cast<std::int64_t>(p.k) * sizeof(Out);
  const bool vec_out = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  for (int r = 0; r < rows; ++r) {
    const std::int64_t orig = p.row_perm[static_cast<std::int64_t>(chunk) * p.gs + r0 + r];
    Out* dst = out + orig * p.k;
    const Out* src = tile + static_cast<std::int64_t>(r) * p.k;
    if (vec_out) {
      const int n16 = static_cast<int>(row_bytes / 16);
      for (int i = threadIdx.x; i < n16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
      for (int i = threadIdx.x; i < p.k; i += blockDim.x) dst[i] = src[i];
    }
  }
}

}  // namespace radio::cuda
