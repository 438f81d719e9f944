// Kernel instances for __nv_bfloat16 activations, uniform quantizer (one translation unit each, built in
// parallel; the list of instances follows launch.cuh RADIO_INSTANTIATE_KERNELS).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_KERNELS(__nv_bfloat16, Quant::kUniform)
}  // namespace radio::cuda
