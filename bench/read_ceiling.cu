// What a kernel that only reads can reach on this GPU, timed the way bench_gemm.py times radio:
// back-to-back launches captured in a CUDA graph, each reading its own copy of the bytes (copies
// rotate beyond 2x the L2), at the byte counts of the benchmark's layers (Llama-2-7B up/down,
// Llama-2-70B, OPT-175B at 4 bpw) and of a 2 GiB reference read.
//
// Why (bench/KERNELS.md sessions 12-13): both radio one-token kernels, with their decode removed,
// stream at only 0.73-0.79 of the read bandwidth, and their time fits "bytes at the full
// bandwidth + 17-27 us" across rates: a cost per call, not per byte. This program measures, with
// no decode and no side information, how much of that a pure read pays for each load structure:
//   grid      grid-stride 16-byte loads, 4 in flight per thread (what torch.sum does)
//   ldg32/128 hgemv's structure: 256-thread blocks, 4 per SM (45 KB of shared memory each, as
//             hgemv's tables), ~2 waves, each block a contiguous range, 8 loads in flight per
//             thread of 4 (hgemv's word loads) or 16 bytes
//   persist   one 1024-thread block per SM, a contiguous range, 8 x 16-byte loads per thread
//   tma8/16   the stream kernel's structure: one block per SM, a producer lane issuing 1-D bulk
//             copies (cp.async.bulk) of 8 or 16 KB stages into a 96 KB ring, 16 consumer warps
// and per structure three launch modes:
//   plain     kernel after kernel (what radio does now: the graph's kernel nodes back to back)
//   memset    a 196 KB cudaMemsetAsync before each kernel (radio's split-K workspace node)
//   pdl       programmatic dependent launch: each block lets the next launch start at once
//             (griddepcontrol.launch_dependents), issues its reads, and waits for the previous
//             grid (griddepcontrol.wait) only before its one global write; tma: the producer
//             streams before the wait, the consumers wait before their first stage (what a decode
//             kernel that reads x after the wait could do)
//
// Build and run on the GPU machine (no torch, no radio build needed):
//   nvcc -std=c++17 -O3 -arch=sm_90 -I cuda -o /tmp/read_ceiling bench/read_ceiling.cu && /tmp/read_ceiling
// Prints one line per (bytes, structure, mode): microseconds per call (median of 7 graph replays)
// and GB/s, and the fraction of the 2 GiB grid read.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "graph_bench.cuh"
#include "tma.cuh"

using radio::cuda::mbar_arrive;
using radio::cuda::mbar_arrive_expect_tx;
using radio::cuda::mbar_init;
using radio::cuda::mbar_init_fence;
using radio::cuda::mbar_wait;
using radio::cuda::smem_addr;

__device__ __forceinline__ uint4 load_stream(const uint4* p) { return __ldcs(p); }
__device__ __forceinline__ std::uint32_t load_stream(const std::uint32_t* p) { return __ldcs(p); }
__device__ __forceinline__ std::uint32_t fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }
__device__ __forceinline__ std::uint32_t fold(std::uint32_t v) { return v; }

// The one global write of every kernel: a value the loads determine, stored only when it matches
// a constant no buffer here hits, so the loads cannot be removed and nothing is written in a
// timed launch (the pdl wait still guards it, as a real kernel's output). `check` (untimed
// launches only): XOR of every thread's fold, so the host can check every byte was read once.
__device__ __forceinline__ void keep(std::uint32_t acc, std::uint32_t* out, bool pdl,
                                     std::uint32_t* check) {
  if (pdl) pdl_wait();
  if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;
  if (check != nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicXor(check, acc);
  }
}

// grid-stride, 4 loads of 16 bytes in flight per thread.
__global__ void read_grid(const uint4* __restrict__ a, std::size_t n, std::uint32_t* out,
                          bool pdl, std::uint32_t* check) {
  if (pdl) pdl_trigger();
  std::uint32_t acc = 0;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 v0 = load_stream(a + i), v1 = load_stream(a + i + stride),
                v2 = load_stream(a + i + 2 * stride), v3 = load_stream(a + i + 3 * stride);
    acc ^= fold(v0) ^ fold(v1) ^ fold(v2) ^ fold(v3);
  }
  for (; i < n; i += stride) acc ^= fold(load_stream(a + i));
  keep(acc, out, pdl, check);
}

// A contiguous range per block, kU loads of V in flight per thread (blocks of any size).
template <typename V, int kU>
__global__ void __launch_bounds__(1024, 1) read_ranges(const V* __restrict__ a, std::size_t n, std::uint32_t* out, bool pdl,
                            std::uint32_t* check) {
  extern __shared__ unsigned char occupancy_only[];  // sized by the launch: blocks per SM
  if (pdl) pdl_trigger();
  const std::size_t begin = n * blockIdx.x / gridDim.x, end = n * (blockIdx.x + 1) / gridDim.x;
  std::uint32_t acc = 0;
  std::size_t i = begin + threadIdx.x;
  const std::size_t step = blockDim.x;
  for (; i + (kU - 1) * step < end; i += kU * step) {
    V v[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) v[u] = load_stream(a + i + u * step);
#pragma unroll
    for (int u = 0; u < kU; ++u) acc ^= fold(v[u]);
  }
  for (; i < end; i += step) acc ^= fold(load_stream(a + i));
  if (acc == 0x12345u) occupancy_only[threadIdx.x] = 1;
  keep(acc, out, pdl, check);
}

// The stream kernel's structure without its decode: warp 0 lane 0 issues 1-D bulk copies of
// kStage bytes into a ring of kRing bytes; warps 1..16 each fold their 1/16 of every stage from
// shared memory and release it.
constexpr int kRing = 96 * 1024;
constexpr int kConsumerWarps = 16;

__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes,
                                          std::uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_addr(dst)),
      "l"(src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}

template <int kStage>
__global__ void __launch_bounds__(32 * (kConsumerWarps + 1), 1)
    read_tma(const unsigned char* __restrict__ a, std::size_t bytes, std::uint32_t* out, bool pdl,
             std::uint32_t* check) {
  constexpr int kStages = kRing / kStage;
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ std::uint64_t full[kStages], empty[kStages];
  if (pdl) pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();
  const std::size_t total = (bytes + kStage - 1) / kStage;
  const std::size_t first = total * blockIdx.x / gridDim.x, last = total * (blockIdx.x + 1) / gridDim.x;
  const int n = static_cast<int>(last - first);
  if (warp == 0) {
    if (lane == 0)
      for (int j = 0; j < n; ++j) {
        const int s = j % kStages, use = j / kStages;
        if (use > 0) mbar_wait(&empty[s], (use - 1) & 1);
        const std::size_t off = (first + j) * static_cast<std::size_t>(kStage);
        const std::size_t left = bytes - off;
        const unsigned len = static_cast<unsigned>(left < kStage ? left : kStage);
        mbar_arrive_expect_tx(&full[s], len);
        bulk_load(ring + s * kStage, a + off, len, &full[s]);
      }
    return;
  }
  if (pdl) pdl_wait();  // a decode kernel reads x only after the previous grid
  const int c = warp - 1;
  std::uint32_t acc = 0;
  for (int j = 0; j < n; ++j) {
    const int s = j % kStages;
    mbar_wait(&full[s], (j / kStages) & 1);
    const uint4* st = reinterpret_cast<const uint4*>(ring + s * kStage);
    for (int q = c * 32 + lane; q < kStage / 16; q += 32 * kConsumerWarps) acc ^= fold(st[q]);
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[s]);
  }
  keep(acc, out, false, check);
}

struct Launch {
  std::string name;
  void (*fn)(const void* buf, std::size_t bytes, std::uint32_t* out, bool pdl, int sms,
             cudaStream_t s, std::uint32_t* check);
};

void launch_grid(const void* buf, std::size_t bytes, std::uint32_t* out, bool pdl, int sms,
                 cudaStream_t s, std::uint32_t* check) {
  launch(read_grid, dim3(sms * 4), dim3(512), 0, pdl, s, static_cast<const uint4*>(buf),
         bytes / 16, out, pdl, check);
}

template <typename V>
void launch_hgemv_like(const void* buf, std::size_t bytes, std::uint32_t* out, bool pdl, int sms,
                       cudaStream_t s, std::uint32_t* check) {
  constexpr int kSmem = 45 * 1024;  // hgemv's tables: 4 blocks per SM
  static bool once = [] {
    CHECK(cudaFuncSetAttribute(read_ranges<V, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    return true;
  }();
  (void)once;
  launch(read_ranges<V, 8>, dim3(sms * 8), dim3(256), kSmem, pdl, s, static_cast<const V*>(buf),
         bytes / sizeof(V), out, pdl, check);
}

void launch_persist(const void* buf, std::size_t bytes, std::uint32_t* out, bool pdl, int sms,
                    cudaStream_t s, std::uint32_t* check) {
  launch(read_ranges<uint4, 8>, dim3(sms), dim3(1024), 0, pdl, s, static_cast<const uint4*>(buf),
         bytes / 16, out, pdl, check);
}

template <int kStage>
void launch_tma(const void* buf, std::size_t bytes, std::uint32_t* out, bool pdl, int sms,
                cudaStream_t s, std::uint32_t* check) {
  static bool once = [] {
    CHECK(cudaFuncSetAttribute(read_tma<kStage>, cudaFuncAttributeMaxDynamicSharedMemorySize, kRing));
    return true;
  }();
  (void)once;
  launch(read_tma<kStage>, dim3(sms), dim3(32 * (kConsumerWarps + 1)), kRing, pdl, s,
         static_cast<const unsigned char*>(buf), bytes, out, pdl, check);
}

// Median microseconds per launch of a graph of launches rotating over `copies` (graph_bench.cuh),
// each after a 196 KB memset node in mode "memset", with PDL in mode "pdl".
double time_calls(const Launch& l, const std::vector<void*>& copies, std::size_t bytes,
                  std::uint32_t* out, void* ws, const std::string& mode, int sms, cudaStream_t s) {
  const int calls = static_cast<int>(std::max<std::size_t>(12, copies.size()));
  const bool pdl = mode == "pdl";
  for (int i = 0; i < 2; ++i) l.fn(copies[i % copies.size()], bytes, out, false, sms, s, nullptr);
  return graph_us_per_call(calls, s, [&](int i) {
    if (mode == "memset") CHECK(cudaMemsetAsync(ws, 0, 196 * 1024, s));
    l.fn(copies[i % copies.size()], bytes, out, pdl, sms, s, nullptr);
  });
}

// Word i of copy c: i * 2654435761 ^ c (every kernel's XOR over the copy is checked against the
// host's before timing: each word read exactly once).
__global__ void fill(std::uint32_t* a, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    a[i] = static_cast<std::uint32_t>(i * 2654435761u) ^ seed;
}

int main() {
  const BenchSetup b = bench_setup();
  const int sms = b.sms, l2 = b.l2;
  cudaStream_t s = b.stream;
  std::uint32_t* out = b.out;
  void* ws = b.scratch;
  std::uint32_t* check;
  CHECK(cudaMalloc(&check, 4));

  const std::vector<Launch> launches = {
      {"grid", launch_grid},
      {"ldg32", launch_hgemv_like<std::uint32_t>},
      {"ldg128", launch_hgemv_like<uint4>},
      {"persist", launch_persist},
      {"tma8", launch_tma<8 * 1024>},
      {"tma16", launch_tma<16 * 1024>},
  };
  // 11008x4096, 28672x8192 and 49152x12288 at 4 bits per weight (words only), then 2 GiB.
  const std::vector<std::pair<std::string, std::size_t>> sizes = {
      {"11008x4096", 11008ull * 4096 / 2},
      {"28672x8192", 28672ull * 8192 / 2},
      {"49152x12288", 49152ull * 12288 / 2},
      {"2GiB", 2ull << 30},
  };
  double ref_bw = 0;
  std::printf("%-12s %-8s %-7s %10s %9s %8s\n", "bytes", "kernel", "mode", "us", "GB/s", "of_ref");
  for (int si = static_cast<int>(sizes.size()) - 1; si >= 0; --si) {  // the reference first
    const std::size_t bytes = sizes[si].second;
    std::vector<void*> copies(bytes >= (1ull << 30) ? 1 : copies_beyond_l2(bytes, l2));
    for (std::size_t c = 0; c < copies.size(); ++c) {
      CHECK(cudaMalloc(&copies[c], bytes));
      fill<<<sms * 8, 256, 0, s>>>(static_cast<std::uint32_t*>(copies[c]), bytes / 4,
                                   static_cast<std::uint32_t>(c));
    }
    CHECK(cudaStreamSynchronize(s));
    std::uint32_t expect = 0;
    for (std::size_t i = 0; i < bytes / 4; ++i) expect ^= static_cast<std::uint32_t>(i * 2654435761u);
    for (const Launch& l : launches) {
      CHECK(cudaMemsetAsync(check, 0, 4, s));
      l.fn(copies[0], bytes, out, false, sms, s, check);
      std::uint32_t got = 0;  // copy 0 has seed 0: its XOR is the index pattern's
      CHECK(cudaMemcpyAsync(&got, check, 4, cudaMemcpyDeviceToHost, s));
      CHECK(cudaStreamSynchronize(s));
      if (got != expect) {
        std::printf("%s on %s: XOR of the words read %08x, expected %08x: not every word read once\n",
                    l.name.c_str(), sizes[si].first.c_str(), got, expect);
        return 1;
      }
      for (const char* mode : {"plain", "memset", "pdl"}) {
        if (bytes >= (1ull << 30) && std::string(mode) != "plain") continue;
        const double us = time_calls(l, copies, bytes, out, ws, mode, sms, s);
        const double bw = bytes / (us * 1e-6) / 1e9;
        if (ref_bw == 0) ref_bw = bw;  // the grid read of 2 GiB
        std::printf("%-12s %-8s %-7s %10.2f %9.1f %8.3f\n", sizes[si].first.c_str(),
                    l.name.c_str(), mode, us, bw, bw / ref_bw);
        std::fflush(stdout);
      }
    }
    for (void* c : copies) CHECK(cudaFree(c));
  }
  CHECK(cudaGetLastError());
  return 0;
}
