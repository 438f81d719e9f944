// Decode-path (gemv) instances for float activations, tokens 1, 2, 4, 8 (launch.cuh).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_GEMV(float)
}  // namespace radio::cuda
