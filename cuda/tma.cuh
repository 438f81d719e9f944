// sm_90 asynchronous copies and transaction barriers (PTX ISA 8.0: mbarrier, cp.async.bulk.tensor)
// for the streaming kernel (stream_kernel.cuh). Written as inline PTX because the kernels take no
// dependency beyond the CUDA runtime and CUB; each wrapper is one instruction of the PTX manual.
// Only sm_90 code calls them (the callers are compiled under __CUDA_ARCH__ >= 900).
#pragma once

#include <cstdint>

#include "common.cuh"  // smem_addr

namespace radio::cuda {

// An mbarrier expecting `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(std::uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count));
}

// Makes the initialised barriers visible to the async proxy (the TMA unit) and to other threads
// (after the block barrier that follows).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbar_arrive(std::uint64_t* bar) {
  asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar))
               : "memory");
}

// One arrival that also announces `bytes` of asynchronous copies completing on this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   smem_addr(bar)),
               "r"(bytes)
               : "memory");
}

// Blocks until the phase of parity `parity` has completed (try_wait suspends in hardware for a
// while before returning false; the loop retries).
__device__ __forceinline__ void mbar_wait(std::uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

// mbar_wait for warps that are usually ahead (the stream kernel's stagers and producer): try_wait
// with a suspend-time hint, so a waiting warp sleeps until the phase completes (or kHintNs pass)
// instead of retrying. Without the hint the retry loop of the stagers took 14% of the stream
// kernel's issued instructions at 1 token (ncu, session 11), issue slots the decode needed.
template <unsigned kHintNs>
__device__ __forceinline__ void mbar_wait_sleep(std::uint64_t* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.acquire.cta.shared::cta.b64 done, [%0], %1, %2;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity), "n"(kHintNs)
      : "memory");
}

// A 2-D box of the tensor map at element coordinates (x, y) into shared memory, completing as
// transaction bytes on `bar`. The weights are read once per call: evict them from L2 first.
__device__ __forceinline__ void tma_load_2d(void* dst, const void* tensor_map, int x, int y,
                                            std::uint64_t* bar, std::uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      ".L2::cache_hint [%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(smem_addr(dst)),
      "l"(tensor_map), "r"(x), "r"(y), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
}

__device__ __forceinline__ std::uint64_t l2_evict_first_policy() {
  std::uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}

// Named barrier over the first `threads` threads' warps (id 1..15; 0 is __syncthreads).
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace radio::cuda
