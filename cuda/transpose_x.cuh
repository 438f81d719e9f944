// x [m, k] -> xt [groups][k][tokens] (token-major per column, zero-padded tokens), run before the
// gemv (2..8 tokens), fmma (2..32) and qmma (5..64 tokens) kernels.
//
// Why: the kernels stage xs[t][position] = scale * x[t, col_perm[position]]. Read from x, every
// (position, token) is its own 2-byte gather from L2: 37.7M requests for 49152x12288 at 16
// tokens, the size of the weight traffic in sectors. Read from xt, the tokens of a column are one
// 16 .. 64-byte run: one or a few vector loads per position (load_token_column). With one token
// xt is x itself and nothing runs.
#pragma once

#include <cstdint>

#include "common.cuh"

namespace radio::cuda {

constexpr int kTransposeThreads = 256;

// Thread = one column of one token group: xt[g][col][t] = x[g * group_stride + t][col] for
// t < tokens (0 beyond m). Reads are coalesced along k for each token; each thread's writes are
// `tokens` consecutive elements.
template <typename Act>
__global__ void __launch_bounds__(kTransposeThreads) transpose_x_kernel(
    const Act* __restrict__ x, int m, int k, int tokens, int group_stride, Act* __restrict__ xt) {
  const int col = blockIdx.x * kTransposeThreads + threadIdx.x;
  if (col >= k) return;
  const int g = blockIdx.y;
  Act* dst = xt + (static_cast<std::int64_t>(g) * k + col) * tokens;
  for (int t = 0; t < tokens; ++t) {
    const int tok = g * group_stride + t;
    dst[t] = tok < m ? x[static_cast<std::int64_t>(tok) * k + col] : from_float<Act>(0.f);
  }
}

template <typename Act>
cudaError_t launch_transpose_x(const void* x, int m, int k, int tokens, int groups,
                               int group_stride, void* xt, cudaStream_t stream) {
  const dim3 grid((k + kTransposeThreads - 1) / kTransposeThreads, groups);
  transpose_x_kernel<Act><<<grid, kTransposeThreads, 0, stream>>>(
      static_cast<const Act*>(x), m, k, tokens, group_stride, static_cast<Act*>(xt));
  return cudaGetLastError();
}

// The kT tokens of one column of xt as floats: 16-byte loads when the run is a multiple of 16
// bytes (xt is 256-byte aligned in the workspace, so every column's run is aligned), else one
// load per token.
template <typename Act, int kT>
__device__ __forceinline__ void load_token_column(const Act* src, float (&out)[kT]) {
  constexpr int kBytes = kT * static_cast<int>(sizeof(Act));
  if constexpr (kBytes % 16 == 0) {
    union {
      uint4 v[kBytes / 16];
      Act a[kT];
    } run;
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) run.v[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
#pragma unroll
    for (int t = 0; t < kT; ++t) out[t] = to_float(run.a[t]);
  } else {
#pragma unroll
    for (int t = 0; t < kT; ++t) out[t] = to_float(src[t]);
  }
}

}  // namespace radio::cuda
