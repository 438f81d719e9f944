// The one place where launch shapes are chosen from the problem size. Arguments are validated
// by the caller (module.cpp): nothing here throws (no C++ exception leaves nvcc-built code; on the
// GPU machine one did not unwind through it).
//
// qlinear, 1..4 tokens (1..8 possible, g_gemv_max_tokens) with chunks of at most 256 rows: the
// CUDA-core decode path
// (gemv_kernel.cuh):
// - tokens rounded up to 1, 2, 4 or 8 (template parameter);
// - one block per chunk and K split, one thread per two rows (128 threads for 256 rows);
// - K split: about g_gemv_waves (6) waves of blocks at 8 resident blocks of 128 threads per SM
//   (g_gemv_one_token_waves (1) at one token on layers below kGemvOneWaveMaxChunkUnits), at least
//   kGemvMinUnits units per block (staging and the last-block write are per block; fewer, down
//   to one, when the layer would not give every SM a block) and at most what keeps xs (tokens x
//   positions x 4 bytes) within kGemvXsBytes.
// - one token on sm_90 layers of 256-row chunks and at least g_stream_h2_min_chunk_units chunks
//   x units (off by default): the config carries the stream kernel with half2 consumers
//   (stream_h2.cuh; stream_h2, h2_blocks, h2_groups, h2_threads, h2_smem_bytes), which ops.cu
//   takes for f16 activations in place of the half2 kernel below;
// - one token on layers of at least g_gemv_h2_min_chunk_units chunks x units: the same config
//   also carries the half2 kernel's launch (hgemv_kernel.cuh; h2_* fields: two gemv blocks'
//   threads, about 2 waves (4 on the largest layers: hgemv_waves) at kHgemvBlocksPerSm blocks
//   per SM, at most kHgemvMaxUnits units per block), which ops.cu takes for f16 activations
//   (the config does not know the dtype; bf16 and f32 run gemv). The workspace serves either.
// qlinear, 1..16 tokens (set_stream_tokens; checked first; default: see g_stream_min_tokens) on
// sm_90 with 256-row chunks and N a multiple of 256: the persistent streaming kernel
// (stream_kernel.cuh): one block per SM (grid = SMs, or fewer for layers of fewer units), each
// taking an equal share of the layer's chunk-units in flattened order; 8 or 16 consumer warps
// (set_stream_groups), 4 or 8 stager warps (set_stream_stagers), token tiles of 8 (1 or 2:
// template parameter); only on layers of at least g_stream_min_chunk_units chunks x units.
// qlinear, 3..32 tokens (set_fmma_tokens; checked before gemv; 25..32 on very large layers go to
// qmma), chunks of at most 256 rows:
// unit words by cp.async, pair-table decode into mma fragments (fmma_kernel.cuh):
// - token tiles of 8 (1, 2 or 4: template parameter), one warp per 16 rows of a chunk;
// - K split: the gemv rule's waves at 2 blocks per SM (~80-110 KB of shared memory each), at
//   least kFmmaMinUnits units per block (each block fills 43.5 KB of pair tables) and at most
//   what keeps the block within kFmmaSmemBytes.
// qlinear, 5..64 tokens with chunks of at most 256 rows: decode into shared memory + tensor cores
// (qmma_kernel.cuh), the gemv split rule with 3 blocks per SM, token groups of 32 along grid z.
// qlinear, otherwise (1..64 tokens with larger chunks, or the "kernel" prefill path: the older
// tensor-core kernel):
// - token tiles of 8: the smallest of 1, 2, 4, 8 tiles that holds m (template parameter);
// - one warp per 16 rows of a chunk, up to 16 warps (256 rows: a whole default chunk, so the
//   chunk's scale/loc/col_perm are read by one block only);
// - slice_units = 32 / tok_tiles: 16 KB of staged x * scale whatever the token count;
// - K split: enough blocks for one full wave at the thread limit (2048 threads per SM), at least
//   2 units and at most kMaxBlockUnits per block; with one split the block writes y itself,
//   otherwise the last block of a row range does (qlinear_kernel.cuh);
// - more than 64 tokens: groups of 64 along blockIdx.x, one split (no workspace).
// Only K > 32 * kMaxBlockUnits with more than 64 tokens goes to dequantize + cuBLAS.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>

#include "launch.cuh"

namespace radio::cuda {

namespace {
int ceil_div(int a, int b) { return (a + b - 1) / b; }
}  // namespace

// The tensor-core kernel takes any batch in groups of 64 tokens, with the whole K range per
// block; only K beyond kMaxBlockUnits units needs the dequantize + matmul path.
bool use_dequant_gemm(int m, int /*n*/, int k) {
  return m > kMaxKernelTokens && ceil_div(k, 32) > kMaxBlockUnits;
}

namespace {
// An attribute of the current device, or -1 when CUDA cannot tell.
int current_device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&value, attr, dev);
  return err == cudaSuccess ? value : -1;
}
}  // namespace

int device_sm_count() { return current_device_attribute(cudaDevAttrMultiProcessorCount); }

// Shared memory one block may opt in to (227 KB on an H100, 163 KB on an A100), or -1.
int device_smem_per_block_optin() {
  return current_device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
}

namespace {
constexpr int kGemvMaxRows = 256;      // rows per chunk the gemv block covers (2 per thread)
int g_gemv_waves = 6;  // set_gemv_waves(): benchmark tuning only
// The half2 kernel's K split aims at fewer, longer blocks (each writes 45.5 KB of tables and
// stages its x before its first word): H100, bench_gemm --compare-h2 --gemv-waves 1 2 3 4 6
// (RESULTS.md session 12), 2 waves were best or within 3% of best on the 70B shapes and
// 49152x12288 (e.g. 8192x28672 at 4 bpw: 60.5 us at 2 waves, 72.5 at 1, 81.7 at 6).
// Where 4 waves still leave a block at least kHgemvLongMinUnits units, 4 (hgemv_waves):
// H100, bench_gemm --gemv-waves 2 3 4 5 6 8 at 4 bpw, side by side (RESULTS.md session 16 call
// 4): 49152x12288 129.8 us at 4 waves (11 splits of 35 units: 2112 blocks, exactly 4 waves of
// 4 blocks on 132 SMs) against 138.0 at 2 (6 of 64), 133.7 at 3, 131.5 at 5, 136.2 at 6; with
// depths in radio.quantize's order 130.2 against 136.4. The 70B shapes, whose blocks would get
// 14 units at 4 waves, were 10-16% slower there (8192x28672 69.3 against 59.9, 28672x8192 68.7
// against 62.7) and keep 2. g_h2_waves 0: this rule; 1..64: that many waves (set_gemv_waves).
constexpr int kHgemvShortWaves = 2, kHgemvLongWaves = 4, kHgemvLongMinUnits = 32;
int g_h2_waves = 0;
// Splits per chunk for about `waves` waves of the half2 kernel's blocks.
int hgemv_want_splits(int waves, int chunks, int sm_count) {
  return std::max(1, ceil_div(waves * sm_count * kHgemvBlocksPerSm, chunks));
}
int hgemv_waves(int chunks, int units, int sm_count) {
  if (g_h2_waves > 0) return g_h2_waves;
  const int long_splits = hgemv_want_splits(kHgemvLongWaves, chunks, sm_count);
  return ceil_div(units, long_splits) >= kHgemvLongMinUnits ? kHgemvLongWaves : kHgemvShortWaves;
}
// gemv at one token on layers of fewer chunk-units than this (f16 takes hgemv from 16384 up,
// bf16 and f32 keep gemv): about one wave. H100, bench_gemm --gemv-waves 1 2 3, the same layers
// side by side (RESULTS.md session 15 call 2): 11008x4096 at 4 bpw 20.8 us at 1 wave (22 splits
// of 6 units) against 22.2 at 2-6 (32 of 4), 4096x11008 20.2 against 21.7; session 12's calls 4
// and 5 found the same on 5504..8640 chunk-units (4096x14336: 24.9 against 26.6). Larger layers
// keep g_gemv_waves: 49152x12288 was 8% slower at 1 wave there. Small layers are unchanged
// (their split is set by kGemvMinUnits and the one-block-per-SM rule either way).
constexpr std::int64_t kGemvOneWaveMaxChunkUnits = 16384;
int g_gemv_one_token_waves = 1;
// Up to 4 tokens the gemv path is faster, at 8 the qmma path (H100, bench_gemm --compare-small,
// 4096x4096 and 49152x12288 at 3 and 4 bpw: 4 tokens 342 vs 386 us, 8 tokens 617 vs 437 us on
// the larger shape; bench/KERNELS.md).
int g_gemv_max_tokens = 4;  // set_gemv_max_tokens(): benchmark tuning only
// The half2 one-token kernel (hgemv_kernel.cuh) for f16 activations on layers of at least this
// many chunks x units (-1: never). H100, RESULTS.md session 12, side by side with gemv at 2.5, 3
// and 4 bpw: faster on every layer from 28672 chunk-units up (49152x12288 at 4 bpw: 133.1
// against 143.5 us; 8192x28672: 58.1 against 70.8; 28672x8192: 61.2 against 69.7), slower on
// every layer up to 8640 (13824x5120: 35.3 against 29.5; 4096x4096: 16.3 against 14.2): each
// block writes 45.5 KB of tables and the small layers' blocks have few units to spread it over.
std::int64_t g_gemv_h2_min_chunk_units = 16384;
// fmma for 3..32 tokens, from the H100 tables of RESULTS.md session 7: 1 and 2 tokens are faster
// on gemv (49152x12288 at 4 bpw, 2 tokens: 196 against 246 us), 3..32 on fmma (4 tokens: 250
// against 305 on gemv; 8: 271 against 334 on qmma; 17..32 on every Llama shape, e.g. 4096x4096 at
// 32 tokens 65 against 107), except 25..32 tokens on layers of more than kFmmaQmmaChunkUnits
// chunks x units (49152x12288: 682 against 615 on qmma at 32 tokens; the 70B shapes, 28672
// chunk-units: 284-301 us on fmma against 306-318 on qmma).
int g_fmma_min_tokens = 3, g_fmma_max_tokens = 32;  // set_fmma_tokens()
int g_fmma_large_max_tokens = 24;  // the most tokens fmma takes above kFmmaQmmaChunkUnits
constexpr std::int64_t kFmmaQmmaChunkUnits = 32768;
// The stream kernel for 4..16 tokens on layers of at least 4096 chunks x units. H100, RESULTS.md
// session 11, 16 consumer warps and 8 stager warps, against fmma beside it at 4, 8 and 16 tokens
// on 49152x12288, 8192x28672 and 4096x11008 at 3 and 4 bpw: faster or equal everywhere (4 bpw,
// 16 tokens: 300.7 against 351.2 us, 129.5 against 178.3, 50.7 against 69.4; 8 tokens: 250.3
// against 267.3, 109.0 against 130.8, 40.1 against 47.3; 4 tokens: 255.8 against 256.0, 107.0
// against 123.1, 37.2 against 42.2); 12 tokens beat or tied fmma on every shape from 5504
// chunk-units up in the call before the consumer loop change (which made 16 tokens 11% faster).
// It loses on 4096x4096 (2048 chunk-units: 39.8 against 36.0 at 16 tokens) and at 1 token (238.4
// against gemv's 142.5 us), so 1..3 tokens and smaller layers keep gemv / fmma.
int g_stream_min_tokens = 4, g_stream_max_tokens = 16;
std::int64_t g_stream_min_chunk_units = 4096;  // smaller layers keep fmma
int g_stream_groups = 2;
int g_stream_buf_stagers = 2;
int g_stream_max_blocks = 0;  // set_stream_max_blocks(): tests (long ranges on small layers); 0: SMs
// The stream kernel with half2 consumers for one f16 token (stream_h2.cuh) on layers of at least
// this many chunks x units (-1: never). Off by default: H100, RESULTS.md session 13, it was
// slower than hgemv on every layer from 16384 chunk-units up (49152x12288 at 4 bpw: 184.6
// against 137.2 us; 8192x28672: 76.2 against 60.0) and than gemv below (11008x4096: 26.2
// against 24.1; 4096x4096: 16.6 against 13.5).
std::int64_t g_stream_h2_min_chunk_units = -1;
int g_stream_h2_groups = 2;
// Programmatic dependent launch (pdl.cuh) for the kernels that take it (gemv, hgemv, stream,
// stream_h2), on sm_90. Why: H100, bench/read_ceiling.cu (RESULTS.md session 14), a plain read of
// a layer's bytes kernel after kernel in a graph reached 0.94 / 0.91 / 0.66-0.82 of the read
// bandwidth on the 175B / 70B / 7B sizes, 0.97 / 0.97-0.99 / 0.81-0.96 when each kernel could
// start while the one before drained. Its first version (every block triggering the next launch
// at its start) was 27% slower on 4096x4096 (H200, session 14 call 2: waiting blocks of several
// kernels piled up); with the trigger after the block's words (gemv, hgemv) it was faster on
// every one-token row of bench_gemm --compare-launch (H100, session 15 call 1, 4 and 3 bpw):
// 49152x12288 132.7 against 135.0 us, 8192x28672 59.0 against 60.3, 28672x8192 61.9 against
// 63.4, 11008x4096 22.4 against 23.6, 4096x4096 12.8 against 13.4.
bool g_pdl = true;
bool g_fence_all = false;  // set_fence_all: benchmark A/B only
// The K split's output by a kernel after the grid (finalize_kernel.cuh) instead of a counter per
// chunk and its last block: -1 where defer_output_pays says (default), 0 never, 1 always
// (set_defer_output).
int g_defer_output = -1;
// The stream kernel cuts its blocks' ranges at the layer's work quantiles (when the call has
// them) on layers whose blocks get at least g_stream_quantile_min_units flattened units each.
// Why (RESULTS.md session 17, H200, 16 tokens, radio.quantize's depth order): 8192x28672
// (217 units per block) and 12288x49152 (558) were 2-12% faster than at equal unit counts,
// 49152x12288 (558) and 28672x8192 (217) within 2%; the 7B up/down shapes (42 units per
// block) were 1.2-3.2 us slower with any table, even one cut nearly at equal units (unit weight
// 32), in random order, and within -2..+4% in sorted order.
bool g_stream_quantiles = true;  // set_stream_quantiles: benchmark A/B, tests
std::int64_t g_stream_quantile_min_units = 128;
constexpr int kFmmaMinUnits = 8;
constexpr int kFmmaSmemBytes = 112 * 1024;  // two blocks per SM on an H100 (228 KB)
constexpr int kGemvMinUnits = 4;

// A K split's zeroed workspace: `partials` f32 partial sums, then `counters` ints (the last-block
// counters) from the next 256-byte boundary.
void add_split_workspace(QlinearConfig& c, std::int64_t partials, std::int64_t counters) {
  c.counters_offset = (partials * 4 + 255) / 256 * 256;
  c.zeroed_bytes = c.counters_offset + counters * 4;
}

// The transposed x (transpose_x.cuh) after the zeroed part of the workspace, 256-byte aligned,
// sized for 4-byte activations (the configuration does not know the dtype).
void add_xt(QlinearConfig& c, int k, int tokens, int groups, int group_stride) {
  c.xt_tokens = tokens;
  c.xt_groups = groups;
  c.xt_group_stride = group_stride;
  c.xt_offset = (c.zeroed_bytes + 255) / 256 * 256;
  c.workspace_bytes = c.xt_offset + static_cast<std::int64_t>(groups) * k * tokens * 4;
}
constexpr int kGemvXsBytes = 32 * 1024;
// The gemv launch does not raise the 48 KiB default: xs, the block's unit offsets and depths
// (dynamic, at most kGemvXsBytes / 128 units at 1 token) and the static tables must fit in it.
static_assert(kGemvXsBytes + kGemvXsBytes / 128 * 5 + kGemvStaticSmemBytes <= 48 * 1024,
              "gemv shared memory above the default limit");

int device_cc_major() { return current_device_attribute(cudaDevAttrComputeCapabilityMajor); }

// The stream kernel's shape requirements (stream_kernel.cuh): sm_90, 256-row chunks, N a
// multiple of 256, and its shared memory for m tokens within the device's block limit.
bool stream_shape_fits(int m, int n, int gs) {
  return gs == kStreamRows && n % kStreamRows == 0 && device_cc_major() >= 9 &&
         stream_smem_bytes(m, stream_tok_tiles(m)) + kStreamStaticSmemBytes <=
             device_smem_per_block_optin();
}

bool stream_h2_applies(int n, int k, int gs) {
  return g_stream_h2_min_chunk_units >= 0 && stream_shape_fits(1, n, gs) &&
         static_cast<std::int64_t>(n / kStreamRows) * ceil_div(k, 32) >=
             g_stream_h2_min_chunk_units;
}

// Persistent stream blocks: one per SM (or set_stream_max_blocks' limit), at most one per
// chunk-unit.
int stream_blocks(std::int64_t chunk_units, int sm_count) {
  const int blocks = g_stream_max_blocks > 0 ? std::min(sm_count, g_stream_max_blocks) : sm_count;
  return static_cast<int>(std::min<std::int64_t>(blocks, chunk_units));
}
// Whether the stream kernel's `blocks` blocks over `chunk_units` cut at the work quantiles.
bool stream_quantiles_apply(std::int64_t chunk_units, int blocks) {
  return g_stream_quantiles && chunk_units >= g_stream_quantile_min_units * blocks;
}

QlinearConfig select_gemv_config(int m, int n, int k, int gs, int sm_count) {
  QlinearConfig c;
  c.gemv = true;
  c.gemv_tokens = m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8;
  c.threads = 32 * ceil_div(ceil_div(gs, 2), 32);
  const int units = ceil_div(k, 32);
  const int chunks = ceil_div(n, gs);
  const int resident = sm_count * std::max(1, 1024 / c.threads);
  const bool one_token_mid = c.gemv_tokens == 1 && static_cast<std::int64_t>(chunks) * units <
                                                       kGemvOneWaveMaxChunkUnits;
  const int waves = one_token_mid ? g_gemv_one_token_waves : g_gemv_waves;
  const int want_splits = std::max(1, ceil_div(waves * resident, chunks));
  const int max_units = std::max(1, kGemvXsBytes / (c.gemv_tokens * 32 * 4));
  // A layer too small to give every SM a block at kGemvMinUnits units per block (SmolLM2's 576-
  // and 1536-wide layers) splits finer, down to one unit, for about one block per SM: its time
  // is the latency of few blocks. SmolLM2-shaped decode 4.68 -> 4.43 ms at 4 bpw, Llama-2-7B
  // shapes unchanged; one unit per block for every layer cost the 4096-wide layers 25%
  // (bench/RESULTS.md session 6).
  const int min_units = chunks * ceil_div(units, kGemvMinUnits) >= sm_count
                            ? kGemvMinUnits
                            : std::clamp(ceil_div(units * chunks, sm_count), 1, kGemvMinUnits);
  c.units_per_split = std::clamp(ceil_div(units, want_splits), std::min(min_units, units),
                                 max_units);
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_x = chunks;
  c.grid_y = c.splits;
  c.smem_bytes = gemv_smem_bytes(c.gemv_tokens, c.units_per_split);
  // Chunks of 193..256 rows only (blocks of 2 x 128 threads, as measured), unless the knob is 0
  // (every layer: tests): with smaller chunks a block has fewer warps but the same 45.5 KB of
  // tables, so an SM would hold 4 blocks of 2-4 warps each (not measured).
  const bool h2_rows = c.threads == kGemvMaxRows / 2 || g_gemv_h2_min_chunk_units == 0;
  if (c.gemv_tokens == 1 && g_gemv_h2_min_chunk_units >= 0 && h2_rows &&
      static_cast<std::int64_t>(chunks) * units >= g_gemv_h2_min_chunk_units) {
    // The half2 kernel for f16 activations: the same rule at kHgemvBlocksPerSm blocks of two
    // gemv blocks' threads per SM (its 45.5 KB of tables) and hgemv_waves waves, at most
    // kHgemvMaxUnits units per block.
    const int h2_want =
        hgemv_want_splits(hgemv_waves(chunks, units, sm_count), chunks, sm_count);
    const int h2_units = std::clamp(ceil_div(units, h2_want), std::min(min_units, units),
                                    kHgemvMaxUnits);
    if (kHgemvStaticSmemBytes + hgemv_smem_bytes(h2_units) <= device_smem_per_block_optin()) {
      c.gemv_h2 = true;
      c.h2_threads = kHgemvGroups * c.threads;
      c.h2_units_per_split = h2_units;
      c.h2_splits = ceil_div(units, h2_units);
      c.h2_smem_bytes = hgemv_smem_bytes(h2_units);
    }
  }
  if (c.gemv_tokens == 1 && stream_h2_applies(n, k, gs)) {
    // The stream kernel with half2 consumers for f16 activations, in place of hgemv.
    c.gemv_h2 = false;
    c.stream_h2 = true;
    c.h2_groups = g_stream_h2_groups;
    c.stream_buf_stagers = g_stream_buf_stagers;
    c.h2_threads = stream_threads(c.h2_groups, c.stream_buf_stagers);
    c.h2_smem_bytes = stream_smem_bytes(1, 1);
    c.h2_blocks = stream_blocks(static_cast<std::int64_t>(chunks) * units, sm_count);
    c.stream_quantiles =
        stream_quantiles_apply(static_cast<std::int64_t>(chunks) * units, c.h2_blocks);
  }
  // One workspace for any of the kernels (each: n f32 partials and a counter per chunk).
  if (c.splits > 1 || c.h2_splits > 1 || c.stream_h2)
    add_split_workspace(c, static_cast<std::int64_t>(n) * c.gemv_tokens, chunks);
  if (c.gemv_tokens > 1) add_xt(c, k, c.gemv_tokens, 1, c.gemv_tokens);
  c.workspace_bytes = std::max(c.workspace_bytes, c.zeroed_bytes);
  return c;
}
// 9..64 tokens, chunks of at most 256 rows: qmma_kernel.cuh. The same K split rule as the gemv
// path, with xs (tokens x positions, 16-bit) within kGemvXsBytes.
QlinearConfig select_qmma_config(int m, int n, int k, int gs, int sm_count) {
  QlinearConfig c;
  c.qmma = true;
  c.tok_tiles = m <= 16 ? 2 : 4;
  c.threads = kQmmaThreads;
  c.grid_z = ceil_div(m, kQmmaGroupTokens);
  const int tokens = 8 * c.tok_tiles;
  const int units = ceil_div(k, 32);
  const int chunks = ceil_div(n, gs);
  const int resident = sm_count * 3;  // ~3 blocks of 128 threads per SM (registers)
  const int want_splits = std::max(1, ceil_div(g_gemv_waves * resident, chunks * c.grid_z));
  const int max_units = std::max(1, kGemvXsBytes / (tokens * 32 * 2));
  c.units_per_split = std::clamp(ceil_div(units, want_splits), std::min(kGemvMinUnits, units),
                                 max_units);
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_x = chunks;
  c.grid_y = c.splits;
  c.smem_bytes = qmma_smem_bytes(tokens, c.units_per_split);
  if (c.splits > 1)
    add_split_workspace(c, static_cast<std::int64_t>(c.grid_z) * n * kQmmaGroupTokens,
                        static_cast<std::int64_t>(c.grid_z) * chunks);
  add_xt(c, k, tokens, c.grid_z, kQmmaGroupTokens);
  return c;
}
bool stream_applies(int m, int n, int k, int gs) {
  return m >= g_stream_min_tokens && m <= g_stream_max_tokens && stream_shape_fits(m, n, gs) &&
         static_cast<std::int64_t>(n / kStreamRows) * ceil_div(k, 32) >= g_stream_min_chunk_units;
}

QlinearConfig select_stream_config(int m, int n, int k, int sm_count) {
  QlinearConfig c;
  c.stream = true;
  c.stream_groups = g_stream_groups;
  c.tok_tiles = stream_tok_tiles(m);
  c.stream_buf_stagers = g_stream_buf_stagers;
  c.threads = stream_threads(c.stream_groups, c.stream_buf_stagers);
  const int chunks = n / kStreamRows;
  const std::int64_t chunk_units = static_cast<std::int64_t>(chunks) * ceil_div(k, 32);
  c.grid_x = stream_blocks(chunk_units, sm_count);
  c.stream_quantiles = stream_quantiles_apply(chunk_units, c.grid_x);
  c.grid_y = 1;
  c.units_per_split = static_cast<int>((chunk_units + c.grid_x - 1) / c.grid_x);  // (a share)
  c.smem_bytes = stream_smem_bytes(m, c.tok_tiles);
  add_split_workspace(c, static_cast<std::int64_t>(n) * m, chunks);
  if (m > 1) add_xt(c, k, 8 * c.tok_tiles, 1, 8 * c.tok_tiles);
  c.workspace_bytes = std::max(c.workspace_bytes, c.zeroed_bytes);
  return c;
}

// Dynamic shared memory an fmma block may take: kFmmaSmemBytes, or less where the device allows
// less per block (e.g. 99 KB on sm_86); 1 KB left for the static part.
int fmma_smem_budget() {
  const int optin = device_smem_per_block_optin();
  return optin > 0 ? std::min(kFmmaSmemBytes, optin - 1024) : kFmmaSmemBytes;
}
// budget: fmma_smem_budget(), queried once per call by select_qlinear_config.
QlinearConfig select_fmma_config(int m, int n, int k, int gs, int sm_count, int budget) {
  QlinearConfig c;
  c.fmma = true;
  c.tok_tiles = m <= 8 ? 1 : m <= 16 ? 2 : 4;
  c.threads = fmma_threads(gs);
  const int units = ceil_div(k, 32);
  const int chunks = ceil_div(n, gs);
  const int resident = sm_count * 2;
  const int want_splits = std::max(1, ceil_div(g_gemv_waves * resident, chunks));
  const int fixed = fmma_smem_bytes(gs, m, 0);
  const int max_units = std::max(1, (budget - fixed) / (m * 64 + 5));
  // (not std::clamp: its lower bound may exceed max_units for a chunk size not timed here)
  c.units_per_split = std::min(
      std::max(ceil_div(units, want_splits), std::min(kFmmaMinUnits, units)), max_units);
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_x = chunks;
  c.grid_y = c.splits;
  c.smem_bytes = fmma_smem_bytes(gs, m, c.units_per_split);
  if (c.splits > 1) add_split_workspace(c, static_cast<std::int64_t>(n) * m, chunks);
  if (m > 1) add_xt(c, k, 8 * c.tok_tiles, 1, 8 * c.tok_tiles);
  c.workspace_bytes = std::max(c.workspace_bytes, c.zeroed_bytes);
  return c;
}
}  // namespace

void set_fmma_tokens(int min_tokens, int max_tokens, int large_max_tokens) {
  g_fmma_min_tokens = min_tokens;
  g_fmma_max_tokens = max_tokens;
  g_fmma_large_max_tokens = large_max_tokens;
}
std::array<int, 3> fmma_tokens() {
  return {g_fmma_min_tokens, g_fmma_max_tokens, g_fmma_large_max_tokens};
}
void set_stream_tokens(int min_tokens, int max_tokens, std::int64_t min_chunk_units) {
  g_stream_min_tokens = min_tokens;
  g_stream_max_tokens = max_tokens;
  g_stream_min_chunk_units = min_chunk_units;
}
std::array<std::int64_t, 3> stream_tokens() {
  return {g_stream_min_tokens, g_stream_max_tokens, g_stream_min_chunk_units};
}
void set_stream_groups(int groups) { g_stream_groups = groups; }
void set_stream_stagers(int buf_stagers) { g_stream_buf_stagers = buf_stagers; }
void set_stream_max_blocks(int blocks) { g_stream_max_blocks = blocks; }
void set_stream_h2(std::int64_t min_chunk_units, int groups) {
  g_stream_h2_min_chunk_units = min_chunk_units;
  g_stream_h2_groups = groups;
}
std::array<std::int64_t, 2> stream_h2() { return {g_stream_h2_min_chunk_units, g_stream_h2_groups}; }
void set_gemv_waves(int waves, int h2_waves, int one_token_waves) {
  g_gemv_waves = waves;
  g_h2_waves = h2_waves;
  g_gemv_one_token_waves = one_token_waves;
}
void set_gemv_max_tokens(int tokens) { g_gemv_max_tokens = tokens; }
void set_gemv_h2_min_chunk_units(std::int64_t min_chunk_units) {
  g_gemv_h2_min_chunk_units = min_chunk_units;
}
std::int64_t gemv_h2_min_chunk_units() { return g_gemv_h2_min_chunk_units; }

namespace {
// The kernel and its launch shape for m tokens (select_qlinear_config adds the launch mode).
QlinearConfig select_kernel_config(int m, int n, int k, int gs, int sm_count) {
  if (stream_applies(m, n, k, gs)) return select_stream_config(m, n, k, sm_count);
  const bool fmma_large_exception =
      m > g_fmma_large_max_tokens &&
      static_cast<std::int64_t>(ceil_div(n, gs)) * ceil_div(k, 32) > kFmmaQmmaChunkUnits;
  if (m >= g_fmma_min_tokens && m <= g_fmma_max_tokens && gs <= kFmmaMaxRows &&
      !fmma_large_exception) {
    // fmma only where the tables, the ring and xs for one unit fit the device's block limit
    const int budget = fmma_smem_budget();
    if (fmma_smem_bytes(gs, m, 1) <= budget)
      return select_fmma_config(m, n, k, gs, sm_count, budget);
  }
  if (m <= g_gemv_max_tokens && gs <= kGemvMaxRows) return select_gemv_config(m, n, k, gs, sm_count);
  if (m <= kQmmaMaxTokens && gs <= kGemvMaxRows) return select_qmma_config(m, n, k, gs, sm_count);
  QlinearConfig c;
  c.tok_tiles = m <= 8 ? 1 : m <= 16 ? 2 : m <= 32 ? 4 : 8;
  const int tokens = 8 * c.tok_tiles;
  c.tok_groups = ceil_div(m, tokens);
  c.warps = std::min(16, ceil_div(gs, 16));
  c.threads = 32 * c.warps;
  c.rows_per_block = 16 * c.warps;
  c.row_blocks_per_chunk = ceil_div(gs, c.rows_per_block);
  c.slice_units = 32 / c.tok_tiles;
  const int units = ceil_div(k, 32);
  const int chunks = ceil_div(n, gs);
  c.grid_x = chunks * c.row_blocks_per_chunk * c.tok_groups;
  if (c.tok_groups > 1) {
    // large batches: every block takes the whole K range and writes y itself
    c.units_per_split = units;
  } else {
    const int target_blocks = sm_count * std::max(1, 2048 / (32 * c.warps));
    const int want_splits = std::clamp(ceil_div(target_blocks, c.grid_x), 1, units);
    c.units_per_split = std::max(std::min(2, units), ceil_div(units, want_splits));
    c.units_per_split = std::min(c.units_per_split, kMaxBlockUnits);
  }
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_y = c.splits;
  c.smem_bytes = qlinear_smem_bytes(c.tok_tiles, c.slice_units, c.units_per_split);
  if (c.splits > 1) {
    add_split_workspace(c, static_cast<std::int64_t>(n) * tokens, c.grid_x);
    c.workspace_bytes = c.zeroed_bytes;
  }
  return c;
}

}  // namespace

// The deferred output at one and two tokens on every gemv / hgemv layer. Why (H100, RESULTS.md
// session 19): end to end it was the fastest of three ways on both decode benchmarks at 4 and
// 3 bpw (bench_decode --compare-defer; Llama-2-7B shapes at 4 bpw 6.037 ms per token deferred
// everywhere, 6.074 with the output deferred only where single layers timed faster, 6.137
// nowhere; SmolLM2 shapes 3.756 / 3.755 / 3.872). Timed one layer at a time (bench_gemm
// --compare-defer, graphs of the same call) it was faster on most layers (two tokens 7-21%,
// SmolLM2's layers 7-11%, 4096x4096 6%, hgemv's 0-1%) but 3-10% slower on the one-wave layers of
// 8192 and more rows (11008x4096 23.0 against 21.1 us, 8192x8192 28.2 against 25.8), which in
// the models, between other kernels, it was not. 4 and 8 tokens on gemv: not measured.
bool defer_output_pays(const QlinearConfig& c) { return c.gemv_tokens <= 2; }

QlinearConfig select_qlinear_config(int m, int n, int k, int gs, int sm_count) {
  QlinearConfig c = select_kernel_config(m, n, k, gs, sm_count);
  c.pdl = g_pdl && (c.gemv || c.stream) && device_cc_major() >= 9;
  c.fence_all = g_fence_all;
  const bool gemv_or_hgemv = c.gemv && !c.stream_h2;  // (ops.cu: where the output is deferred)
  c.defer_output =
      gemv_or_hgemv && (g_defer_output < 0 ? defer_output_pays(c) : g_defer_output > 0);
  return c;
}

void set_pdl(bool on) { g_pdl = on; }
bool pdl_enabled() { return g_pdl; }
void set_fence_all(bool on) { g_fence_all = on; }
bool fence_all() { return g_fence_all; }
void set_defer_output(int mode) { g_defer_output = mode < 0 ? -1 : mode > 0 ? 1 : 0; }
int defer_output() { return g_defer_output; }
void set_stream_quantiles(bool on, std::int64_t min_block_units) {
  g_stream_quantiles = on;
  g_stream_quantile_min_units = min_block_units;
}
std::pair<bool, std::int64_t> stream_quantiles() {
  return {g_stream_quantiles, g_stream_quantile_min_units};
}

DequantConfig select_dequant_config(int n, int k, int gs, int out_bytes, int sm_count) {
  (void)sm_count;
  DequantConfig c;
  // Row tiles. 8 rows (blocks of 1024 threads, dequant_rows_threads) when the tile fits the
  // device's per-block shared memory with room to spare: one block per SM still has 32 warps,
  // and each position's col_perm/scale/loc serve 8 rows. Otherwise the most rows (4, 2, 1)
  // within kTileBytes (3 blocks of 256 threads per SM); layers too wide for one row use the
  // fallback.
  constexpr int kTileBytes = 64 * 1024;
  const std::int64_t row_bytes = static_cast<std::int64_t>(k) * out_bytes;
  const int optin = device_smem_per_block_optin();
  const std::int64_t big_tile = optin > 0 ? optin - 16 * 1024 : kTileBytes;
  if (kMaxTileRows <= gs && kMaxTileRows * row_bytes <= big_tile) c.tile_rows = kMaxTileRows;
  for (int rows = kMaxTileRows / 2; rows >= 1 && c.tile_rows == 0; rows /= 2)
    if (rows * row_bytes <= kTileBytes && rows <= gs) c.tile_rows = rows;
  if (c.tile_rows == 0 && row_bytes <= 96 * 1024) c.tile_rows = 1;
  if (c.tile_rows > 0) {
    // the tile, then the chunk's unit offsets and depths (dequant_kernel.cuh)
    c.smem_bytes = static_cast<int>((c.tile_rows * row_bytes + 15) / 16 * 16) +
                   ceil_div(k, 32) * (4 + 1);
    c.row_blocks_per_chunk = ceil_div(gs, c.tile_rows);
    c.grid_x = ceil_div(n, gs) * c.row_blocks_per_chunk;
    c.grid_y = 1;
    return c;
  }
  c.rows_per_block = std::min(kDequantThreads, ceil_div(gs, 32) * 32);
  c.row_blocks_per_chunk = ceil_div(gs, c.rows_per_block);
  const int units = ceil_div(k, 32);
  // Two units per block, unit ranges along blockIdx.x (fastest in launch order): the blocks in
  // flight write the rows of one or two chunks, a region L2 can hold while its scattered 2-byte
  // writes fill whole sectors.
  c.units_per_split = std::min(2, units);
  c.splits = ceil_div(units, c.units_per_split);
  c.grid_x = c.splits;
  c.grid_y = ceil_div(n, gs) * c.row_blocks_per_chunk;
  return c;
}

}  // namespace radio::cuda
