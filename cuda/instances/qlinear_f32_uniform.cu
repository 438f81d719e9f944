// Kernel instances for float activations, uniform quantizer (one translation unit each, built in
// parallel; the list of instances follows launch.cuh RADIO_INSTANTIATE_KERNELS).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_KERNELS(float, Quant::kUniform)
}  // namespace radio::cuda
