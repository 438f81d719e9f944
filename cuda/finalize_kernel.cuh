// The K split's output as a kernel of its own (deferred output, set_defer_output): the decode
// blocks (gemv, hgemv) only add their f32 partial sums to the zeroed workspace and leave; this
// kernel, launched right after them on the stream with programmatic dependent launch, waits for
// the whole decode grid (griddepcontrol.wait: every block done, its writes visible), then writes
// y[t, row_perm[r]] = partial[r][t] + bias and zeroes the partials again, as the chunk's last
// block does otherwise (block_units.cuh write_k_split_rows: a kept workspace stays zero).
//
// Why (bench/KERNELS.md session 18): with the last-block scheme every decode block ends with a
// fence behind its atomics and a round trip on its chunk's counter (the last one with another
// round trip for the partials): ~2-3 us per block in which it holds its SM slot and has no words
// in flight, paid once per block and wave (49152x12288 at 4 waves: 4 times per slot; the
// structure ladder of session 15 put the K-split output at ~9 us of that layer's ~135). Here a
// block's end is its atomics, and the output is one short kernel whose launch overlaps the decode
// grid's tail. Measured (H100, bench/RESULTS.md session 19): 7-21% faster at two tokens, 0-1% on
// hgemv's large layers, 6-11% on small one-token layers, but 3-10% slower timed alone on the
// one-token layers of 8192+ rows whose grid is one wave; end to end faster on both decode
// benchmarks (Llama-2-7B shapes 6.037 against 6.137 ms per token at 4 bpw), so the default
// (select_config.cu defer_output_pays) takes it on every one- and two-token gemv / hgemv call.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "block_units.cuh"  // write_row_output
#include "pdl.cuh"

namespace radio::cuda {

constexpr int kFinalizeThreads = 256;

struct FinalizeParams {
  float* workspace;                 // [n][ws_stride] f32 partials, permuted rows
  const std::int32_t* row_perm;     // [n]
  const __half* bias;               // [n] or null
  void* y;                          // [m, n] in Act
  int n, m, ws_stride;
};

// Thread = one (permuted row, token) of the n x m outputs.
template <typename Act>
__global__ void __launch_bounds__(kFinalizeThreads) finalize_rows_kernel(const FinalizeParams p) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  const std::int64_t rows0 = static_cast<std::int64_t>(blockIdx.x) * kFinalizeThreads / p.m;
  // Before the wait only L2 prefetches of layer constants (pdl.cuh's contract): the block's
  // row_perm entries; bias follows row_perm's values, so it is read after the wait.
  if (threadIdx.x == 0) prefetch_l2(p.row_perm, 4LL * p.n, 4 * rows0, 4LL * kFinalizeThreads / p.m + 16);
  pdl_wait_previous();
  pdl_allow_next();  // the next kernel may be scheduled; it waits for this one to finish
  if (i >= static_cast<std::int64_t>(p.n) * p.m) return;
  const std::int64_t row = i / p.m;
  const int t = static_cast<int>(i - row * p.m);
  write_row_output(p.workspace + row * p.ws_stride + t, row, t, p.row_perm, p.bias,
                   static_cast<Act*>(p.y), p.n);
}

}  // namespace radio::cuda
