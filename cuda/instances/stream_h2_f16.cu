// The stream kernel with the half2 one-token consumers (stream_h2.cuh): f16 activations only, 8
// or 16 consumer warps (h2_groups 1 or 2). Its own translation unit: it builds in parallel with
// the other instances.
#include "../launch.cuh"

namespace radio::cuda {
cudaError_t launch_stream_h2(const StreamParams& p, const CUtensorMap& map, const QlinearConfig& c,
                             cudaStream_t stream) {
  const int b = c.h2_blocks, t = c.h2_threads, sm = c.h2_smem_bytes;
  return c.h2_groups == 1
             ? launch_stream_instance<__half, 1, 1, true>(p, map, b, t, sm, c.pdl, stream)
             : launch_stream_instance<__half, 2, 1, true>(p, map, b, t, sm, c.pdl, stream);
}
}  // namespace radio::cuda
