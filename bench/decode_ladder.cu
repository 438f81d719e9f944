// hgemv's one-token structure (cuda/hgemv_kernel.cuh) rebuilt one part at a time, with no decode,
// to find which part takes the ~20% between radio's one-token kernels (0.72-0.79 of the read
// bandwidth even as skeletons, bench/KERNELS.md sessions 12-13) and a plain read of the same bytes
// (0.89-0.98, bench/read_ceiling.cu, session 14). Each rung adds one part to the one before:
//   words    blocks of two 128-thread groups, 4 per SM (45 KB of shared memory each: hgemv's
//            tables), a K split of ~2 waves (hgemv's rule); a thread reads rows r and r + 128 of
//            every other unit of its block's range, 4 words each (depth 4), the next unit's
//            requested before the current one is XORed (hgemv_walk's order); unit offsets computed
//   units    + the block's unit depths and offsets loaded into shared memory first (one barrier)
//   staging  + xs = scale * x[col_perm] (int32 col_perm, f16 scale, loc: 8 bytes per position and
//            chunk) and the chunk term staged for the block's positions before the barrier, each
//            unit's xs read in the loop
//   output   + the K split's output: f32 atomics per row into a workspace, a counter per chunk,
//            the chunk's last block writes y in original row order and zeroes the workspace
//   memset   output, after a memset node per kernel (radio's launch before session 14)
//   pdl      output with programmatic dependent launch as cuda/pdl.cuh (L2 prefetch of the
//            block's first words, wait, trigger after the words)
//   words8, output8   words and output with a thread's rows 2t, 2t + 1: one 8-byte load per
//            plane for both rows instead of two 4-byte ones
//   output1  output with one fence per block, by the counting thread after the barrier
//            (cuda/block_units.cuh count_block_done, session 15), where output has every thread
//            fence before it (the kernels before session 15); pdl1 the same with PDL
// Every rung reads its own copy of a random layer of each shape at depth 4 (copies rotate beyond
// 2x the L2), timed as bench_gemm.py times radio (graph_bench.cuh). After the output rungs the
// workspace and counters must be zero again (checked).
//
// Build and run on the GPU machine (no torch, no radio build needed):
//   nvcc -std=c++17 -O3 -arch=sm_90 -o /tmp/decode_ladder bench/decode_ladder.cu && /tmp/decode_ladder
// Prints, per shape and rung, microseconds per call and the words' bytes per second.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "graph_bench.cuh"

namespace {

constexpr int kRows = 256;          // chunk rows: two 128-thread groups, rows r and r + 128
constexpr int kDepth = 4;           // every unit: 4 word rows of 256 words
constexpr int kUnitWords = kDepth * kRows;
constexpr int kBlockSmem = 45 * 1024;  // hgemv's tables: 4 blocks per SM
constexpr int kMaxUnits = 256;         // units per block (xs: 16 KB of halves)

enum Rung { kWords = 0, kUnits = 1, kStaging = 2, kOutput = 3 };

struct Layer {
  const std::uint32_t* qweight;
  const std::int32_t* unit_offset;  // [C, U]
  const std::uint8_t* depth;        // [C, U]
  const std::int32_t* col_perm;     // [C, K]
  const __half* scale;              // [C, K]
  const __half* loc;                // [C, K]
  const __half* x;                  // [K]
  const std::int32_t* row_perm;     // [N]
  float* ws;                        // [N], zero between calls
  int* counters;                    // [C], zero between calls
  __half* y;                        // [N]
  int n, k, units, units_per_split, splits;
  std::int64_t words;
};

__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

template <int kRung, bool kPdl, bool kPairs, bool kOneFence>
__global__ void __launch_bounds__(256, 4) ladder_kernel(const Layer L, std::uint32_t* out) {
  extern __shared__ __align__(16) unsigned char smem[];
  __half* xs = reinterpret_cast<__half*>(smem);
  std::int32_t* s_off = reinterpret_cast<std::int32_t*>(smem + 2 * 32 * kMaxUnits);
  std::uint8_t* s_dep = reinterpret_cast<std::uint8_t*>(s_off + kMaxUnits);
  __shared__ float s_partial[kRows], s_term[8];
  __shared__ int s_last;
  const int chunk = blockIdx.x, u_begin = blockIdx.y * L.units_per_split;
  const int n_units = min(L.units, u_begin + L.units_per_split) - u_begin;
  const int tid = threadIdx.x, group = tid >> 7, row = tid & 127, lane = tid & 31;
  const std::int64_t unit0 = static_cast<std::int64_t>(chunk) * L.units + u_begin;
  if (kPdl) {
    if (tid == 0) {
      const std::int64_t first = unit0 * kUnitWords;  // uniform depth: the unit's word offset
      const std::int64_t left = (L.words - first) * 4;
      prefetch_l2(L.qweight + first, static_cast<unsigned>(left < 16384 ? left : 16384));
    }
    pdl_wait();
  }
  if (kRung >= kUnits)
    for (int i = tid; i < n_units; i += 256) {
      s_dep[i] = L.depth[unit0 + i];
      s_off[i] = L.unit_offset[unit0 + i];
    }
  float term = 0.f;
  if (kRung >= kStaging) {
    const std::int64_t pos0 = static_cast<std::int64_t>(chunk) * L.k + 32LL * u_begin;
    const int npos = 32 * n_units;
    for (int base = tid; base < npos; base += 4 * 256) {
      int col[4];
      float sc[4], lc[4], xv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = min(base + j * 256, npos - 1);
        col[j] = L.col_perm[pos0 + i];
        sc[j] = __half2float(L.scale[pos0 + i]);
        lc[j] = __half2float(L.loc[pos0 + i]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) xv[j] = __half2float(L.x[col[j]]);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = base + j * 256;
        if (i < npos) {
          xs[i] = __float2half_rn(sc[j] * xv[j]);
          term = fmaf(lc[j], xv[j], term);
        }
      }
    }
  }
  if (kRung >= kUnits) __syncthreads();

  // As hgemv_walk: the next unit's words are requested before the current one is used.
  std::uint32_t acc = 0;
  const std::uint32_t* qa = L.qweight + (kPairs ? 2 * row : row);
  auto load_unit = [&](int u, std::uint32_t (&w)[2 * kDepth]) {
    const std::int64_t off = kRung >= kUnits ? s_off[u] : (unit0 + u) * kUnitWords;
    const int d = kRung >= kUnits ? s_dep[u] : kDepth;
#pragma unroll
    for (int j = 0; j < kDepth; ++j) {
      if (kPairs) {
        const uint2 v = j < d ? *reinterpret_cast<const uint2*>(qa + off + j * kRows) : uint2{};
        w[2 * j] = v.x;
        w[2 * j + 1] = v.y;
      } else {
        w[2 * j] = j < d ? qa[off + j * kRows] : 0u;
        w[2 * j + 1] = j < d ? qa[off + j * kRows + 128] : 0u;
      }
    }
  };
  std::uint32_t cur[2 * kDepth] = {}, next[2 * kDepth] = {};
  if (group < n_units) load_unit(group, cur);
#pragma unroll 1
  for (int u = group; u < n_units; u += 2) {
    if (u + 2 < n_units) load_unit(u + 2, next);
    std::uint32_t v = 0;
#pragma unroll
    for (int j = 0; j < 2 * kDepth; ++j) v ^= cur[j];
    if (kRung >= kStaging) v += __half_as_ushort(xs[32 * u + lane]);
    acc ^= v;
#pragma unroll
    for (int j = 0; j < 2 * kDepth; ++j) cur[j] = next[j];
  }
  if (kRung < kOutput) {
    if (acc == 0x9e3779b9u) out[blockIdx.x] = acc;  // keeps the loads; never true here
    return;
  }
  if (kPdl) pdl_trigger();  // the block's words are read (as cuda/gemv_kernel.cuh)
  const float sum = static_cast<float>(acc & 0xffffu) * 1e-6f;  // a value the words determine
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) term += __shfl_xor_sync(0xffffffffu, term, o);
  if (lane == 0) s_term[tid >> 5] = term;
  if (group == 1) s_partial[row] = sum;
  __syncthreads();
  float chunk_term = 0.f;
  for (int w = 0; w < 8; ++w) chunk_term += s_term[w];
  if (group == 0) {
    atomicAdd(L.ws + static_cast<std::int64_t>(chunk) * kRows + row, sum + chunk_term);
    atomicAdd(L.ws + static_cast<std::int64_t>(chunk) * kRows + row + 128, s_partial[row]);
  }
  if (!kOneFence) __threadfence();
  __syncthreads();
  if (tid == 0) {
    if (kOneFence) __threadfence();
    s_last = atomicAdd(&L.counters[chunk], 1) == L.splits - 1;
    if (kOneFence && s_last) __threadfence();
  }
  __syncthreads();
  if (!s_last) return;
  if (!kOneFence) __threadfence();
  for (int i = tid; i < kRows; i += 256) {
    const std::int64_t prow = static_cast<std::int64_t>(chunk) * kRows + i;
    L.y[L.row_perm[prow]] = __float2half_rn(__ldcg(L.ws + prow));
    __stcg(L.ws + prow, 0.f);
  }
  if (tid == 0) L.counters[chunk] = 0;
}

template <typename T>
T* to_device(const std::vector<T>& v) {
  T* p = nullptr;
  CHECK(cudaMalloc(&p, v.size() * sizeof(T)));
  CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

// A random layer of n x k at depth 4 (n a multiple of 256, k of 32) with its launch shape.
Layer make_layer(int n, int k, int sms, std::mt19937& rng) {
  Layer L{};
  const int chunks = n / kRows, units = k / 32;
  L.n = n;
  L.k = k;
  L.units = units;
  const int want = std::max(1, (2 * sms * 4 + chunks - 1) / chunks);  // hgemv: ~2 waves, 4 per SM
  L.units_per_split = std::clamp((units + want - 1) / want, std::min(4, units), kMaxUnits);
  L.splits = (units + L.units_per_split - 1) / L.units_per_split;
  L.words = static_cast<std::int64_t>(chunks) * units * kUnitWords;
  std::vector<std::uint32_t> q(static_cast<std::size_t>(L.words));
  for (auto& w : q) w = rng();
  std::vector<std::int32_t> offsets(static_cast<std::size_t>(chunks) * units);
  for (std::size_t i = 0; i < offsets.size(); ++i) offsets[i] = static_cast<std::int32_t>(i * kUnitWords);
  std::vector<std::uint8_t> depth(offsets.size(), kDepth);
  std::vector<std::int32_t> col(static_cast<std::size_t>(chunks) * k), rows(n);
  for (int c = 0; c < chunks; ++c) {
    std::iota(col.begin() + static_cast<std::ptrdiff_t>(c) * k,
              col.begin() + static_cast<std::ptrdiff_t>(c + 1) * k, 0);
    std::shuffle(col.begin() + static_cast<std::ptrdiff_t>(c) * k,
                 col.begin() + static_cast<std::ptrdiff_t>(c + 1) * k, rng);
  }
  std::iota(rows.begin(), rows.end(), 0);
  std::shuffle(rows.begin(), rows.end(), rng);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::vector<__half> scale(col.size()), loc(col.size()), x(k);
  for (auto& v : scale) v = __float2half(0.01f * uni(rng));
  for (auto& v : loc) v = __float2half(0.01f * uni(rng));
  for (auto& v : x) v = __float2half(uni(rng));
  L.qweight = to_device(q);
  L.unit_offset = to_device(offsets);
  L.depth = to_device(depth);
  L.col_perm = to_device(col);
  L.scale = to_device(scale);
  L.loc = to_device(loc);
  L.x = to_device(x);
  L.row_perm = to_device(rows);
  CHECK(cudaMalloc(&L.ws, static_cast<std::size_t>(n) * 4));
  CHECK(cudaMemset(L.ws, 0, static_cast<std::size_t>(n) * 4));
  CHECK(cudaMalloc(&L.counters, static_cast<std::size_t>(chunks) * 4));
  CHECK(cudaMemset(L.counters, 0, static_cast<std::size_t>(chunks) * 4));
  CHECK(cudaMalloc(&L.y, static_cast<std::size_t>(n) * 2));
  return L;
}

void free_layer(Layer& L) {
  for (const void* p : {static_cast<const void*>(L.qweight), static_cast<const void*>(L.unit_offset),
                        static_cast<const void*>(L.depth), static_cast<const void*>(L.col_perm),
                        static_cast<const void*>(L.scale), static_cast<const void*>(L.loc),
                        static_cast<const void*>(L.x), static_cast<const void*>(L.row_perm),
                        static_cast<const void*>(L.ws), static_cast<const void*>(L.counters),
                        static_cast<const void*>(L.y)})
    CHECK(cudaFree(const_cast<void*>(p)));
}

template <int kRung, bool kPdl, bool kPairs = false, bool kOneFence = false>
void launch_rung(const Layer& L, std::uint32_t* out, cudaStream_t s) {
  static bool once = [] {
    CHECK(cudaFuncSetAttribute(ladder_kernel<kRung, kPdl, kPairs, kOneFence>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, kBlockSmem));
    return true;
  }();
  (void)once;
  launch(ladder_kernel<kRung, kPdl, kPairs, kOneFence>, dim3(L.n / kRows, L.splits), dim3(256),
         kBlockSmem, kPdl, s, L, out);
}

bool all_zero(const void* p, std::size_t bytes) {
  std::vector<unsigned char> h(bytes);
  CHECK(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost));
  return std::all_of(h.begin(), h.end(), [](unsigned char b) { return b == 0; });
}

}  // namespace

int main() {
  const BenchSetup b = bench_setup();
  std::mt19937 rng(1);
  struct RungLaunch {
    const char* name;
    void (*fn)(const Layer&, std::uint32_t*, cudaStream_t);
    bool memset;
  };
  const RungLaunch rungs[] = {{"words", launch_rung<kWords, false>, false},
                              {"units", launch_rung<kUnits, false>, false},
                              {"staging", launch_rung<kStaging, false>, false},
                              {"output", launch_rung<kOutput, false>, false},
                              {"memset", launch_rung<kOutput, false>, true},
                              {"pdl", launch_rung<kOutput, true>, false},
                              {"words8", launch_rung<kWords, false, true>, false},
                              {"output8", launch_rung<kOutput, false, true>, false},
                              {"output1", launch_rung<kOutput, false, false, true>, false},
                              {"pdl1", launch_rung<kOutput, true, false, true>, false}};
  const std::pair<int, int> shapes[] = {{49152, 12288}, {8192, 28672}, {28672, 8192}, {11008, 4096}};
  std::printf("%-12s %-8s %6s %6s %10s %12s\n", "shape", "rung", "splits", "units", "us",
              "words GB/s");
  for (const auto& shape : shapes) {
    const int n = shape.first, k = shape.second;
    const std::size_t words_bytes = static_cast<std::size_t>(n) * k / 2;
    const std::size_t copies = copies_beyond_l2(words_bytes, b.l2);
    std::vector<Layer> layers;
    for (std::size_t c = 0; c < copies; ++c) layers.push_back(make_layer(n, k, b.sms, rng));
    const int calls = static_cast<int>(std::max<std::size_t>(12, copies));
    for (const RungLaunch& r : rungs) {
      for (int i = 0; i < 2; ++i) r.fn(layers[i % copies], b.out, b.stream);  // warm up
      const double us = graph_us_per_call(calls, b.stream, [&](int i) {
        if (r.memset)
          CHECK(cudaMemsetAsync(b.scratch, 0, static_cast<std::size_t>(n) * 4, b.stream));
        r.fn(layers[i % copies], b.out, b.stream);
      });
      CHECK(cudaStreamSynchronize(b.stream));
      for (const Layer& L : layers)
        if (!all_zero(L.ws, static_cast<std::size_t>(n) * 4) ||
            !all_zero(L.counters, static_cast<std::size_t>(n / kRows) * 4)) {
          std::printf("%dx%d %s: workspace or counters not zero after the calls\n", n, k, r.name);
          return 1;
        }
      std::printf("%6dx%-6d %-8s %6d %6d %10.2f %12.1f\n", n, k, r.name, layers[0].splits,
                  layers[0].units_per_split, us, words_bytes / (us * 1e-6) / 1e9);
      std::fflush(stdout);
    }
    for (Layer& L : layers) free_layer(L);
  }
  CHECK(cudaGetLastError());
  return 0;
}
