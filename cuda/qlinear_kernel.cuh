// y = x @ W.T + b for a packed layer and 1..64 tokens, on the tensor cores (mma.sync m16n8k16,
// f32 accumulators), decoding W from the packed format in registers.
//
// Work split. A block owns `rows_per_block` consecutive rows of one chunk (one warp per 16 rows)
// and a range of units (a K split). It walks its units in slices: all threads stage
// xs[token][position] = scale[c, p] * x[token, col_perm[c, p]] (0 for the sentinel column) in
// shared memory in the mma type, and accumulate loc[c, p] * x[token, col_perm[c, p]] (plus, for
// the uniform quantizer, 0.5 * xs: see below) into a per-token chunk term. Then each warp walks
// the slice's units: the depth B is the same for the whole chunk, so it is warp-uniform and a
// switch picks the decode fully unrolled for that B (decode.cuh). Each lane loads the words of
// its two rows (8 rows per load instruction, 32-byte sectors fully used), decodes 16 indices into
// A fragments, and multiplies with the B fragments of every token tile (one 16-byte shared load
// per token tile and unit). 0-bit units are skipped: their weights are loc, already in the chunk
// term.
//
// Reconstruction, per weight: W = loc + scale * T_B[q]; so y = sum loc*x + sum (scale*x) * T_B[q].
// - laplace: T_B[q] is looked up in a shared-memory table (all depths, 510 entries, stored in
//   the mma type, computed on the host; depths <= 6 fit in 32 banks and never conflict).
// - uniform: T_B[q] = (q - 2^(B-1)) + 1/2. The integer part is exact in f16/bf16 by the
//   "magic number" trick (OR q into the mantissa of 1024.0 / 128.0, then subtract), and the 1/2
//   goes into the chunk term as 0.5 * sum over positions with B > 0 of xs.
//
// Output: with one K split the block writes y[token, row_perm[row]] (+ bias) directly in x's
// dtype. With several, each block adds its f32 partial into a workspace in permuted-row order
// (float2 atomics), and the last block of a row range (a counter per row range) converts it,
// adds the bias and writes y in original row order; no further pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "decode.cuh"

namespace radio::cuda {

constexpr int kLutEntries = 510;  // sum over B = 1..8 of 2^B; table of depth B starts at 2^B - 2
constexpr int kLutBytes = 1024;   // 510 16-bit entries, padded to keep what follows 16-aligned

struct QlinearParams {
  const void* x;                      // [m, k] in Act
  const std::uint32_t* qweight;       // [W]
  const __half* scale;                // [C, Kp]
  const __half* loc;                  // [C, Kp]
  const std::uint8_t* depth;          // [C, U]
  const std::int32_t* unit_offset;    // [C, U]
  const std::int32_t* row_perm;       // [n]
  const std::int32_t* col_perm;       // [C, Kp]
  const __half* bias;                 // [n] or null
  void* y;                            // [m, n] in Act
  float* workspace;                   // [n, 8 * kTokTiles] f32, zeroed (splits > 1 only)
  int* counters;                      // [gridDim.x], zeroed (splits > 1 only)
  int m, n, k, gs;
  int units, padded_k;
  int rows_per_block, row_blocks_per_chunk;
  int slice_units, units_per_split, splits;
  int tok_groups;  // blocks of 8 * kTokTiles tokens along blockIdx.x (large batches; 1 split)
  // laplace T_B[q] of all depths as 16-bit patterns of the mma type (entry 2^B - 2 + q), filled
  // on the host (ops.cu): kernel parameters, copied to shared memory by every block.
  std::uint16_t lut[512];
};

// Shared-memory row stride of xs, in elements: slice positions + 32, so that the 8 lanes of one
// 16-byte access phase (tokens g, g+1 x 4 lanes) fall on 32 distinct banks.
__host__ __device__ constexpr int xs_stride(int slice_units) { return slice_units * 32 + 32; }


__host__ __device__ constexpr int qlinear_smem_bytes(int tok_tiles, int slice_units,
                                                    int units_per_split) {
  return 8 * tok_tiles * xs_stride(slice_units) * 2  // xs
         + kLutBytes                                 // lut
         + 8 * tok_tiles * 4                         // chunk term per token
         + units_per_split * (4 + 1);                // unit offsets and depths of the block
}

// One weight pair (positions i, i+1 of a lane window) as a 32-bit register of two mma values.
template <typename M, Quant kQ, int kB>
__device__ __forceinline__ std::uint32_t convert_pair(std::uint32_t q0, std::uint32_t q1,
                                                      const std::uint16_t* lut_b) {
  if constexpr (kQ == Quant::kLaplace) {
    return static_cast<std::uint32_t>(lut_b[q0]) | (static_cast<std::uint32_t>(lut_b[q1]) << 16);
  } else if constexpr (std::is_same_v<M, __half>) {
    // f16(1024 + q) has bits 0x6400 + q for q < 1024.
    constexpr std::uint32_t kBias = (0x6400u + (1u << (kB - 1))) * 0x10001u;
    return sub2<__half>(q0 | (q1 << 16) | 0x64006400u, kBias);
  } else if constexpr (kB <= 7) {
    // bf16(128 + q) has bits 0x4300 + q for q < 128.
    constexpr std::uint32_t kBias = (0x4300u + (1u << (kB - 1))) * 0x10001u;
    return sub2<__nv_bfloat16>(q0 | (q1 << 16) | 0x43004300u, kBias);
  } else {
    // 8-bit uniform in bf16: q - 128 in [-128, 127] is exact in bf16; go through f32.
    const __nv_bfloat162 v = __floats2bfloat162_rn(static_cast<float>(static_cast<int>(q0) - 128),
                                                   static_cast<float>(static_cast<int>(q1) - 128));
    return *reinterpret_cast<const std::uint32_t*>(&v);
  }
}

// A fragment of k-step kS for lane windows of rows g (wa) and g + 8 (wb). See decode.cuh.
template <typename M, Quant kQ, int kB, int kS>
__device__ __forceinline__ void a_fragment(std::uint32_t (&a)[4], const Window<kB>& wa,
                                           const Window<kB>& wb, const std::uint16_t* lut_b) {
  a[0] = convert_pair<M, kQ, kB>(wa.template index<4 * kS>(), wa.template index<4 * kS + 1>(), lut_b);
  a[1] = convert_pair<M, kQ, kB>(wb.template index<4 * kS>(), wb.template index<4 * kS + 1>(), lut_b);
  a[2] = convert_pair<M, kQ, kB>(wa.template index<4 * kS + 2>(), wa.template index<4 * kS + 3>(),
                                 lut_b);
  a[3] = convert_pair<M, kQ, kB>(wb.template index<4 * kS + 2>(), wb.template index<4 * kS + 3>(),
                                 lut_b);
}

// Blocks of 512 threads per SM the register budget must allow (64 registers for 2): 2 up to 16
// tokens (32 warps, each with prefetch_units() units of loads in flight), 1 beyond (the
// accumulators and B fragments need the registers; checked with -Xptxas -v: no spills).
template <int kTokTiles>
constexpr int min_blocks_per_sm() { return kTokTiles <= 2 ? 2 : 1; }

// Units whose words a warp has in flight ahead of the one it decodes.
template <int kTokTiles>
constexpr int prefetch_units() { return 2; }

// Words of one unit for the lane's two rows: lane_words(B) words from the lane's first word,
// clamped to the unit (decode.cuh); the count is warp-uniform, so the unused loads are
// predicated off, not divergent.
struct UnitWords {
  std::uint32_t a[3], b[3];
};

// lane_words(B) for B = 1..8 (1 1 2 1 2 2 3 2), two bits per depth, for a run-time depth.
constexpr int kLaneWordsPacked = 0b10'11'10'10'01'10'01'01'00;
constexpr bool lane_words_packed_ok() {
  for (int d = 1; d <= 8; ++d)
    if (((kLaneWordsPacked >> (2 * d)) & 3) != lane_words(d)) return false;
  return true;
}
static_assert(lane_words_packed_ok(), "kLaneWordsPacked must match lane_words()");

__device__ __forceinline__ void load_unit_words(UnitWords& w, const std::uint32_t* __restrict__ qw,
                                                std::int64_t unit_word, int depth, int rows_c,
                                                int row_a, int t) {
  if (depth == 0) return;
  const int n_words = (kLaneWordsPacked >> (2 * depth)) & 3;
  const int first = (8 * t * depth) >> 5;
  const int row_b = row_a + 8;
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    if (i < n_words) {
      const int word = min(first + i, depth - 1);
      const std::uint32_t* src = qw + unit_word + static_cast<std::int64_t>(word) * rows_c;
      w.a[i] = row_a < rows_c ? __ldg(src + row_a) : 0u;
      w.b[i] = row_b < rows_c ? __ldg(src + row_b) : 0u;
    }
  }
}

// One unit of depth kB for the warp's 16 rows: decode the loaded words, multiply into acc.
template <typename M, Quant kQ, int kTokTiles, int kB>
__device__ __forceinline__ void unit_mma(float (&acc)[kTokTiles][4],
                                         const std::uint32_t (&bfrag)[kTokTiles][4],
                                         const UnitWords& w, int t, const std::uint16_t* lut) {
  constexpr int kW = lane_words(kB);
  std::uint32_t wa[kW], wb[kW];
#pragma unroll
  for (int i = 0; i < kW; ++i) {
    wa[i] = w.a[i];
    wb[i] = w.b[i];
  }
  const int shift = lane_bit_offset(kB, t);
  const Window<kB> win_a = Window<kB>::make(wa, shift);
  const Window<kB> win_b = Window<kB>::make(wb, shift);
  const std::uint16_t* lut_b = lut + ((1 << kB) - 2);
  std::uint32_t a[4];
  a_fragment<M, kQ, kB, 0>(a, win_a, win_b, lut_b);
#pragma unroll
  for (int nt = 0; nt < kTokTiles; ++nt) mma_16816<M>(acc[nt], a, bfrag[nt][0], bfrag[nt][1]);
  a_fragment<M, kQ, kB, 1>(a, win_a, win_b, lut_b);
#pragma unroll
  for (int nt = 0; nt < kTokTiles; ++nt) mma_16816<M>(acc[nt], a, bfrag[nt][2], bfrag[nt][3]);
}

template <typename M, Quant kQ, int kTokTiles>
__device__ __forceinline__ void unit_mma_any(int depth, float (&acc)[kTokTiles][4],
                                             const std::uint32_t (&bfrag)[kTokTiles][4],
                                             const UnitWords& w, int t, const std::uint16_t* lut) {
  switch (depth) {
    case 1: unit_mma<M, kQ, kTokTiles, 1>(acc, bfrag, w, t, lut); break;
    case 2: unit_mma<M, kQ, kTokTiles, 2>(acc, bfrag, w, t, lut); break;
    case 3: unit_mma<M, kQ, kTokTiles, 3>(acc, bfrag, w, t, lut); break;
    case 4: unit_mma<M, kQ, kTokTiles, 4>(acc, bfrag, w, t, lut); break;
    case 5: unit_mma<M, kQ, kTokTiles, 5>(acc, bfrag, w, t, lut); break;
    case 6: unit_mma<M, kQ, kTokTiles, 6>(acc, bfrag, w, t, lut); break;
    case 7: unit_mma<M, kQ, kTokTiles, 7>(acc, bfrag, w, t, lut); break;
    case 8: unit_mma<M, kQ, kTokTiles, 8>(acc, bfrag, w, t, lut); break;
    default: break;  // 0-bit units: their weights are loc, in the chunk term
  }
}

template <typename Act, Quant kQ, int kTokTiles>
__global__ void __launch_bounds__(512, min_blocks_per_sm<kTokTiles>())
    qlinear_kernel(const QlinearParams p) {
  using M = typename MmaTypeOf<Act>::type;
  constexpr int kTokens = 8 * kTokTiles;
  constexpr int kPrefetch = prefetch_units<kTokTiles>();

  extern __shared__ __align__(16) unsigned char smem[];
  const int stride = xs_stride(p.slice_units);
  M* xs = reinterpret_cast<M*>(smem);
  unsigned char* after_xs = smem + kTokens * stride * 2;
  std::uint16_t* lut = reinterpret_cast<std::uint16_t*>(after_xs);
  float* s_chunk_term = reinterpret_cast<float*>(after_xs + kLutBytes);
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(s_chunk_term + kTokens);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units_per_split);
  __shared__ int s_is_last;

  // blockIdx.x = row block * token groups + token group: the token groups of one weight tile are
  // neighbours in launch order, so they read the tile's words from L2 (large batches).
  const int tok_group = blockIdx.x % p.tok_groups;
  const int row_block = blockIdx.x / p.tok_groups;
  const int chunk = row_block / p.row_blocks_per_chunk;
  const int row0 = (row_block % p.row_blocks_per_chunk) * p.rows_per_block;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  if (row0 >= rows_c) return;  // whole block, before any barrier: only in the last chunk
  const int u_begin = blockIdx.y * p.units_per_split;
  const int u_end = min(p.units, u_begin + p.units_per_split);
  const int n_units = u_end - u_begin;
  const int tok0 = tok_group * kTokens;
  const int m = min(kTokens, p.m - tok0);  // real tokens of this block

  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int row_a = row0 + warp * 16 + g;  // the lane's rows: row_a, row_a + 8
  const bool warp_active = row0 + warp * 16 < rows_c;

  if constexpr (kQ == Quant::kLaplace) {
    for (int i = tid; i < kLutEntries; i += nthreads) lut[i] = p.lut[i];
  }
  if (tid < kTokens) s_chunk_term[tid] = 0.f;
  const std::int64_t chunk_unit0 = static_cast<std::int64_t>(chunk) * p.units + u_begin;
  for (int i = tid; i < n_units; i += nthreads) {
    s_depth[i] = p.depth[chunk_unit0 + i];
    s_offset[i] = p.unit_offset[chunk_unit0 + i];
  }
  __syncthreads();

  const Act* x = static_cast<const Act*>(p.x) + static_cast<std::int64_t>(tok0) * p.k;
  const std::int64_t chunk_pos0 = static_cast<std::int64_t>(chunk) * p.padded_k;

  float acc[kTokTiles][4];
#pragma unroll
  for (int nt = 0; nt < kTokTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;

  // Register ring of kPrefetch units of words, filled ahead of the decode.
  UnitWords ring[kPrefetch];
#pragma unroll
  for (int s = 0; s < kPrefetch; ++s)
    if (warp_active && s < n_units)
      load_unit_words(ring[s], p.qweight, s_offset[s], s_depth[s], rows_c, row_a, t);

  int slice_begin = 0;
  for (int u0 = 0; u0 < n_units; u0 += kPrefetch) {
#pragma unroll
    for (int s = 0; s < kPrefetch; ++s) {
      const int ul = u0 + s;  // unit index within the block's range; uniform over the block
      if (ul >= n_units) break;
      if (ul % p.slice_units == 0) {
        // Stage x * scale for the next slice (real tokens only; B fragments of the padding
        // tokens are zeros, never read from xs), and the chunk term.
        slice_begin = ul;
        const int npos = min(p.slice_units, n_units - ul) * 32;
        const int total = m * npos;
        __syncthreads();  // the previous slice's readers are done
        constexpr int kStageUnroll = 4;
        const std::int64_t slice_pos0 = chunk_pos0 + static_cast<std::int64_t>(u_begin + ul) * 32;
        const std::int32_t* col_perm = p.col_perm + slice_pos0;
        const __half* scale = p.scale + slice_pos0;
        const __half* loc = p.loc + slice_pos0;
        for (int base = tid; base < total; base += kStageUnroll * nthreads) {
          int col[kStageUnroll];
#pragma unroll
          for (int j = 0; j < kStageUnroll; ++j)
            col[j] = col_perm[min(base + j * nthreads, total - 1) % npos];
#pragma unroll
          for (int j = 0; j < kStageUnroll; ++j) {
            const int idx = base + j * nthreads;
            if (idx - lane >= total) break;  // the whole warp is past the end (uniform)
            // total and npos are multiples of 32: a warp is all in or all out, one token
            const int token = idx / npos;
            const int pl = idx - token * npos;
            float xv = 0.f;
            if (col[j] < p.k) xv = to_float(x[static_cast<std::int64_t>(token) * p.k + col[j]]);
            const M staged = from_float<M>(__half2float(scale[pl]) * xv);
            xs[token * stride + pl] = staged;
            float term = __half2float(loc[pl]) * xv;
            if constexpr (kQ == Quant::kUniform) {
              if (s_depth[ul + pl / 32] > 0) term += 0.5f * to_float(staged);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) term += __shfl_xor_sync(0xffffffffu, term, o);
            if (lane == 0) atomicAdd(&s_chunk_term[token], term);
          }
        }
        __syncthreads();
      }
      const int depth = s_depth[ul];
      if (warp_active && depth > 0) {
        std::uint32_t bfrag[kTokTiles][4];
        const int xs_col = (ul - slice_begin) * 32 + 8 * t;
#pragma unroll
        for (int nt = 0; nt < kTokTiles; ++nt) {
          uint4 v = make_uint4(0u, 0u, 0u, 0u);
          if (nt * 8 + g < m) v = *reinterpret_cast<const uint4*>(&xs[(nt * 8 + g) * stride + xs_col]);
          bfrag[nt][0] = v.x;
          bfrag[nt][1] = v.y;
          bfrag[nt][2] = v.z;
          bfrag[nt][3] = v.w;
        }
        unit_mma_any<M, kQ, kTokTiles>(depth, acc, bfrag, ring[s], t, lut);
      }
      const int next = ul + kPrefetch;
      if (warp_active && next < n_units)
        load_unit_words(ring[s], p.qweight, s_offset[next], s_depth[next], rows_c, row_a, t);
    }
  }
  __syncthreads();  // the chunk term is complete

  Act* y = static_cast<Act*>(p.y) + static_cast<std::int64_t>(tok0) * p.n;
  const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * p.gs;
  if (warp_active) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row_a + 8 * half;
      if (row >= rows_c) continue;
      const std::int64_t prow = perm_row0 + row;
      if (p.splits == 1) {
        const int orig = p.row_perm[prow];
        const float b = p.bias ? __half2float(p.bias[orig]) : 0.f;
#pragma unroll
        for (int nt = 0; nt < kTokTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int token = nt * 8 + 2 * t + e;
            if (token < m)
              y[static_cast<std::int64_t>(token) * p.n + orig] =
                  from_float<Act>(acc[nt][2 * half + e] + s_chunk_term[token] + b);
          }
      } else {
#pragma unroll
        for (int nt = 0; nt < kTokTiles; ++nt) {
          const int token = nt * 8 + 2 * t;
          float* dst = p.workspace + prow * kTokens + token;
          const float v0 = acc[nt][2 * half] + s_chunk_term[token];
          const float v1 = acc[nt][2 * half + 1] + s_chunk_term[token + 1];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          atomicAdd(reinterpret_cast<float2*>(dst), make_float2(v0, v1));
#else
          atomicAdd(dst, v0);
          atomicAdd(dst + 1, v1);
#endif
        }
      }
    }
  }
  if (p.splits == 1) return;

  // Last block of this row range: the workspace rows are complete; write y in original order.
  // (select_config.cu uses one split whenever there are several token groups.)
  __threadfence();
  __syncthreads();
  if (tid == 0) s_is_last = atomicAdd(&p.counters[blockIdx.x], 1) == p.splits - 1;
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();
  const int rows_here = min(p.rows_per_block, rows_c - row0);
  for (int i = tid; i < rows_here * m; i += nthreads) {
    const int row = row0 + i / m;
    const int token = i % m;
    const std::int64_t prow = perm_row0 + row;
    const int orig = p.row_perm[prow];
    const float b = p.bias ? __half2float(p.bias[orig]) : 0.f;
    const float v = __ldcg(p.workspace + prow * kTokens + token);
    y[static_cast<std::int64_t>(token) * p.n + orig] = from_float<Act>(v + b);
  }
  if (tid == 0) p.counters[blockIdx.x] = 0;
}

}  // namespace radio::cuda
