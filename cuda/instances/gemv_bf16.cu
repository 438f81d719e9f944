// Decode-path (gemv) instances for __nv_bfloat16 activations, tokens 1, 2, 4, 8 (launch.cuh).
#include "../launch.cuh"

namespace radio::cuda {
RADIO_INSTANTIATE_GEMV(__nv_bfloat16)
}  // namespace radio::cuda
