// The consumer side of the stream kernel (stream_kernel.cuh), whatever decodes the units: the walk
// over the block's pieces (wait for the staged x, wait for the ring stages a unit's word rows sit
// in, release the stages behind, hand the piece's xs back), and the chunk completion (workspace
// atomics, counter, last block writes y). Two decoders plug into it: the mma decoder of 1..16
// tokens (stream_kernel.cuh) and the half2 one-token decoder (stream_h2.cuh). A decoder holds its
// warp's partial sums and provides
//   reset()                       zero them (a new chunk);
//   add_term(terms, stagers)      add a piece's chunk term (group 0's warps only);
//   unit(depth, v, ring_row, xs)  decode unit v of the piece (depth >= 1) whose first word row
//                                 is at `ring_row` of the ring, xs = the piece's staged x * scale;
//   flush(chunk)                  add the partial sums to the workspace.
#pragma once

#include <cstdint>

#include "block_units.cuh"  // count_block_done
#include "common.cuh"
#include "stream_layout.cuh"
#include "tma.cuh"

namespace radio::cuda {

// Shared memory the consumers read or signal (laid out by stream_kernel).
struct StreamConsumerSmem {
  const std::uint32_t* unit_info;  // per piece buffer: depth | word rows before the unit << 8
  const std::uint16_t* xs;         // per piece buffer: x * scale, xs_buf_halves apart
  int xs_buf_halves;
  const float* term;               // per piece buffer and stager: the piece's chunk terms
  int* flag;
  std::uint64_t *stage_full, *stage_empty, *xs_full, *xs_empty;
  // The block's flattened unit range [range[0], range[1]) (block_range), read from shared memory
  // where it is used (kept in registers through the walk, session 16's 16-token builds spilled).
  const volatile int* range;
};

// After every consumer thread has added its partial sums of `chunk` to the workspace [n][m]:
// adds the block's `seg_units` units of the chunk to its counter; the block that completes the
// count writes the chunk's rows of y in original row order (+ bias) and resets the counter.
// Consumer threads only (named barrier 1 over `consumer_threads`).
template <typename Act>
__device__ __forceinline__ void stream_complete_chunk(const StreamParams& p, int chunk,
                                                      int seg_units, int* s_flag, int tid,
                                                      int consumer_threads) {
  const int m = p.m;
  // one fence per block, by the counting thread (block_units.cuh's count_block_done says why)
  if (p.fence_all) __threadfence();
  named_barrier(1, consumer_threads);
  if (tid == 0) *s_flag = count_block_done(p.counters + chunk, seg_units, p.units);
  named_barrier(1, consumer_threads);
  if (*s_flag) {
    if (p.fence_all) __threadfence();
    Act* y = static_cast<Act*>(p.y);
    const std::int64_t perm_row0 = static_cast<std::int64_t>(chunk) * kStreamRows;
    for (int i = tid; i < kStreamRows * m; i += consumer_threads) {
      const int row = i / m, t = i - row * m;
      const std::int64_t prow = perm_row0 + row;
      write_row_output(p.workspace + prow * m + t, prow, t, p.row_perm, p.bias, y, p.n);
    }
    if (tid == 0) p.counters[chunk] = 0;
  }
}

// The walk of one consumer warp of group `group` (units v = group, group + kGroups, ... of each
// piece) over the block's flattened unit range sm.range, whose word rows the producer streams as
// n_stages stages.
template <typename Act, int kPiece, int kGroups, typename Decoder>
__device__ __forceinline__ void stream_consume(Decoder& dec, const StreamParams& p,
                                               const StreamConsumerSmem& sm, int n_stages,
                                               int group, int lane, int tid,
                                               int consumer_threads) {
  int pos = 0;       // word rows of the stream behind the current piece
  int ring_row = 0;  // pos modulo kStreamRingRows
  // Stages this warp has seen full (the next one's slot and phase parity), and released.
  int waited = 0, wait_slot = 0, released = 0, release_slot = 0;
  unsigned wait_parity = 0;
  auto wait_next_stage = [&]() {
    mbar_wait(&sm.stage_full[wait_slot], wait_parity);
    ++waited;
    if (++wait_slot == kStreamStages) {
      wait_slot = 0;
      wait_parity ^= 1u;
    }
  };
  // Stages wholly behind word row `upto` go back to the producer, each after this warp saw it
  // full (an arrival must count in the phase of that use of the slot).
  auto release_behind = [&](int upto) {
    const int done = static_cast<int>(static_cast<unsigned>(upto) / kStreamStageRows);
    if (released < done) {
#pragma unroll 1
      while (waited < done) wait_next_stage();
      __syncwarp();
#pragma unroll 1
      for (; released < done; ++released) {
        if (lane == 0) mbar_arrive(&sm.stage_empty[release_slot]);
        if (++release_slot == kStreamStages) release_slot = 0;
      }
    }
  };
  int chunk = -1, seg_units = 0;
  auto finish_chunk = [&]() {
    dec.flush(chunk);
    stream_complete_chunk<Act>(p, chunk, seg_units, sm.flag, tid, consumer_threads);
  };

  int k = 0;
  for (std::int64_t flat = sm.range[0]; flat < sm.range[1]; ++k) {
    const StreamPiece<kPiece> pc(flat, sm.range[1], p.units);
    flat += pc.n;
    const int buf = k % kStreamXsBufs;
    mbar_wait(&sm.xs_full[buf], (k / kStreamXsBufs) & 1);
    if (pc.chunk != chunk) {
      if (chunk >= 0) finish_chunk();
      chunk = pc.chunk;
      seg_units = 0;
      dec.reset();
    }
    seg_units += pc.n;
    // the piece's chunk term, once per row
    if (group == 0) dec.add_term(sm.term + buf * kStreamMaxBufStagers * 16, p.buf_stagers);
    const std::uint32_t* infos = sm.unit_info + buf * kStreamMaxPieceUnits;
    const std::uint16_t* xs = sm.xs + buf * sm.xs_buf_halves;
    // Only this group's units: the stagers' prefix sums say where each one starts, so the warp
    // does not walk the other groups' units (session 11, ncu: that walk and its bookkeeping were
    // ~27 of the ~110 instructions the warp issued per decoded unit at 1 token).
    for (int v = group; v < pc.n; v += kGroups) {
      const std::uint32_t info = infos[v];
      const int d = static_cast<int>(info & 0xffu);
      const int before = static_cast<int>(info >> 8);  // the piece's word rows before unit v
      const int upos = pos + before;
      if (d > 0) {
        const int need = static_cast<int>(static_cast<unsigned>(upos + d - 1) / kStreamStageRows);
#pragma unroll 1
        while (waited <= need) wait_next_stage();
        // ring_row < kStreamRingRows, before <= 31 * 8: the sum is below 4 ring lengths.
        const int row = static_cast<int>(static_cast<unsigned>(ring_row + before) %
                                         static_cast<unsigned>(kStreamRingRows));
        dec.unit(d, v, row, xs);
      }
      release_behind(upos + d);
    }
    {  // past the piece: its last unit ends the word rows it covers
      const std::uint32_t last = infos[pc.n - 1];
      const int piece_rows = static_cast<int>(last >> 8) + static_cast<int>(last & 0xffu);
      pos += piece_rows;
      ring_row = static_cast<int>(static_cast<unsigned>(ring_row + piece_rows) %
                                  static_cast<unsigned>(kStreamRingRows));
      release_behind(pos);
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&sm.xs_empty[buf]);
  }
  if (chunk >= 0) finish_chunk();
  // No copy may land after the block exits.
#pragma unroll 1
  while (waited < n_stages) wait_next_stage();
}

}  // namespace radio::cuda
