// Pointer-level entry points of radio._cuda (bound in module.cpp, called by python/radio/ops.py).
// Pointers and the stream are passed as integers. Arguments are checked by the caller
// (module.cpp, which raises radio::Error -> ValueError); these functions throw nothing and
// return an error message ("" on success) for CUDA failures.
#pragma once

#include <cstdint>
#include <string>
#include <array>
#include <utility>

namespace radio::cuda {

constexpr int kMaxKernelTokens = 64;  // tokens per block of the tensor-core kernel
constexpr int kMaxBlockUnits = 1024;  // units of K one block walks (its depths/offsets in smem)
constexpr int kGemvMaxTokens = 8;     // most tokens the gemv instances hold (default limit: 4)
constexpr int kFmmaMaxTokens = 32;    // most tokens the fmma instances hold
constexpr int kStreamMaxTokens = 16;  // most tokens the stream kernel holds (stream_kernel.cuh)

struct QlinearConfig {
  // The decode path (gemv_kernel.cuh, CUDA cores) for 1..4 tokens, qmma_kernel.cuh for 5..64;
  // otherwise the older tensor-core kernel (qlinear_kernel.cuh; fields marked "mma").
  bool gemv = false;
  int gemv_tokens = 0;      // tokens the gemv instance holds (template parameter): 1, 2, 4, 8
  // One token with f16 activations: the half2 kernel (hgemv_kernel.cuh) with its own K split
  // (grid h2_splits along y, grid_x chunks); other activation types run gemv with the fields
  // above. The workspace serves either.
  bool gemv_h2 = false;
  int h2_threads = 0, h2_units_per_split = 0, h2_splits = 0, h2_smem_bytes = 0;
  // One token with f16 activations on sm_90 layers of 256-row chunks (set_stream_h2): the
  // stream kernel with half2 consumers (stream_h2.cuh) instead of hgemv: h2_blocks persistent
  // blocks of h2_threads, h2_groups x 8 consumer warps, stream_buf_stagers stagers per buffer,
  // h2_smem_bytes. Other activation types run gemv.
  bool stream_h2 = false;
  int h2_blocks = 0, h2_groups = 2;
  // 5..64 tokens: decode to shared memory + tensor cores (qmma_kernel.cuh); tok_tiles of 8
  // tokens (2 or 4), token groups of 32 along grid z.
  bool qmma = false;
  // 3..32 tokens (set_fmma_tokens): unit words by cp.async, pair-table decode into
  // mma fragments (fmma_kernel.cuh); tok_tiles of 8 tokens (1, 2 or 4), one block per chunk and
  // K split.
  bool fmma = false;
  // 1..16 tokens on sm_90 (set_stream_tokens): one persistent block per SM streams its range of
  // the layer's words with the TMA (stream_kernel.cuh); stream_groups x 8 consumer warps,
  // tok_tiles token tiles of 8.
  bool stream = false;
  int stream_groups = 1;
  int stream_buf_stagers = 2;  // stager warps per xs buffer (1 or 2)
  int grid_z = 1;
  int threads = 512;        // threads per block
  int tok_tiles = 1;        // mma: token tiles of 8 (template parameter): 1, 2, 4 or 8
  int warps = 16;           // mma: warps per block; one per 16 rows
  int rows_per_block = 256;
  int row_blocks_per_chunk = 1;
  int slice_units = 32;     // units staged in shared memory at a time
  int units_per_split = 0;  // units per block (the K split)
  int tok_groups = 1;       // blocks of 64 tokens along grid x (more than 64 tokens)
  int splits = 1;
  int grid_x = 0, grid_y = 0;
  int smem_bytes = 0;
  std::int64_t workspace_bytes = 0;  // all of it: [partials + counters][xt]; 0 when neither
  std::int64_t zeroed_bytes = 0;     // f32 partials + counters (zeroed per call); 0 with one split
  std::int64_t counters_offset = 0;  // byte offset of the counters inside the workspace
  // gemv (2..8 tokens), fmma (2..32) and qmma: x transposed to [xt_groups][k][xt_tokens] (transpose_x.cuh) at
  // xt_offset, with room for 4-byte activations; xt_tokens = 0: the kernel reads x itself.
  std::int64_t xt_offset = 0;
  int xt_tokens = 0, xt_groups = 0, xt_group_stride = 0;
  // sm_90 and set_pdl (on by default): the gemv, hgemv and stream kernels are launched with
  // programmatic dependent launch (pdl.cuh): they may start while the kernel before them drains.
  bool pdl = false;
  // set_fence_all (benchmark A/B only): the K split's end as before session 15, every thread
  // fencing (block_units.cuh write_k_split_rows).
  bool fence_all = false;
  // gemv and hgemv calls with a K split end their blocks at the partial sums' atomics, and a
  // second kernel (finalize_kernel.cuh) writes y from the workspace after the grid: where it
  // measured faster (select_config.cu defer_output_pays), or as set_defer_output forces.
  bool defer_output = false;
  // The stream kernel (stream or stream_h2) cuts its blocks' ranges at the layer's work quantiles
  // when it has them (LayerPtrs::work_quantiles); false: equal unit counts, and every other
  // kernel (select_config.cu stream_quantiles_apply: layers whose blocks get at least
  // g_stream_quantile_min_units units each; set_stream_quantiles).
  bool stream_quantiles = false;
};

struct DequantConfig {
  int tile_rows = 0;  // > 0: dequant_rows_kernel with this many rows per block; 0: dequant_kernel
  int smem_bytes = 0;
  int rows_per_block = 256, row_blocks_per_chunk = 1, units_per_split = 0, splits = 1;
  int grid_x = 0, grid_y = 0;
};

// select_config.cu: the single heuristic. Everything that depends on the sizes is decided here.
// Sizes must be valid (positive; m >= 1; k <= 32 * kMaxBlockUnits when m > kMaxKernelTokens).
QlinearConfig select_qlinear_config(int m, int n, int k, int gs, int sm_count);
DequantConfig select_dequant_config(int n, int k, int gs, int out_bytes, int sm_count);
bool use_dequant_gemm(int m, int n, int k);
// Waves of blocks the gemv K split aims at (default 6), the half2 kernel's (default 0: 2, or 4
// where 4 waves leave every block at least 32 units; select_config.cu hgemv_waves), and
// gemv's at one token on layers below kGemvOneWaveMaxChunkUnits (default 1): a knob for
// bench/bench_gemm.py's sweep, not an API; select_config.cu documents the choice.
void set_gemv_waves(int waves, int h2_waves, int one_token_waves);
// Largest token count the gemv path takes (default 4, at most kGemvMaxTokens; above it qmma):
// the other knob of the benchmark's sweep.
void set_gemv_max_tokens(int tokens);
// Layers of at least this many chunks x units, with chunks of 193..256 rows, take the half2
// one-token kernel for f16 activations (default: see select_config.cu; -1: never; 0: every layer
// whatever its chunk size, for tests): the benchmark's A/B knob.
void set_gemv_h2_min_chunk_units(std::int64_t min_chunk_units);
std::int64_t gemv_h2_min_chunk_units();
// Token counts the fmma path takes (default 3..32; min > max: never; max at most
// kFmmaMaxTokens), and the most it takes on layers above 32768 chunk-units (default 24);
// checked before the gemv and qmma limits.
void set_fmma_tokens(int min_tokens, int max_tokens, int large_max_tokens);
std::array<int, 3> fmma_tokens();
// Token counts the stream path takes (default: see select_config.cu; min > max: never; max at
// most kStreamMaxTokens), checked first, on layers of at least min_chunk_units chunks x units
// (256-row chunks x ceil(K / 32)); then its consumer warp groups (1 or 2).
void set_stream_tokens(int min_tokens, int max_tokens, std::int64_t min_chunk_units);
std::array<std::int64_t, 3> stream_tokens();
void set_stream_groups(int groups);
void set_stream_stagers(int buf_stagers);  // stager warps per xs buffer (1 or 2)
// At most this many stream blocks (0: one per SM): lets tests give small layers long ranges.
void set_stream_max_blocks(int blocks);
// One token, f16 activations: the stream kernel with half2 consumers on sm_90 layers of 256-row
// chunks and at least min_chunk_units chunks x units (-1: never; 0: every such layer), with
// groups x 8 consumer warps (1 or 2). Checked before the hgemv threshold.
void set_stream_h2(std::int64_t min_chunk_units, int groups);
std::array<std::int64_t, 2> stream_h2();
// Programmatic dependent launch of the decode kernels on sm_90 (default on, select_config.cu
// says why; off: every kernel waits for the one before it to finish before it starts): the
// benchmark's A/B knob.
void set_pdl(bool on);
bool pdl_enabled();
// The K split's end as before session 15 (QlinearConfig::fence_all): the benchmark's A/B knob.
void set_fence_all(bool on);
bool fence_all();
// The K split's output after the grid (QlinearConfig::defer_output): -1 where it measured faster
// (select_config.cu defer_output_pays; the default), 0 never, 1 on every gemv / hgemv K split
// (the benchmark's A/B and the tests).
void set_defer_output(int mode);
int defer_output();
// The stream kernel's ranges at the layer's work quantiles (QlinearConfig::stream_quantiles) on
// layers whose blocks get at least min_block_units units each: the benchmark's A/B knob (off:
// equal unit counts) and the tests' (0: every layer).
void set_stream_quantiles(bool on, std::int64_t min_block_units);
std::pair<bool, std::int64_t> stream_quantiles();
int device_sm_count();  // -1 when CUDA cannot tell


struct LayerPtrs {
  std::uintptr_t qweight = 0, scale = 0, loc = 0, depth = 0, unit_offset = 0, row_perm = 0,
                 col_perm = 0, bias = 0;  // bias may be 0
  int n = 0, k = 0, gs = 0, quantizer = 0;
  std::int64_t qweight_words = -1;  // qweight's length (the stream kernel's tensor map); -1: unknown
  // The layer's work quantiles (int32 [count], radio.ops.work_quantiles: the flattened unit at
  // each equal share of units x weight + word rows), where the stream kernel cuts its blocks'
  // ranges; count 0: none (equal unit counts).
  std::uintptr_t work_quantiles = 0;
  int work_quantile_count = 0;
};

// y[m, n] = x[m, k] @ W.T + bias for m >= 1 with the launch configuration c (from
// select_qlinear_config for the same sizes); x and y in `dtype` (0 f16, 1 bf16, 2 f32);
// `workspace` holds c.workspace_bytes.
// `workspace_zeroed`: the zeroed part of `workspace` (c.zeroed_bytes) is zero on entry (a buffer
// kept across calls): no memset before the kernel; it is zero again when the call completes
// (the kernels' last blocks zero what they read; the older tensor-core kernel's workspace is
// zeroed after it).
std::string qlinear(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer, std::uintptr_t y,
                    std::uintptr_t workspace, const QlinearConfig& c, std::uintptr_t stream,
                    bool workspace_zeroed = false);

// out[n, k] = W in original order, in `dtype`.
std::string dequantize(const LayerPtrs& layer, std::uintptr_t out, int dtype,
                       std::uintptr_t stream);


}  // namespace radio::cuda
