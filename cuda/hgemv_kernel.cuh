// y = x @ W.T + b for a packed layer, one token, f16 activations: CUDA cores in packed half2
// arithmetic (HFMA2), two weights per table lookup at depths 1..4. Taken on layers of at least
// 16384 chunk-units (select_config.cu); smaller layers and other activation types keep
// gemv_kernel.cuh.
//
// Why a second one-token kernel. The gemv kernel spends per weight one shift and one AND for the
// index, one shared-memory lookup and one f32 FMA; ncu put it on the issue slots, the ALU pipe
// and the shared-memory pipe at once (bench/KERNELS.md sessions 5-6), so a cut must remove
// instructions from all three. Here a lane decodes two neighbouring positions of a row together:
// one shift and one AND-OR give the offset of the pair (T_B[q_j], T_B[q_j+1]) in a pair table
// with one copy per bank (depths 1..4, the fmma kernel's tables: no bank conflicts), one 32-bit
// load returns both values as a half2, and one HFMA2 multiplies them by the half2 (xs_j,
// xs_j+1) and adds them to a half2 accumulator: 4 instructions per two weights at depths 1..4
// against 8. Depths 5..8 look up the two values singly (16-bit table) and join them with a byte
// permute (8 instructions per two weights, as before). ncu, 49152x12288 at 4 bpw: 78.5M warp
// instructions against gemv's 120.5M (bench/KERNELS.md session 12).
//
// Precision. The products and the sums inside one unit are f16: each row keeps two half2
// accumulators (8 products per half each), added once per unit and converted to f32, where the
// unit sums accumulate. Measured: about twice the gemv kernel's error (relative 4.2e-4 against
// 2.3e-4 on 49152x12288, bench_gemm's check), a tenth of the f16 budget the tests hold it to.
// bf16 and f32 activations stay on gemv_kernel.cuh (bf16 sums would keep 8 bits).
//
// Work split. The tables take 45.5 KB of shared memory, so a block of 128 threads would leave 4
// blocks (16 warps) per SM. A block here is two warp groups on the same chunk and K split: group
// g walks units g, g + 2, ...; both keep the gemv kernel's rows (thread t: rows t and t + group
// size), and group 1 hands its sums to group 0 through shared memory at the end. 64 registers:
// 4 blocks (32 warps) per SM. Staging (xs = scale * x as f16, the chunk term sum loc * x in f32),
// the K split's workspace and the last-block write of y are the gemv kernel's, with one barrier
// before the unit loop. In full 256-row chunks the word loads take immediate offsets
// (load_unit_words<true>).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <utility>

#include "block_units.cuh"
#include "common.cuh"
#include "decode.cuh"
#include "fmma_kernel.cuh"  // kFmmaPairEntries, kFmmaPairMaxDepth: the same tables
#include "gemv_kernel.cuh"  // RowWords, load_row_words, pair_table_start
#include "pdl.cuh"

namespace radio::cuda {

constexpr int kHgemvGroups = 2;           // warp groups per block (units interleaved)
constexpr int kHgemvBlocksPerSm = 4;      // resident blocks the K split plans for (smem)
constexpr int kHgemvMaxUnits = 128;       // units per block: xs 8 KB
constexpr int kHgemvFullRows = 256;       // chunk rows of the immediate-offset word loads
// Static shared memory: pair tables, the 16-bit single table (u32 per entry), group 1's row
// sums, the warps' chunk terms and one int, plus 16 bytes for alignment (ptxas: 46672 bytes).
constexpr int kHgemvStaticSmemBytes =
    kFmmaPairEntries * 32 * 4 + 512 * 4 + 256 * 4 + 8 * kHgemvGroups * 4 + 4 + 16;

struct HgemvParams : DecodeParams {
  std::uint32_t pair_table[kFmmaPairEntries];  // depths 1..4: (T_B[q], T_B[q']) as f16 halves
  std::uint16_t table[512];                    // T_B[q] as f16 (entry 2^B - 2 + q)
};

// Dynamic shared memory: xs [units_per_split * 32] f16, the block's unit offsets (i32) and
// depths (u8).
__host__ __device__ constexpr int hgemv_smem_bytes(int units_per_split) {
  return units_per_split * 32 * 2 + units_per_split * (4 + 1);
}

__device__ __forceinline__ __half2 as_half2(std::uint32_t v) {
  return *reinterpret_cast<const __half2*>(&v);
}

// (T_B[q_j], T_B[q_j+1]) of pair kP (positions 2kP, 2kP + 1) of a row's unit as a half2.
template <int kB, int kP>
__device__ __forceinline__ __half2 hgemv_pair(const std::uint32_t (&w)[kB],
                                              const unsigned char* tables_b, std::uint32_t lane4) {
  if constexpr (kB <= kFmmaPairMaxDepth) {
    return *reinterpret_cast<const __half2*>(tables_b + unit_pair_offset<kB, 2 * kP>(w, lane4));
  } else {
    const std::uint32_t lo =
        *reinterpret_cast<const std::uint32_t*>(tables_b + unit_index_x4<kB, 2 * kP>(w));
    const std::uint32_t hi =
        *reinterpret_cast<const std::uint32_t*>(tables_b + unit_index_x4<kB, 2 * kP + 1>(w));
    return as_half2(__byte_perm(lo, hi, 0x5410));
  }
}

// Pair kP of both rows times (xs_2kP, xs_2kP+1), into the rows' accumulators kP % 2.
template <int kB, int kP>
__device__ __forceinline__ void hgemv_pair_fma(__half2 (&ha)[2], __half2 (&hb)[2],
                                               const std::uint32_t (&wa)[kB],
                                               const std::uint32_t (&wb)[kB],
                                               const unsigned char* tables_b, std::uint32_t lane4,
                                               __half2 x) {
  ha[kP % 2] = __hfma2(hgemv_pair<kB, kP>(wa, tables_b, lane4), x, ha[kP % 2]);
  hb[kP % 2] = __hfma2(hgemv_pair<kB, kP>(wb, tables_b, lane4), x, hb[kP % 2]);
}

// Positions 8g .. 8g+7 (pairs 4g .. 4g+3) of both rows: xs as one 16-byte broadcast load.
template <int kB, int kG>
__device__ __forceinline__ void hgemv_octet(__half2 (&ha)[2], __half2 (&hb)[2],
                                            const std::uint32_t (&wa)[kB],
                                            const std::uint32_t (&wb)[kB],
                                            const unsigned char* tables_b, std::uint32_t lane4,
                                            const __half2* xs_unit) {
  const uint4 v = *reinterpret_cast<const uint4*>(xs_unit + 4 * kG);
  hgemv_pair_fma<kB, 4 * kG>(ha, hb, wa, wb, tables_b, lane4, as_half2(v.x));
  hgemv_pair_fma<kB, 4 * kG + 1>(ha, hb, wa, wb, tables_b, lane4, as_half2(v.y));
  hgemv_pair_fma<kB, 4 * kG + 2>(ha, hb, wa, wb, tables_b, lane4, as_half2(v.z));
  hgemv_pair_fma<kB, 4 * kG + 3>(ha, hb, wa, wb, tables_b, lane4, as_half2(v.w));
}

template <int kB, int... kGs>
__device__ __forceinline__ void hgemv_unit(float& acc_a, float& acc_b, const RowWords& w,
                                           const unsigned char* pairs,
                                           const unsigned char* table, std::uint32_t lane4,
                                           const __half2* xs_unit,
                                           std::integer_sequence<int, kGs...>) {
  std::uint32_t wa[kB], wb[kB];
#pragma unroll
  for (int i = 0; i < kB; ++i) {
    wa[i] = w.a[i];
    wb[i] = w.b[i];
  }
  const unsigned char* tables_b = kB <= kFmmaPairMaxDepth
                                      ? pairs + 128 * pair_table_start(kB)
                                      : table + 4 * ((1 << kB) - 2);
  const __half2 zero = __float2half2_rn(0.f);
  __half2 ha[2] = {zero, zero}, hb[2] = {zero, zero};
  (hgemv_octet<kB, kGs>(ha, hb, wa, wb, tables_b, lane4, xs_unit), ...);
  const float2 fa = __half22float2(__hadd2(ha[0], ha[1]));
  const float2 fb = __half22float2(__hadd2(hb[0], hb[1]));
  acc_a += fa.x + fa.y;
  acc_b += fb.x + fb.y;
}

__device__ __forceinline__ void hgemv_unit_any(int depth, float& acc_a, float& acc_b,
                                               const RowWords& w, const unsigned char* pairs,
                                               const unsigned char* table, std::uint32_t lane4,
                                               const __half2* xs_unit) {
  constexpr auto kOctets = std::make_integer_sequence<int, 4>{};
  switch (depth) {
    case 1: hgemv_unit<1>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 2: hgemv_unit<2>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 3: hgemv_unit<3>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 4: hgemv_unit<4>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 5: hgemv_unit<5>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 6: hgemv_unit<6>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 7: hgemv_unit<7>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    case 8: hgemv_unit<8>(acc_a, acc_b, w, pairs, table, lane4, xs_unit, kOctets); break;
    default: break;  // 0-bit units: loc only, in the chunk term
  }
}

// Words of one unit for the thread's two rows (only `depth` planes). kFull: a chunk of
// kHgemvFullRows rows, row b = row a + kHgemvFullRows / 2: immediate offsets from unit_a, entered
// at the unit's depth (no per-plane predicate, pointer step or row check: ncu counted ~7
// instructions per plane of the predicated loop, a fifth of the kernel's). Otherwise the gemv
// kernel's predicated pointer walk.
template <bool kFull>
__device__ __forceinline__ void load_unit_words(RowWords& w, const std::uint32_t* __restrict__ unit_a,
                                                int depth, int rows_c, int b_off) {
  if constexpr (kFull) {
    constexpr int kS = kHgemvFullRows, kB = kHgemvFullRows / 2;
    switch (depth) {
      case 8: w.a[7] = __ldg(unit_a + 7 * kS); w.b[7] = __ldg(unit_a + 7 * kS + kB); [[fallthrough]];
      case 7: w.a[6] = __ldg(unit_a + 6 * kS); w.b[6] = __ldg(unit_a + 6 * kS + kB); [[fallthrough]];
      case 6: w.a[5] = __ldg(unit_a + 5 * kS); w.b[5] = __ldg(unit_a + 5 * kS + kB); [[fallthrough]];
      case 5: w.a[4] = __ldg(unit_a + 4 * kS); w.b[4] = __ldg(unit_a + 4 * kS + kB); [[fallthrough]];
      case 4: w.a[3] = __ldg(unit_a + 3 * kS); w.b[3] = __ldg(unit_a + 3 * kS + kB); [[fallthrough]];
      case 3: w.a[2] = __ldg(unit_a + 2 * kS); w.b[2] = __ldg(unit_a + 2 * kS + kB); [[fallthrough]];
      case 2: w.a[1] = __ldg(unit_a + kS); w.b[1] = __ldg(unit_a + kS + kB); [[fallthrough]];
      case 1: w.a[0] = __ldg(unit_a); w.b[0] = __ldg(unit_a + kB); break;
      default: break;
    }
  } else {
    load_row_words(w, unit_a, depth, rows_c, b_off);
  }
}

// The unit loop of one warp group: units group, group + kGroups, ..., the next one's words
// loaded while the current one is decoded (`cur` holds the first unit's on entry).
template <bool kFull, int kGroups>
__device__ __forceinline__ void hgemv_walk(float& acc_a, float& acc_b, RowWords& cur,
                                           const std::uint32_t* qa, int group, int n_units,
                                           const std::uint8_t* s_depth,
                                           const std::int32_t* s_offset, int rows_c, int b_off,
                                           const unsigned char* pairs, const unsigned char* table,
                                           std::uint32_t lane4, const __half2* xs) {
  RowWords next;
  for (int u = group; u < n_units; u += kGroups) {
    const int v = u + kGroups;
    if (v < n_units) load_unit_words<kFull>(next, qa + s_offset[v], s_depth[v], rows_c, b_off);
    hgemv_unit_any(s_depth[u], acc_a, acc_b, cur, pairs, table, lane4, xs + 16 * u);
    cur = next;
  }
}

// The pair tables of depths 1..4 (entry e of lane l at word 32 e + l; a thread writes four lanes'
// copies of one entry with one 16-byte store) and the single table of depths 5..8 (one u32 per
// entry, the f16 value in the low half). All of them, whatever depths the block has: written
// while the block's first global loads are in flight, before its one barrier.
__device__ __forceinline__ void write_hgemv_tables(const HgemvParams& p, std::uint32_t* s_pairs,
                                                   std::uint32_t* s_table, int tid, int nthreads) {
  for (int i = 4 * tid; i < kFmmaPairEntries * 32; i += 4 * nthreads) {
    const std::uint32_t v = p.pair_table[i >> 5];
    uint4 copies;
    copies.x = copies.y = copies.z = copies.w = v;
    *reinterpret_cast<uint4*>(s_pairs + i) = copies;
  }
  constexpr int kFirstSingle = (1 << (kFmmaPairMaxDepth + 1)) - 2;  // depth 5's first entry
  for (int i = kFirstSingle + tid; i < kTableEntries; i += nthreads) s_table[i] = p.table[i];
}

// Bytes of its words a block asks into L2 before the previous kernel ends (pdl.cuh): the first
// wave (4 blocks per SM) asks ~8.6 MB on an H100, as gemv's.
constexpr int kHgemvPrefetchBytes = 16 * 1024;

// (a template so that every translation unit including this header may carry it). 64 registers,
// hence 4 blocks per SM (select_config.cu's kHgemvBlocksPerSm): until session 14 ptxas chose 64
// by itself; with the L2 prefetches before the PDL wait it chose 80 (3 blocks per SM), so the
// launch bound's minimum of 4 blocks pins it (no spills).
template <int kGroups>
__global__ void __launch_bounds__(128 * kGroups, 4) hgemv_kernel(const HgemvParams p) {
  static_assert(kGroups == 2, "group 1 hands its row sums to group 0");
  __shared__ __align__(16) std::uint32_t s_pairs[kFmmaPairEntries * 32];  // one copy per bank
  __shared__ std::uint32_t s_table[512];  // f16 value in the low half
  __shared__ float s_partial[256];        // group 1's row sums
  __shared__ float s_warp_term[8 * kGroups];  // per warp: its positions' sum loc * x
  __shared__ int s_is_last;
  extern __shared__ __align__(16) unsigned char smem[];
  __half2* xs = reinterpret_cast<__half2*>(smem);
  std::int32_t* s_offset = reinterpret_cast<std::int32_t*>(smem + p.units_per_split * 64);
  std::uint8_t* s_depth = reinterpret_cast<std::uint8_t*>(s_offset + p.units_per_split);

  const int chunk = blockIdx.x;
  const int rows_c = min(p.gs, p.n - chunk * p.gs);
  const int u_begin = blockIdx.y * p.units_per_split;
  const int n_units = min(p.units, u_begin + p.units_per_split) - u_begin;
  const int tid = threadIdx.x, nthreads = blockDim.x, lane = tid & 31;
  const int group_threads = nthreads / kGroups;
  const int group = tid / group_threads, gtid = tid - group * group_threads;

  // One barrier before the unit loop (ncu, first version: ~40% of the warps' stall samples were
  // in a prologue of three barrier-separated phases). Requested first: the first unit's words
  // (depth and offset straight from global memory) and the staging loads; the tables, the same
  // for every block, are written while those are in flight.
  const int row_a = gtid, row_b = gtid + group_threads;
  const bool has_rows = row_a < rows_c;
  // Row b of a short last chunk may lie beyond it: it re-reads row a's words (in bounds) and its
  // sums are never written.
  const int b_off = row_b < rows_c ? row_b - row_a : 0;
  const std::uint32_t* qa = p.qweight + row_a;
  const std::int64_t chunk_unit0 = static_cast<std::int64_t>(chunk) * p.units + u_begin;
  // Programmatic dependent launch (pdl.cuh): this block's first words and its side information
  // are asked into L2 while the previous kernel drains.
  decode_block_wait_previous(p, chunk, u_begin, n_units, tid, kHgemvPrefetchBytes);
  // Full chunks of 256 rows (all but a short last one at the default group size): the word
  // rows lie 1 KB apart and row b 512 bytes after row a, so every load of a unit is one LDG at
  // an immediate offset from one pointer (load_unit_words<true>).
  const bool full_chunk = rows_c == kHgemvFullRows && group_threads == kHgemvFullRows / 2;
  RowWords cur;
  if (has_rows && group < n_units) {
    const std::uint32_t* unit_a = qa + p.unit_offset[chunk_unit0 + group];
    const int depth = p.depth[chunk_unit0 + group];
    if (full_chunk)
      load_unit_words<true>(cur, unit_a, depth, rows_c, b_off);
    else
      load_unit_words<false>(cur, unit_a, depth, rows_c, b_off);
  }
  for (int i = tid; i < n_units; i += nthreads) {
    s_depth[i] = p.depth[chunk_unit0 + i];
    s_offset[i] = p.unit_offset[chunk_unit0 + i];
  }

  // xs = scale * x (f16) and the chunk term, four positions per thread per pass, their loads
  // issued before any use (as in gemv_kernel.cuh).
  const __half* x = static_cast<const __half*>(p.xt);
  __half* xs_h = reinterpret_cast<__half*>(xs);
  const int npos = n_units * 32;
  const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * p.padded_k + 32LL * u_begin;
  float term = 0.f;
  constexpr int kStage = 4;
  bool tables_written = false;
  for (int base = tid; base < npos; base += kStage * nthreads) {
    const PositionMeta<kStage> meta = load_position_meta<kStage>(p, pos0, base, nthreads, npos);
    if (!tables_written) {
      write_hgemv_tables(p, s_pairs, s_table, tid, nthreads);
      tables_written = true;
    }
    float xv[kStage];
#pragma unroll
    for (int j = 0; j < kStage; ++j)
      xv[j] = meta.col[j] < p.k ? __half2float(__ldg(x + meta.col[j])) : 0.f;
#pragma unroll
    for (int j = 0; j < kStage; ++j) {
      const int i = base + j * nthreads;
      if (i >= npos) break;
      xs_h[i] = __float2half_rn(meta.scale[j] * xv[j]);
      term = fmaf(meta.loc[j], xv[j], term);
    }
  }
  if (!tables_written) write_hgemv_tables(p, s_pairs, s_table, tid, nthreads);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) term += __shfl_xor_sync(0xffffffffu, term, o);
  if (lane == 0) s_warp_term[tid >> 5] = term;
  __syncthreads();  // tables, depths, offsets, xs, warp terms
  float chunk_term = 0.f;
  for (int w = 0; w < nthreads / 32; ++w) chunk_term += s_warp_term[w];

  float acc_a = 0.f, acc_b = 0.f;
  const unsigned char* pairs = reinterpret_cast<const unsigned char*>(s_pairs);
  const unsigned char* table = reinterpret_cast<const unsigned char*>(s_table);
  const std::uint32_t lane4 = 4u * static_cast<std::uint32_t>(lane);
  if (has_rows) {
    if (full_chunk)
      hgemv_walk<true, kGroups>(acc_a, acc_b, cur, qa, group, n_units, s_depth, s_offset, rows_c,
                                b_off, pairs, table, lane4, xs);
    else
      hgemv_walk<false, kGroups>(acc_a, acc_b, cur, qa, group, n_units, s_depth, s_offset, rows_c,
                                 b_off, pairs, table, lane4, xs);
  }
  pdl_allow_next();  // the block's words are read (as gemv_kernel.cuh)
  if (group == 1 && row_a < rows_c) {
    s_partial[row_a] = acc_a;
    if (row_b < rows_c) s_partial[row_b] = acc_b;
  }
  __syncthreads();
  const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * p.gs;
  if (group == 0) {
    __half* y = static_cast<__half*>(p.y);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = h == 0 ? row_a : row_b;
      if (row >= rows_c) continue;
      const float sum = (h == 0 ? acc_a : acc_b) + s_partial[row] + chunk_term;
      const std::int64_t prow = perm_row0 + row;
      if (p.splits == 1) {
        const int orig = p.row_perm[prow];
        y[orig] = __float2half_rn(sum + (p.bias ? __half2float(p.bias[orig]) : 0.f));
      } else {
        atomicAdd(p.workspace + prow, sum);
      }
    }
  }
  if (p.splits == 1 || p.defer_output) return;
  write_k_split_rows<__half>(p.counters + chunk, p.splits, &s_is_last, p.workspace, 1, rows_c, 1,
                             perm_row0, p.row_perm, p.bias, static_cast<__half*>(p.y), p.n, tid,
                             nthreads, p.fence_all);
}

}  // namespace radio::cuda
