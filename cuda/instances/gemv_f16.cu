// Decode-path instances for __half activations (launch.cuh): gemv for 1, 2, 4, 8 tokens, the
// half2 one-token kernel, qmma and fmma for their token tiles.
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_GEMV(__half)

cudaError_t launch_hgemv(const HgemvParams& p, const QlinearConfig& c, cudaStream_t stream) {
  // The static pair tables leave less than the default 48 KB for xs: always opt in, to the most
  // any config asks (one value: host threads launching different layers do not race on it).
  const cudaError_t err =
      cudaFuncSetAttribute(hgemv_kernel<kHgemvGroups>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           hgemv_smem_bytes(kHgemvMaxUnits));
  if (err != cudaSuccess) return err;
  return launch_kernel(hgemv_kernel<kHgemvGroups>, dim3(c.grid_x, c.h2_splits),
                       dim3(c.h2_threads), c.h2_smem_bytes, stream, c.pdl, p);
}
}  // namespace radio::cuda
