// Decode-path (gemv) instances for __half activations, tokens 1, 2, 4, 8 (launch.cuh).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_GEMV(__half)
}  // namespace radio::cuda
