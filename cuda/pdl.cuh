// Programmatic dependent launch (sm_90): the device side of the decode kernels' overlap with the
// kernel before them on the stream.
//
// Why (bench/read_ceiling.cu, H100, RESULTS.md session 14): back-to-back grid-stride reads of a
// layer's bytes in a CUDA graph reach 0.82-0.99 of the read bandwidth kernel after kernel; letting
// each one start while the previous drains reaches 0.96-1.00 (a 22.5 MB Llama-2-7B layer: 8.8 ->
// 7.5 us), and a memset node between them (the K split's workspace) costs another 1.0-1.5 us.
//
// The contract of a kernel launched with the attribute (launch.cuh, `pdl` of the config):
// - pdl_allow_next() lets the next kernel on the stream be scheduled onto SMs as this one's blocks
//   leave (it still waits in pdl_wait_previous() for this one to finish): once a block's words
//   are read, where blocks of the next kernel could wait beside it (gemv, hgemv), at the start
//   where they cannot (the stream kernel's block takes most of an SM's shared memory);
// - before pdl_wait_previous() it writes nothing to global memory and uses no value it reads
//   there: its only traffic is L2 prefetches of its own layer's inputs (any of which the previous
//   kernel may still be writing, e.g. a weight load: a prefetch of stale lines is harmless, a load
//   would not be), and one read of a unit offset that only places the word prefetch, clamped to
//   qweight so that even a stale offset stays in bounds (read past L1, __ldcg, so that a load of
//   the same address after the wait cannot hit a line filled before it);
// - after it, the kernel is ordinary.
// Without the launch attribute both instructions return at once; before sm_90 they are not emitted.
#pragma once

#include <cstdint>

namespace radio::cuda {

__device__ __forceinline__ void pdl_allow_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_wait_previous() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Asks L2 for bytes [offset, offset + bytes) of an array of `total` bytes at `base` (one thread
// calls it): the range is clamped to the array, and to 16-byte boundaries inside it
// (cp.async.bulk.prefetch's rule); an empty or out-of-range request does nothing. A prefetch only
// moves data into L2: it cannot fault on a clamped range and changes no value anyone reads.
__device__ __forceinline__ void prefetch_l2(const void* base, std::int64_t total,
                                            std::int64_t offset, std::int64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (total <= 0 || offset < 0 || offset >= total || bytes <= 0) return;
  const std::uintptr_t b = reinterpret_cast<std::uintptr_t>(base);
  const std::uintptr_t start = (b + static_cast<std::uintptr_t>(offset) + 15) & ~std::uintptr_t{15};
  const std::int64_t want_end = offset + bytes < total ? offset + bytes : total;
  const std::uintptr_t stop = (b + static_cast<std::uintptr_t>(want_end)) & ~std::uintptr_t{15};
  if (stop <= start) return;
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(start),
               "r"(static_cast<unsigned>(stop - start))
               : "memory");
#endif
}

// What a decode block reads first, asked into L2 before its wait (one thread calls it): up to
// `word_bytes` of its words from its first unit's offset (read here from unit_offset, past L1: a
// stale value only misplaces the prefetch), and the side information of its positions [pos0,
// pos0 + npos) and units [unit0, unit0 + n_units) (col_perm, scale, loc, depth, unit_offset:
// [C, Kp] and [C, U]).
template <typename P>
__device__ __forceinline__ void prefetch_block_inputs(const P& p, std::int64_t unit0, int n_units,
                                                      std::int64_t pos0, int npos,
                                                      int word_bytes) {
  const std::int64_t chunks = (p.n + p.gs - 1) / p.gs;
  const std::int64_t positions = chunks * p.padded_k, units = chunks * p.units;
  prefetch_l2(p.col_perm, 4 * positions, 4 * pos0, 4LL * npos);
  prefetch_l2(p.scale, 2 * positions, 2 * pos0, 2LL * npos);
  prefetch_l2(p.loc, 2 * positions, 2 * pos0, 2LL * npos);
  prefetch_l2(p.depth, units, unit0, n_units);
  prefetch_l2(p.unit_offset, 4 * units, 4 * unit0, 4LL * n_units);
  if (p.qweight_words > 0)
    prefetch_l2(p.qweight, 4 * p.qweight_words, 4LL * __ldcg(p.unit_offset + unit0), word_bytes);
}

// The start of a K-split decode block (gemv, hgemv) of chunk `chunk` and units [u_begin, u_begin
// + n_units): thread 0 asks L2 for the block's inputs (up to `word_bytes` of its words), then
// every thread waits for the previous kernel.
template <typename P>
__device__ __forceinline__ void decode_block_wait_previous(const P& p, int chunk, int u_begin,
                                                           int n_units, int tid, int word_bytes) {
  if (tid == 0)
    prefetch_block_inputs(p, static_cast<std::int64_t>(chunk) * p.units + u_begin, n_units,
                          static_cast<std::int64_t>(chunk) * p.padded_k + 32LL * u_begin,
                          32 * n_units, word_bytes);
  pdl_wait_previous();
}

}  // namespace radio::cuda
