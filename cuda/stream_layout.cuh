// The stream kernel's shapes and parameters (stream_kernel.cuh): constants of the ring and the
// staged pieces, the shared-memory plan, the parameter block and the walk over a block's
// flattened (chunk, unit) range that every role of the block follows.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "fmma_kernel.cuh"  // kFmmaPairEntries

namespace radio::cuda {

constexpr int kStreamRows = 256;          // chunk rows (rows_per_group) the kernel takes
constexpr int kStreamSlabs = 8;           // 32-row slabs of a chunk: one consumer warp each
constexpr int kStreamStageRows = 8;       // word rows per stage (one 128B-swizzle period)
constexpr int kStreamStageBytes = kStreamStageRows * kStreamRows * 4;  // 8 KB
constexpr int kStreamStages = 12;         // 96 KB of words in flight per SM
constexpr int kStreamMaxPieceUnits = 32;  // units per staged piece of x * scale (1..8 tokens)
constexpr int kStreamXsBufs = 4;          // pieces staged ahead
// Stager warps per xs buffer (set_stream_stagers, runtime): 1 or 2, the piece's batches split
// between them.
constexpr int kStreamMaxBufStagers = 2;
// Token tiles of 8 (template parameter kTT, 1 or 2): pieces of 32 / kTT units keep xs within
// 4 x 17 KB; xs row stride in halves, 32 mod 64 (fmma_xs_stride: token rows g and g+1 of one
// 16-byte fragment load in different bank halves).
__host__ __device__ constexpr int stream_tok_tiles(int m) { return m <= 8 ? 1 : 2; }
__host__ __device__ constexpr int stream_piece_units(int tok_tiles) {
  return kStreamMaxPieceUnits / tok_tiles;
}
__host__ __device__ constexpr int stream_xs_stride(int tok_tiles) {
  return stream_piece_units(tok_tiles) * 32 + 32;
}

__host__ __device__ constexpr int stream_threads(int groups, int buf_stagers) {
  return 32 * (kStreamSlabs * groups + 1 + kStreamXsBufs * buf_stagers);
}

// Static shared memory: the pair tables (one copy per bank) and the single table (u32, value in
// the low half), 45.5 KB, at addresses known at compile time (a lookup is then one LDS with the
// table's offset folded in). Dynamic, in this order from a 1024-byte aligned base (the 128B
// swizzle repeats every 1024 bytes): the ring (per slab: kStreamStages boxes of 8 word rows x
// 128 bytes, so a slab's word rows are consecutive modulo the ring), xs buffers
// [m][stream_xs_stride] halves, piece units (u32 per unit: depth | word rows of the piece before
// it << 8), piece terms [buf][stager][16], the barriers;
// plus 1 KB for the alignment.
constexpr int kStreamRingRows = kStreamStages * kStreamStageRows;  // word rows in the ring
__host__ __device__ constexpr int stream_smem_bytes(int m, int tok_tiles) {
  return 1024 + kStreamStages * kStreamStageBytes +
         kStreamXsBufs * m * stream_xs_stride(tok_tiles) * 2 +
         kStreamXsBufs * kStreamMaxPieceUnits * 4 +
         kStreamXsBufs * kStreamMaxBufStagers * 16 * 4 + 16 +
         (2 * kStreamStages + 2 * kStreamXsBufs) * 8;
}
constexpr int kStreamStaticSmemBytes = kFmmaPairEntries * 32 * 4 + 512 * 4;

struct StreamParams : DecodeParams {
  std::uint32_t pair_table[kFmmaPairEntries];  // depths 1..4: (T_B[q], T_B[q']) in the mma type
  std::uint16_t table[512];                    // T_B[q] in the mma type (entry 2^B - 2 + q)
  int buf_stagers;                             // stager warps per xs buffer (1 or 2)
  // The layer's work quantiles (LayerPtrs::work_quantiles; nullptr: none, count 0): block_range
  const std::int32_t* work_quantiles;
  int work_quantile_count;
};

// A block's share [begin, end) of the layer's `total` flattened (chunk, unit) indices.
//
// Without quantiles: equal unit counts. With them (int32 q[0..Q], Q = count - 1, from
// radio.ops.work_quantiles: q[j] is the first unit at which units x weight + word rows before it
// reach j / Q of the layer's total, computed once per layer when it is prepared): the cut of
// block b is where b / blocks of that work lies, interpolated linearly between the two
// quantiles around it, so any block count works from one table. Why: radio.quantize writes
// each chunk's units deepest first, and on layers whose blocks cover a fraction of a chunk equal
// unit counts gave the blocks very different word counts (8192x28672 at 16 tokens: 22% slower
// than random order, RESULTS.md session 16); a search of the unit offsets inside the kernel
// cost ~3% on every layer (session 16, bench/experiments/stream_balanced_ranges.patch).
// Cuts are clamped into [0, total] and ordered, so that a table that does not belong to the layer
// gives wrong sums but never reads out of bounds.
struct FlatRange {
  std::int64_t begin, end;
};
__device__ __forceinline__ std::int64_t quantile_cut(const std::int32_t* q, int count,
                                                     std::int64_t total, int block, int blocks) {
  if (block <= 0) return 0;
  if (block >= blocks) return total;
  const std::int64_t steps = count - 1;
  const std::int64_t at = steps * block;  // position b / blocks of the work, in 1/blocks steps
  const std::int64_t j = at / blocks, frac = at - j * blocks;
  const std::int64_t lo = q[j], hi = frac ? q[j + 1] : lo;
  const std::int64_t cut = lo + (hi - lo) * frac / blocks;
  return cut < 0 ? 0 : (cut > total ? total : cut);
}
__device__ __forceinline__ FlatRange block_range(const StreamParams& p, std::int64_t total,
                                                 int block, int blocks) {
  FlatRange r;
  if (p.work_quantiles == nullptr) {
    r.begin = total * block / blocks;
    r.end = total * (block + 1) / blocks;
    return r;
  }
  r.begin = quantile_cut(p.work_quantiles, p.work_quantile_count, total, block, blocks);
  r.end = quantile_cut(p.work_quantiles, p.work_quantile_count, total, block + 1, blocks);
  if (r.end < r.begin) r.end = r.begin;  // (a table not non-decreasing: see above)
  return r;
}

// The piece of the block's flattened unit range that starts at `flat`: chunk, first unit, count
// (at most kPiece, never across a chunk or the range's end). Every role walks the same sequence.
template <int kPiece>
struct StreamPiece {
  int chunk, unit0, n;
  __device__ __forceinline__ StreamPiece(std::int64_t flat, std::int64_t end, int units) {
    chunk = static_cast<int>(flat / units);
    unit0 = static_cast<int>(flat - static_cast<std::int64_t>(chunk) * units);
    n = static_cast<int>(min(static_cast<std::int64_t>(min(kPiece, units - unit0)), end - flat));
  }
};

}  // namespace radio::cuda
