// What the standalone CUDA benchmarks of bench/ (read_ceiling.cu, decode_ladder.cu) share: error
// checks, programmatic dependent launch on both sides, and the timing of back-to-back launches
// captured in a CUDA graph, as bench_gemm.py times radio (median of 7 replays, us per launch).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(call)                                                                           \
  do {                                                                                        \
    const cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

__device__ __forceinline__ void pdl_trigger() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

// What every benchmark's main starts with: the current device (its name printed), a stream, a
// 1 MB `out` for the kernels' never-taken stores and a 1 MB `scratch` (memset nodes' target).
struct BenchSetup {
  int sms = 0, l2 = 0;  // SM count, L2 bytes
  cudaStream_t stream = nullptr;
  std::uint32_t* out = nullptr;
  void* scratch = nullptr;
};
inline BenchSetup bench_setup() {
  int dev = 0;
  BenchSetup b;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&b.sms, cudaDevAttrMultiProcessorCount, dev));
  CHECK(cudaDeviceGetAttribute(&b.l2, cudaDevAttrL2CacheSize, dev));
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, dev));
  std::printf("%s, %d SMs, L2 %d MB\n", prop.name, b.sms, b.l2 >> 20);
  CHECK(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking));
  CHECK(cudaMalloc(&b.out, 1 << 20));
  CHECK(cudaMalloc(&b.scratch, 1 << 20));
  return b;
}

// Copies of `bytes` that a rotation must cycle through for every launch to read from HBM: more
// than 2x the L2 in all (bench_gemm.py's copies_for), at least 2.
inline std::size_t copies_beyond_l2(std::size_t bytes, int l2) {
  return std::max<std::size_t>(2, (2ull * l2 + bytes - 1) / bytes + 1);
}

// kernel<<<grid, block, smem, s>>>(args...), with programmatic dependent launch when `pdl`.
template <typename K, typename... Args>
void launch(K kernel, dim3 grid, dim3 block, std::size_t smem, bool pdl, cudaStream_t s,
            Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  CHECK(cudaLaunchKernelEx(&cfg, kernel, args...));
}

// Median microseconds per call of a graph of `calls` captured calls of enqueue(i) on stream s
// (the caller warms up outside the capture).
template <typename Enqueue>
double graph_us_per_call(int calls, cudaStream_t s, Enqueue enqueue) {
  CHECK(cudaStreamSynchronize(s));
  cudaGraph_t graph;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) enqueue(i);
  CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CHECK(cudaGraphLaunch(exec, s));
  CHECK(cudaStreamSynchronize(s));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < 7; ++r) {
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaEventDestroy(a));
  CHECK(cudaEventDestroy(b));
  return ms[ms.size() / 2] * 1e3 / calls;
}
