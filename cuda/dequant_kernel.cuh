// W[N, K] (original row and column order, in f16 / bf16 / f32) from a packed layer: the first
// half of the large-batch path (the second is a cuBLAS matmul through torch).
//
// One thread per chunk row, so a warp reads 32 consecutive words of each unit word-row
// (coalesced). A block owns up to 256 rows of a chunk and a range of units; the depth switch picks
// a fully unrolled decode of the unit's 32 indices. The writes go to W[row_perm[r], col_perm[c, p]]:
// scattered by the two permutations (the price of keeping the format's order out of the matmul).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "common.cuh"

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
  float lut[512];  // laplace T_B[q] of all depths in f32 (entry 2^B - 2 + q), from the host
};

constexpr int kDequantThreads = 256;

// Index j (0..31) of a row's unit: bits [jB, jB + B) of its B words.
template <int kB, int kJ>
__device__ __forceinline__ std::uint32_t unit_index(const std::uint32_t (&w)[kB]) {
  constexpr int kLo = kJ * kB, kWord = kLo / 32, kShift = kLo % 32;
  constexpr std::uint32_t kMask = (1u << kB) - 1u;
  if constexpr (kShift + kB <= 32) {
    return (w[kWord] >> kShift) & kMask;
  } else {
    return ((w[kWord] >> kShift) | (w[kWord + 1] << (32 - kShift))) & kMask;
  }
}

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

}  // namespace radio::cuda
