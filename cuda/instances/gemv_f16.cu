// Decode-path instances for __half activations (launch.cuh): gemv for 1, 2, 4, 8 tokens, qmma and
// fmma for their token tiles.
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_GEMV(__half)
}  // namespace radio::cuda
