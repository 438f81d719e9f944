// Kernel instances for __half activations, laplace quantizer (one translation unit each, built in
// parallel; the list of instances follows launch.cuh RADIO_INSTANTIATE_KERNELS).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_KERNELS(__half, Quant::kLaplace)
}  // namespace radio::cuda
