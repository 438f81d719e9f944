// The one place where launch shapes are chosen from the problem size.
//
// qlinear (1..64 tokens):
// - token tiles of 8: the smallest of 1, 2, 4, 8 tiles that holds m (template parameter);
// - one warp per 16 rows of a chunk, up to 16 warps (256 rows: a whole default chunk, so the
//   chunk's scale/loc/col_perm are read by one block only);
// - slice_units = 32 / tok_tiles: 16 KB of staged x * scale whatever the token count;
// - K split: enough blocks for one full wave at the thread limit (2048 threads per SM), at least
//   2 units per block; with one split the block writes y itself, otherwise the last block of a
//   row range does (qlinear_kernel.cuh).
// Large batches (m > 64) go to dequantize + cuBLAS (python/radio/ops.py).
#include <cuda_runtime_api.h>

#include <algorithm>

#include "launch.cuh"
#include "radio/config.hpp"

namespace radio::cuda {

namespace {
int ceil_div(int a, int b) { return (a + b - 1) / b; }
}  // namespace

bool use_dequant_gemm(int m, int /*n*/, int /*k*/) { return m > kMaxKernelTokens; }

int device_sm_count() {
  int dev = 0, count = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
  if (err != cudaSuccess) throw std::runtime_error(std::string("radio._cuda: ") + cudaGetErrorString(err));
  return count;
}

QlinearConfig select_qlinear_config(int m, int n, int k, int gs, int sm_count) {
  RADIO_CHECK(m >= 1 && m <= kMaxKernelTokens, "qlinear kernel takes 1..", kMaxKernelTokens,
              " tokens, got ", m);
  RADIO_CHECK(n > 0 && k > 0 && gs > 0, "sizes must be positive, got n=", n, " k=", k, " gs=", gs);
  QlinearConfig c;
  c.tok_tiles = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
  const int tokens = 8 * c.tok_tiles;
  c.warps = std::min(16, ceil_div(gs, 16));
  // staging gives each thread one token: the thread count must be a multiple of the tokens
  const int warp_multiple = std::max(1, tokens / 32);
  c.warps = ceil_div(c.warps, warp_multiple) * warp_multiple;
  c.rows_per_block = 16 * c.warps;
  c.row_blocks_per_chunk = ceil_div(gs, c.rows_per_block);
  c.slice_units = 32 / c.tok_tiles;
  const int units = ceil_div(k, 32);
  const int chunks = ceil_div(n, gs);
  c.grid_x = chunks * c.row_blocks_per_chunk;
  const int target_blocks = sm_count * std::max(1, 2048 / (32 * c.warps));
  const int want_splits = std::clamp(ceil_div(target_blocks, c.grid_x), 1, units);
  c.units_per_split = std::max(std::min(2, units), ceil_div(units, want_splits));
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_y = c.splits;
  c.smem_bytes = qlinear_smem_bytes(c.tok_tiles, c.slice_units);
  if (c.splits > 1) {
    const std::int64_t partial = static_cast<std::int64_t>(n) * tokens * 4;
    c.counters_offset = (partial + 255) / 256 * 256;
    c.workspace_bytes = c.counters_offset + static_cast<std::int64_t>(c.grid_x) * 4;
  }
  return c;
}

DequantConfig select_dequant_config(int n, int k, int gs, int sm_count) {
  RADIO_CHECK(n > 0 && k > 0 && gs > 0, "sizes must be positive, got n=", n, " k=", k, " gs=", gs);
  DequantConfig c;
  c.rows_per_block = std::min(kDequantThreads, ceil_div(gs, 32) * 32);
  c.row_blocks_per_chunk = ceil_div(gs, c.rows_per_block);
  const int units = ceil_div(k, 32);
  c.grid_x = ceil_div(n, gs) * c.row_blocks_per_chunk;
  const int want_splits = std::clamp(ceil_div(sm_count * 8, c.grid_x), 1, units);
  c.units_per_split = ceil_div(units, want_splits);
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_y = c.splits;
  return c;
}

}  // namespace radio::cuda
