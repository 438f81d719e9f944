// Host side of the kernels: the launch configuration (chosen in ONE place, select_config.cu) and
// the templated launchers, instantiated once per activation type in instances/*.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "common.cuh"
#include "dequant_kernel.cuh"
#include "finalize_kernel.cuh"
#include "fmma_kernel.cuh"
#include "gemv_kernel.cuh"
#include "hgemv_kernel.cuh"
#include "qmma_kernel.cuh"
#include "ops.hpp"
#include "qlinear_kernel.cuh"
#include "stream_kernel.cuh"
#include "transpose_x.cuh"

namespace radio::cuda {

// `kernel<<<grid, block, smem, stream>>>(args...)`, with programmatic dependent launch when `pdl`
// (the config's `pdl`: the kernel follows pdl.cuh's contract).
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, int smem,
                          cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = static_cast<std::size_t>(smem);
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

// The deferred K-split output (finalize_kernel.cuh) after a gemv or hgemv grid: with PDL it may be
// scheduled as the decode blocks leave and waits for all of them.
template <typename Act>
cudaError_t launch_finalize(const FinalizeParams& p, bool pdl, cudaStream_t stream) {
  const std::int64_t outputs = static_cast<std::int64_t>(p.n) * p.m;
  const dim3 grid(static_cast<unsigned>((outputs + kFinalizeThreads - 1) / kFinalizeThreads));
  return launch_kernel(finalize_rows_kernel<Act>, grid, dim3(kFinalizeThreads), 0, stream, pdl, p);
}

template <typename Act, Quant kQ, int kTokTiles>
cudaError_t launch_qlinear_instance(const QlinearParams& p, const QlinearConfig& c,
                                    cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y);
  qlinear_kernel<Act, kQ, kTokTiles><<<grid, c.threads, c.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Act, int kTokens>
cudaError_t launch_gemv_instance(const GemvParams& p, const QlinearConfig& c,
                                 cudaStream_t stream) {
  return launch_kernel(gemv_kernel<Act, kTokens>, dim3(c.grid_x, c.grid_y), dim3(c.threads),
                       c.smem_bytes, stream, c.pdl, p);
}

template <typename Act, int kTokTiles>
cudaError_t launch_qmma_instance(const QmmaParams& p, const QlinearConfig& c,
                                 cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y, c.grid_z);
  if (c.smem_bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        qmma_kernel<Act, kTokTiles>, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem_bytes);
    if (err != cudaSuccess) return err;
  }
  qmma_kernel<Act, kTokTiles><<<grid, c.threads, c.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Act, int kTT>
cudaError_t launch_fmma_instance(const FmmaParams& p, const QlinearConfig& c,
                                 cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y);
  if (c.smem_bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        fmma_kernel<Act, kTT>, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem_bytes);
    if (err != cudaSuccess) return err;
  }
  fmma_kernel<Act, kTT><<<grid, c.threads, c.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

// (blocks, threads, smem_bytes: the config's stream fields, or its h2 ones for the half2
// consumers, which share the config with gemv; pdl: the config's)
template <typename Act, int kGroups, int kTT, bool kH2 = false>
cudaError_t launch_stream_instance(const StreamParams& p, const CUtensorMap& map, int blocks,
                                   int threads, int smem_bytes, bool pdl, cudaStream_t stream) {
  const auto kernel = stream_kernel<Act, kGroups, kTT, kH2>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  return launch_kernel(kernel, dim3(blocks), dim3(threads), smem_bytes, stream, pdl, p, map);
}

template <typename Out, int kR>
cudaError_t launch_dequant_rows(const DequantParams& p, const DequantConfig& c, dim3 grid,
                               cudaStream_t stream) {
  if (c.smem_bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        dequant_rows_kernel<Out, kR>, cudaFuncAttributeMaxDynamicSharedMemorySize, c.smem_bytes);
    if (err != cudaSuccess) return err;
  }
  dequant_rows_kernel<Out, kR><<<grid, dequant_rows_threads<kR>(), c.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Out, Quant kQ>
cudaError_t launch_dequant_instance(const DequantParams& p, const DequantConfig& c,
                                    cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y);
  if (c.tile_rows > 0) {
    // The quantizer is only the table's contents here: one instance per output type would do,
    // but the (Out, kQ) instance files already exist and the code is small.
    switch (c.tile_rows) {
      case 1: return launch_dequant_rows<Out, 1>(p, c, grid, stream);
      case 2: return launch_dequant_rows<Out, 2>(p, c, grid, stream);
      case 4: return launch_dequant_rows<Out, 4>(p, c, grid, stream);
      default: return launch_dequant_rows<Out, 8>(p, c, grid, stream);
    }
  } else {
    dequant_kernel<Out, kQ><<<grid, kDequantThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// One translation unit per (activation type, quantizer), instances/*.cu (they build in parallel):
// the switch over token tiles, i.e. the template instances the selected config can name.
template <typename Act, Quant kQ>
cudaError_t launch_qlinear_tiles(const QlinearParams& p, const QlinearConfig& c,
                                 cudaStream_t stream);
template <typename Out, Quant kQ>
cudaError_t launch_dequant(const DequantParams& p, const DequantConfig& c, cudaStream_t stream);
// instances/gemv_*.cu: the switch over token counts of the decode path (per activation type;
// the quantizer is only the table's contents).
template <typename Act>
cudaError_t launch_gemv(const GemvParams& p, const QlinearConfig& c, cudaStream_t stream);

// instances/gemv_f16.cu: the half2 one-token kernel (f16 activations only), with the config's
// h2_* launch fields.
cudaError_t launch_hgemv(const HgemvParams& p, const QlinearConfig& c, cudaStream_t stream);

template <typename Act>
cudaError_t launch_qmma(const QmmaParams& p, const QlinearConfig& c, cudaStream_t stream);

template <typename Act>
cudaError_t launch_fmma(const FmmaParams& p, const QlinearConfig& c, cudaStream_t stream);

template <typename Act>
cudaError_t launch_stream(const StreamParams& p, const CUtensorMap& map, const QlinearConfig& c,
                          cudaStream_t stream);

// instances/stream_h2_f16.cu: the stream kernel with the half2 one-token consumers (f16 only),
// with the config's h2_* launch fields.
cudaError_t launch_stream_h2(const StreamParams& p, const CUtensorMap& map, const QlinearConfig& c,
                             cudaStream_t stream);

#define RADIO_INSTANTIATE_GEMV(Act)                                                            \
  template <>                                                                                  \
  cudaError_t launch_gemv<Act>(const GemvParams& p, const QlinearConfig& c, cudaStream_t s) {  \
    switch (c.gemv_tokens) {                                                                   \
      case 1: return launch_gemv_instance<Act, 1>(p, c, s);                                    \
      case 2: return launch_gemv_instance<Act, 2>(p, c, s);                                    \
      case 4: return launch_gemv_instance<Act, 4>(p, c, s);                                    \
      default: return launch_gemv_instance<Act, 8>(p, c, s);                                   \
    }                                                                                          \
  }                                                                                            \
  template <>                                                                                  \
  cudaError_t launch_qmma<Act>(const QmmaParams& p, const QlinearConfig& c, cudaStream_t s) {  \
    return c.tok_tiles <= 2 ? launch_qmma_instance<Act, 2>(p, c, s)                            \
                            : launch_qmma_instance<Act, 4>(p, c, s);                           \
  }                                                                                            \
  template <>                                                                                  \
  cudaError_t launch_fmma<Act>(const FmmaParams& p, const QlinearConfig& c, cudaStream_t s) {  \
    switch (c.tok_tiles) {                                                                     \
      case 1: return launch_fmma_instance<Act, 1>(p, c, s);                                    \
      case 2: return launch_fmma_instance<Act, 2>(p, c, s);                                    \
      default: return launch_fmma_instance<Act, 4>(p, c, s);                                   \
    }                                                                                          \
  }                                                                                            \
  template <>                                                                                  \
  cudaError_t launch_stream<Act>(const StreamParams& p, const CUtensorMap& map,                \
                                 const QlinearConfig& c, cudaStream_t s) {                     \
    const int b = c.grid_x, t = c.threads, sm = c.smem_bytes;                                  \
    const bool d = c.pdl;                                                                      \
    if (c.tok_tiles == 2)                                                                      \
      return c.stream_groups == 2 ? launch_stream_instance<Act, 2, 2>(p, map, b, t, sm, d, s)  \
                                  : launch_stream_instance<Act, 1, 2>(p, map, b, t, sm, d, s); \
    return c.stream_groups == 2 ? launch_stream_instance<Act, 2, 1>(p, map, b, t, sm, d, s)    \
                                : launch_stream_instance<Act, 1, 1>(p, map, b, t, sm, d, s);   \
  }

#define RADIO_INSTANTIATE_KERNELS(Act, kQ)                                                     \
  template <>                                                                                  \
  cudaError_t launch_qlinear_tiles<Act, kQ>(const QlinearParams& p, const QlinearConfig& c,    \
                                            cudaStream_t s) {                                  \
    switch (c.tok_tiles) {                                                                     \
      case 1: return launch_qlinear_instance<Act, kQ, 1>(p, c, s);                             \
      case 2: return launch_qlinear_instance<Act, kQ, 2>(p, c, s);                             \
      case 4: return launch_qlinear_instance<Act, kQ, 4>(p, c, s);                             \
      default: return launch_qlinear_instance<Act, kQ, 8>(p, c, s);                            \
    }                                                                                          \
  }                                                                                            \
  template <>                                                                                  \
  cudaError_t launch_dequant<Act, kQ>(const DequantParams& p, const DequantConfig& c,          \
                                      cudaStream_t s) {                                        \
    return launch_dequant_instance<Act, kQ>(p, c, s);                                          \
  }

}  // namespace radio::cuda
