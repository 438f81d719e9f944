// W[N, K] (original row and column order, in f16 / bf16 / f32) from a packed layer: the first
// half of the large-batch path (the second is a cuBLAS matmul through torch).
//
// Two kernels; select_config.cu picks one.
// - dequant_rows_kernel (default): a block owns a tile of R rows of one chunk and ALL its units.
//   A warp decodes a unit at a time (lane = position) for the tile's rows and scatters the values
//   into a shared-memory copy of the rows in ORIGINAL column order (col_perm); then the block
//   writes each row to W[row_perm[r]] with 16-byte stores. The column scatter happens in shared
//   memory, and global memory sees whole rows written once. Needs R * K * sizeof(Out) bytes of
//   shared memory (select_config.cu: K up to 48K f16 with R = 1).
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
constexpr int kMaxTileRows = 8;  // dequant_rows_kernel: rows per block at most

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
// scale, loc) are read once per block and coalesced. For each row of the tile, lanes 0..B-1 load
// the row's B words of the unit (one request), and lane j takes the two words holding its index
// with shuffles (bits [jB, jB + B) span at most two words).

// Units a warp has in flight: the loads of kUnitsInFlight units (per-position tensors and the
// words of every row) are issued before any is decoded; one unit at a time left the warp waiting
// on a chain of dependent loads per unit.
constexpr int kUnitsInFlight = 4;

template <typename Out>
__global__ void __launch_bounds__(kDequantThreads) dequant_rows_kernel(const DequantParams p) {
  __shared__ float table[512];
  extern __shared__ __align__(16) unsigned char smem[];
  // [tile_rows][k] values, then the chunk's unit offsets (i32) and depths (u8)
  Out* tile = reinterpret_cast<Out*>(smem);
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(
      smem + (static_cast<std::int64_t>(p.tile_rows) * p.k * sizeof(Out) + 15) / 16 * 16);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units);
  const int chunk = blockIdx.x / p.row_blocks_per_chunk;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int r0 = (blockIdx.x % p.row_blocks_per_chunk) * p.tile_rows;
  if (r0 >= rows_c) return;  // whole block, before any barrier
  const int rows = min(p.tile_rows, rows_c - r0);
  const std::int64_t cu0 = static_cast<std::int64_t>(chunk) * p.units;
  for (int i = threadIdx.x; i < 510; i += blockDim.x) table[i] = p.lut[i];
  for (int u = threadIdx.x; u < p.units; u += blockDim.x) {
    s_offset[u] = p.unit_offset[cu0 + u];
    s_depth[u] = p.depth[cu0 + u];
  }
  __syncthreads();

  const std::int64_t chunk_pos0 = static_cast<std::int64_t>(chunk) * p.padded_k;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int u0 = warp * kUnitsInFlight; u0 < p.units; u0 += warps * kUnitsInFlight) {
    int col[kUnitsInFlight], depth[kUnitsInFlight];
    float scale[kUnitsInFlight], loc[kUnitsInFlight];
    std::uint32_t mine[kUnitsInFlight][kMaxTileRows];
#pragma unroll
    for (int i = 0; i < kUnitsInFlight; ++i) {
      const int u = min(u0 + i, p.units - 1);
      const std::int64_t pos = chunk_pos0 + 32 * u + lane;
      depth[i] = u0 + i < p.units ? s_depth[u] : 0;
      col[i] = u0 + i < p.units ? p.col_perm[pos] : p.k;
      scale[i] = __half2float(p.scale[pos]);
      loc[i] = __half2float(p.loc[pos]);
      const std::int64_t word0 = static_cast<std::int64_t>(s_offset[u]) + r0;
#pragma unroll
      for (int r = 0; r < kMaxTileRows; ++r)
        mine[i][r] = (r < rows && lane < depth[i])
                         ? __ldg(p.qweight + word0 + static_cast<std::int64_t>(lane) * rows_c + r)
                         : 0u;
    }
#pragma unroll
    for (int i = 0; i < kUnitsInFlight; ++i) {
      const int bit = lane * depth[i];
      const int lo_word = bit >> 5, shift = bit & 31;
      const std::uint32_t mask = (1u << depth[i]) - 1u;
      const float* table_b = table + max((1 << depth[i]) - 2, 0);  // depth 0: never read
#pragma unroll
      for (int r = 0; r < kMaxTileRows; ++r) {
        if (r >= rows) break;
        const std::uint32_t lo = __shfl_sync(0xffffffffu, mine[i][r], lo_word);
        const std::uint32_t hi = __shfl_sync(0xffffffffu, mine[i][r], min(lo_word + 1, 31));
        const std::uint32_t q = __funnelshift_r(lo, hi, shift) & mask;
        const float v = depth[i] > 0 ? fmaf(scale[i], table_b[q], loc[i]) : loc[i];
        if (col[i] < p.k) tile[static_cast<std::int64_t>(r) * p.k + col[i]] = from_float<Out>(v);
      }
    }
  }
  __syncthreads();

  // Whole rows out: 16-byte stores when the row length allows, else element by element.
  Out* out = static_cast<Out*>(p.out);
  const std::int64_t row_bytes = static_cast<std::int64_t>(p.k) * sizeof(Out);
  const bool vec = row_bytes % 16 == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  for (int r = 0; r < rows; ++r) {
    const std::int64_t orig = p.row_perm[static_cast<std::int64_t>(chunk) * p.gs + r0 + r];
    Out* dst = out + orig * p.k;
    const Out* src = tile + static_cast<std::int64_t>(r) * p.k;
    if (vec) {
      const int n16 = static_cast<int>(row_bytes / 16);
      for (int i = threadIdx.x; i < n16; i += blockDim.x)
        reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
    } else {
      for (int i = threadIdx.x; i < p.k; i += blockDim.x) dst[i] = src[i];
    }
  }
}

}  // namespace radio::cuda
