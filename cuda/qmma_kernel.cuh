// y = x @ W.T + b for a packed layer and 33..64 tokens (5..64 with fmma off; fmma_kernel.cuh takes
// 3..32 by default, but not 25..32 on very large layers): the decode of the gemv path (one thread
// per row, coalesced words, table lookups) feeding the tensor cores through shared memory.
//
// Why: the earlier tensor-core kernel (qlinear_kernel.cuh) decodes straight into mma fragments,
// which makes every lane read a window of a row's bit string (4 word rows per load) and redo the
// bit arithmetic per fragment; it ran at 0.56x f16 at 16 tokens (bench/KERNELS.md). Here each
// warp owns 64 rows of a chunk: lane l decodes rows l and l + 32 of every unit exactly like the
// gemv kernel (words of 32 consecutive rows are one 128-byte line), writes the table values T_B[q]
// in the mma type to its 64 x 32 tile in shared memory, and the warp multiplies the tile with
// xs = scale * x (staged per block in the mma type) by ldmatrix + mma.sync m16n8k16 with f32
// accumulators. The decode cost per weight does not grow with the token count, only the mma work
// does, and that is small next to it up to 32 tokens. The warp needs no block-wide barrier in its
// unit loop (__syncwarp only).
//
// Work split and output as in gemv_kernel.cuh: block (chunk, K split, token group of 32), chunk
// term sum loc * x, one split writes y directly, several add f32 partials to a zeroed workspace
// [token groups][n][32] and the chunk's last block writes y in original row order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "block_units.cuh"
#include "common.cuh"
#include "decode.cuh"
#include "gemv_kernel.cuh"
#include "transpose_x.cuh"

namespace radio::cuda {

constexpr int kQmmaMaxTokens = 64;     // the most tokens this path takes
constexpr int kQmmaGroupTokens = 32;   // tokens per block (token groups along grid z)
constexpr int kQmmaThreads = 128;      // 4 warps x 64 rows: chunks of up to 256 rows
constexpr int kQmmaTileStride = 40;    // halves per tile row: 32 + 8, ldmatrix rows on distinct banks

// xt: [groups][k][kTokens]; workspace: [groups][n][32]; counters: [groups][C].
struct QmmaParams : DecodeParams {
  std::uint16_t table[512];  // T_B[q] in the mma type (entry 2^B - 2 + q), from the host
};

// xs row stride in halves for npos staged positions: + 8 puts the 8 token rows of one B-fragment
// load on distinct banks (npos is a multiple of 32).
__host__ __device__ constexpr int qmma_xs_stride(int npos) { return npos + 8; }

// Dynamic shared memory: xs [tokens][stride] (mma type), the 4 warps' tiles [64][kQmmaTileStride]
// (mma type), unit offsets (i32) and depths (u8).
__host__ __device__ constexpr int qmma_smem_bytes(int tokens, int units_per_split) {
  return tokens * qmma_xs_stride(units_per_split * 32) * 2 +
         (kQmmaThreads / 32) * 64 * kQmmaTileStride * 2 + units_per_split * (4 + 1);
}

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* smem_row) {
  const unsigned addr = smem_addr(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Decode one unit of depth kB for the lane's two rows into the warp's tile: row l and l + 32,
// positions 0..31, as 16-bit table values (two per 32-bit store).
template <int kB, int... kPs>
__device__ __forceinline__ void qmma_decode(const RowWords& w, const std::uint32_t* table32,
                                            std::uint32_t* row_a, std::uint32_t* row_b,
                                            std::integer_sequence<int, kPs...>) {
  std::uint32_t wa[kB], wb[kB];
#pragma unroll
  for (int i = 0; i < kB; ++i) {
    wa[i] = w.a[i];
    wb[i] = w.b[i];
  }
  const unsigned char* t = reinterpret_cast<const unsigned char*>(table32 + ((1 << kB) - 2));
  // pair kP = positions 2kP, 2kP + 1 (table32 entries hold the 16-bit value in the low half)
  ((row_a[kPs] = *reinterpret_cast<const std::uint32_t*>(t + unit_index_x4<kB, 2 * kPs>(wa)) |
                 (*reinterpret_cast<const std::uint32_t*>(t + unit_index_x4<kB, 2 * kPs + 1>(wa))
                  << 16),
    row_b[kPs] = *reinterpret_cast<const std::uint32_t*>(t + unit_index_x4<kB, 2 * kPs>(wb)) |
                 (*reinterpret_cast<const std::uint32_t*>(t + unit_index_x4<kB, 2 * kPs + 1>(wb))
                  << 16)),
   ...);
}

__device__ __forceinline__ void qmma_decode_any(int depth, const RowWords& w,
                                                const std::uint32_t* table32, std::uint32_t* row_a,
                                                std::uint32_t* row_b) {
  constexpr auto kPairs = std::make_integer_sequence<int, 16>{};
  switch (depth) {
    case 1: qmma_decode<1>(w, table32, row_a, row_b, kPairs); break;
    case 2: qmma_decode<2>(w, table32, row_a, row_b, kPairs); break;
    case 3: qmma_decode<3>(w, table32, row_a, row_b, kPairs); break;
    case 4: qmma_decode<4>(w, table32, row_a, row_b, kPairs); break;
    case 5: qmma_decode<5>(w, table32, row_a, row_b, kPairs); break;
    case 6: qmma_decode<6>(w, table32, row_a, row_b, kPairs); break;
    case 7: qmma_decode<7>(w, table32, row_a, row_b, kPairs); break;
    default: qmma_decode<8>(w, table32, row_a, row_b, kPairs); break;
  }
}

template <typename Act, int kTokTiles>
__global__ void __launch_bounds__(kQmmaThreads) qmma_kernel(const QmmaParams p) {
  using M = typename MmaTypeOf<Act>::type;
  constexpr int kTokens = 8 * kTokTiles;  // tokens this instance holds (<= 32)
  __shared__ std::uint32_t s_table[512];   // 16-bit values in the low halves: LDS [offset + const]
  __shared__ float s_term[kQmmaGroupTokens];
  __shared__ int s_max_depth, s_is_last;
  extern __shared__ __align__(16) unsigned char smem[];
  const int npos_max = p.units_per_split * 32;
  const int xs_stride = qmma_xs_stride(npos_max);
  std::uint16_t* xs = reinterpret_cast<std::uint16_t*>(smem);
  std::uint16_t* tiles = xs + kTokens * xs_stride;
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(tiles + (kQmmaThreads / 32) * 64 * kQmmaTileStride);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units_per_split);

  const int chunk = blockIdx.x;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int u_begin = blockIdx.y * p.units_per_split;
  const int n_units = min(p.units, u_begin + p.units_per_split) - u_begin;
  const int tok0 = blockIdx.z * kQmmaGroupTokens;
  const int m = min(kTokens, p.m - tok0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  if (tid == 0) s_max_depth = 0;
  if (tid < kQmmaGroupTokens) s_term[tid] = 0.f;
  __syncthreads();
  const std::int64_t chunk_unit0 = static_cast<std::int64_t>(chunk) * p.units + u_begin;
  load_block_units(p.depth, p.unit_offset, chunk_unit0, n_units, tid, kQmmaThreads, lane, s_depth,
                   s_offset, &s_max_depth);

  // Stage xs (mma type) for the block's positions and tokens, and the chunk term.
  const Act* xt = static_cast<const Act*>(p.xt) + static_cast<std::int64_t>(blockIdx.z) * p.k * kTokens;
  const int npos = n_units * 32;
  const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * p.padded_k + 32LL * u_begin;
  // A position's tokens are one run of xt (zero beyond m), a few vector loads; read from x they
  // were kTokens dependent 2-byte L2 gathers. The chunk term is reduced once at the end.
  float term[kTokens];
#pragma unroll
  for (int t = 0; t < kTokens; ++t) term[t] = 0.f;
  for (int i = tid; i < npos; i += kQmmaThreads) {
    const int col = p.col_perm[pos0 + i];
    const float sc = __half2float(p.scale[pos0 + i]);
    const float lc = __half2float(p.loc[pos0 + i]);
    float xv[kTokens];
    if (col < p.k) {
      load_token_column<Act, kTokens>(xt + static_cast<std::int64_t>(col) * kTokens, xv);
    } else {
#pragma unroll
      for (int t = 0; t < kTokens; ++t) xv[t] = 0.f;
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      xs[t * xs_stride + i] = bits16<M>(sc * xv[t]);
      term[t] = fmaf(lc, xv[t], term[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) term[t] += __shfl_xor_sync(0xffffffffu, term[t], o);
    if (lane == 0 && t < m) atomicAdd(&s_term[t], term[t]);
  }
  __syncthreads();
  for (int i = tid; i < (2 << s_max_depth) - 2; i += kQmmaThreads) s_table[i] = p.table[i];
  __syncthreads();

  // The warp's 64 rows: lane rows row0 + lane and row0 + 32 + lane.
  const int row0 = warp * 64;
  const int row_a = row0 + lane, row_b = row0 + 32 + lane;
  std::uint16_t* tile = tiles + warp * 64 * kQmmaTileStride;
  std::uint32_t* tile_a = reinterpret_cast<std::uint32_t*>(tile + lane * kQmmaTileStride);
  std::uint32_t* tile_b = reinterpret_cast<std::uint32_t*>(tile + (32 + lane) * kQmmaTileStride);
  float acc[4][kTokTiles][4];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < kTokTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.f;
  const int g = lane >> 2, t4 = lane & 3;
  if (row0 < rows_c) {  // warp-uniform
    // Rows beyond a short last chunk read the chunk's last row (in bounds); their outputs are
    // never written.
    const int load_a = min(row_a, rows_c - 1);
    const int b_off = min(row_b, rows_c - 1) - load_a;
    const std::uint32_t* qa = p.qweight + load_a;
    RowWords cur, next;
    if (n_units > 0) load_row_words(cur, qa + s_offset[0], s_depth[0], rows_c, b_off);
    for (int u = 0; u < n_units; ++u) {
      const int depth = s_depth[u];
      if (u + 1 < n_units) load_row_words(next, qa + s_offset[u + 1], s_depth[u + 1], rows_c, b_off);
      if (depth > 0) {  // 0-bit units are loc only: in the chunk term
        std::uint32_t va[16], vb[16];
        qmma_decode_any(depth, cur, s_table, va, vb);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          reinterpret_cast<uint4*>(tile_a)[i] = make_uint4(va[4 * i], va[4 * i + 1], va[4 * i + 2], va[4 * i + 3]);
          reinterpret_cast<uint4*>(tile_b)[i] = make_uint4(vb[4 * i], vb[4 * i + 1], vb[4 * i + 2], vb[4 * i + 3]);
        }
        __syncwarp();
        // B fragments of both k-steps for every token tile: positions 2t4 + {0,1} (+8) of the
        // k-step, token nt * 8 + g.
        const std::uint16_t* xs_unit = xs + 32 * u;
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          std::uint32_t b[kTokTiles][2];
#pragma unroll
          for (int nt = 0; nt < kTokTiles; ++nt) {
            const std::uint16_t* src = xs_unit + (nt * 8 + g) * xs_stride + 16 * s + 2 * t4;
            b[nt][0] = *reinterpret_cast<const std::uint32_t*>(src);
            b[nt][1] = *reinterpret_cast<const std::uint32_t*>(src + 8);
          }
#pragma unroll
          for (int mt = 0; mt < 4; ++mt) {
            std::uint32_t a[4];
            ldmatrix_x4(a, tile + (mt * 16 + (lane & 15)) * kQmmaTileStride + 16 * s + (lane >> 4) * 8);
#pragma unroll
            for (int nt = 0; nt < kTokTiles; ++nt) mma_16816<M>(acc[mt][nt], a, b[nt][0], b[nt][1]);
          }
        }
        __syncwarp();  // the tile is rewritten by the next unit
      }
      cur = next;
    }
  }

  // C fragment: element e of (mt, nt) is row row0 + 16 mt + g + 8 (e / 2), token nt * 8 + 2 t4 + e % 2.
  Act* y = static_cast<Act*>(p.y) + static_cast<std::int64_t>(tok0) * p.n;
  const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * p.gs;
  float* ws = p.workspace + static_cast<std::int64_t>(blockIdx.z) * p.n * kQmmaGroupTokens;
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + mt * 16 + g + 8 * half;
      if (row >= rows_c) continue;
      const std::int64_t prow = perm_row0 + row;
      const int orig = p.splits == 1 ? p.row_perm[prow] : 0;
      const float bias = (p.splits == 1 && p.bias) ? __half2float(p.bias[orig]) : 0.f;
#pragma unroll
      for (int nt = 0; nt < kTokTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int t = nt * 8 + 2 * t4 + e;
          if (t >= m) continue;
          const float v = acc[mt][nt][2 * half + e] + s_term[t];
          if (p.splits == 1)
            y[static_cast<std::int64_t>(t) * p.n + orig] = from_float<Act>(v + bias);
          else
            atomicAdd(ws + prow * kQmmaGroupTokens + t, v);
        }
    }
  if (p.splits == 1) return;

  write_k_split_rows<Act>(p.counters + static_cast<std::int64_t>(blockIdx.z) * gridDim.x + chunk,
                          p.splits, &s_is_last, ws, kQmmaGroupTokens, rows_c, m, perm_row0,
                          p.row_perm, p.bias, y, p.n, tid, kQmmaThreads, p.fence_all);
}

}  // namespace radio::cuda
