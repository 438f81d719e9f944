// Host side of the kernels: the launch configuration (chosen in ONE place, select_config.cu) and
// the templated launchers, instantiated once per activation type in instances/*.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common.cuh"
#include "dequant_kernel.cuh"
#include "ops.hpp"
#include "qlinear_kernel.cuh"

namespace radio::cuda {

template <typename Act, Quant kQ, int kTokTiles>
cudaError_t launch_qlinear_instance(const QlinearParams& p, const QlinearConfig& c,
                                    cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y);
  qlinear_kernel<Act, kQ, kTokTiles><<<grid, c.warps * 32, c.smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Out, Quant kQ>
cudaError_t launch_dequant_instance(const DequantParams& p, const DequantConfig& c,
                                    cudaStream_t stream) {
  const dim3 grid(c.grid_x, c.grid_y);
  dequant_kernel<Out, kQ><<<grid, kDequantThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// One translation unit per (activation type, quantizer), instances/*.cu (they build in parallel):
// the switch over token tiles, i.e. the template instances the selected config can name.
template <typename Act, Quant kQ>
cudaError_t launch_qlinear_tiles(const QlinearParams& p, const QlinearConfig& c,
                                 cudaStream_t stream);
template <typename Out, Quant kQ>
cudaError_t launch_dequant(const DequantParams& p, const DequantConfig& c, cudaStream_t stream);

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
