// Entry points: fill the kernel parameters from the configuration (select_config.cu), launch.
// Nothing here throws; errors come back as messages (see ops.hpp).
#include "ops.hpp"

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled: the driver call through the runtime
#include <cuda_runtime_api.h>

#include <array>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "launch.cuh"

namespace radio::cuda {

namespace {

std::string cuda_error(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return {};
  return std::string("radio._cuda ") + what + ": " + cudaGetErrorString(err);
}

template <typename P>
void fill_layer(P& p, const LayerPtrs& l) {
  p.qweight = reinterpret_cast<const std::uint32_t*>(l.qweight);
  p.scale = reinterpret_cast<const __half*>(l.scale);
  p.loc = reinterpret_cast<const __half*>(l.loc);
  p.depth = reinterpret_cast<const std::uint8_t*>(l.depth);
  p.unit_offset = reinterpret_cast<const std::int32_t*>(l.unit_offset);
  p.row_perm = reinterpret_cast<const std::int32_t*>(l.row_perm);
  p.col_perm = reinterpret_cast<const std::int32_t*>(l.col_perm);
  p.n = l.n;
  p.k = l.k;
  p.gs = l.gs;
  p.units = (l.k + 31) / 32;
  p.padded_k = 32 * p.units;
  if constexpr (std::is_base_of_v<DecodeParams, P>) p.qweight_words = l.qweight_words;
}

// Laplace T_B[q] = -sign(v) ln(1 - 2|v|), v = (q + 1/2) / 2^B - 1/2 (docs/format.md), computed in
// double and rounded once; entry 2^B - 2 + q.
double laplace_table_entry(int i) {
  int b = 1;
  while (i >= (1 << (b + 1)) - 2) ++b;
  const int q = i - ((1 << b) - 2);
  const double v = (q + 0.5) / static_cast<double>(1 << b) - 0.5;
  return -(v < 0 ? -1.0 : 1.0) * std::log1p(-2.0 * std::fabs(v));
}

// T_B[q] of the format's table for either quantizer, all depths (entry 2^B - 2 + q), in f32.
std::array<float, 512> compute_table_f32(Quant q) {
  std::array<float, 512> table{};
  for (int i = 0; i < kTableEntries; ++i) {
    int b = 1;
    while (i >= (1 << (b + 1)) - 2) ++b;
    const int idx = i - ((1 << b) - 2);
    table[i] = q == Quant::kLaplace ? static_cast<float>(laplace_table_entry(i))
                                    : static_cast<float>(idx) - 0.5f * ((1 << b) - 1);
  }
  return table;  // entries 510 and 511: 0
}

// The table of every call, computed once per quantizer: the 510 log1p took 8.3 us per call on
// the 2-core dev machine (a copy of the loop timed alone), on every qlinear call outside CUDA
// graphs, ~1.7 ms per token for SmolLM2's 210 layers.
void fill_table_f32(Quant q, float (&table)[512]) {
  static const std::array<float, 512> laplace = compute_table_f32(Quant::kLaplace);
  static const std::array<float, 512> uniform = compute_table_f32(Quant::kUniform);
  std::memcpy(table, (q == Quant::kLaplace ? laplace : uniform).data(), sizeof table);
}

// T_B[q] as 16-bit patterns of the mma type M (entry 2^B - 2 + q), and the pairs (T_B[q], T_B[q'])
// of depths 1..kFmmaPairMaxDepth at entry q | q' << B (low, high half), computed once per (M,
// quantizer) and copied into the kernels' parameters: fmma takes both, qmma and the older
// tensor-core kernel the values, gemv the f16 pairs of depths 1..kPairMaxDepth (a prefix).
template <typename M>
struct Tables16 {
  std::uint16_t table[512];
  std::uint32_t pairs[kFmmaPairEntries];
  explicit Tables16(Quant q) {
    float f32[512];
    fill_table_f32(q, f32);
    for (int i = 0; i < 512; ++i) {
      const M h = static_cast<M>(f32[i]);
      std::memcpy(&table[i], &h, 2);
    }
    for (int b = 1; b <= kFmmaPairMaxDepth; ++b)
      for (int e = 0; e < (1 << (2 * b)); ++e) {
        const std::uint32_t lo = table[(1 << b) - 2 + (e & ((1 << b) - 1))];
        const std::uint32_t hi = table[(1 << b) - 2 + (e >> b)];
        pairs[pair_table_start(b) + e] = lo | (hi << 16);
      }
  }
};
static_assert(kPairMaxDepth <= kFmmaPairMaxDepth, "gemv's pair table is a prefix of fmma's");

template <typename M>
const Tables16<M>& tables16(Quant q) {
  static const Tables16<M> laplace(Quant::kLaplace), uniform(Quant::kUniform);
  return q == Quant::kLaplace ? laplace : uniform;
}

// The 16-bit table and the pair tables of depths 1..4 in type M into a kernel's parameters
// (fmma, stream and hgemv take both).
template <typename M, typename P>
void copy_tables16(P& p, int quantizer) {
  const Tables16<M>& t = tables16<M>(static_cast<Quant>(quantizer));
  std::memcpy(p.table, t.table, sizeof p.table);
  std::memcpy(p.pair_table, t.pairs, sizeof p.pair_table);
}

// The fields every qlinear kernel's parameters share, and the zeroed workspace of a K split
// (f32 partials and the per-row-range counters the last block resets): memset here unless the
// caller's is already zero (`ws_zeroed`).
template <typename P>
std::string prepare_call(P& p, std::uintptr_t x, int m, const LayerPtrs& layer, std::uintptr_t y,
                         std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c,
                         cudaStream_t s) {
  fill_layer(p, layer);
  p.x = reinterpret_cast<const void*>(x);
  p.bias = reinterpret_cast<const __half*>(layer.bias);
  p.y = reinterpret_cast<void*>(y);
  p.m = m;
  p.units_per_split = c.units_per_split;
  p.splits = c.splits;
  if constexpr (std::is_base_of_v<DecodeParams, P>) p.fence_all = c.fence_all;
  if (c.zeroed_bytes == 0) return {};
  p.workspace = reinterpret_cast<float*>(workspace);
  p.counters = reinterpret_cast<int*>(workspace + c.counters_offset);
  if (ws_zeroed) return {};
  return cuda_error(cudaMemsetAsync(reinterpret_cast<void*>(workspace), 0, c.zeroed_bytes, s),
                    "workspace memset");
}

// p.xt: x itself (one token), or x transposed into the workspace by a kernel launched first.
template <typename Act, typename P>
std::string prepare_xt(P& p, std::uintptr_t x, int m, int k, std::uintptr_t workspace,
                       const QlinearConfig& c, cudaStream_t s) {
  if (c.xt_tokens == 0) {
    p.xt = reinterpret_cast<const void*>(x);
    return {};
  }
  void* xt = reinterpret_cast<void*>(workspace + c.xt_offset);
  p.xt = xt;
  return cuda_error(launch_transpose_x<Act>(reinterpret_cast<const void*>(x), m, k, c.xt_tokens,
                                            c.xt_groups, c.xt_group_stride, xt, s),
                    "transpose_x launch");
}

// After a gemv or hgemv grid whose blocks deferred the K split's output (p.defer_output): the
// kernel that writes y from the workspace (finalize_kernel.cuh); partials of permuted row r and
// token t at workspace[r * ws_stride + t].
template <typename Act>
std::string finalize_deferred(const DecodeParams& p, int ws_stride, const QlinearConfig& c,
                              cudaStream_t s) {
  if (!p.defer_output) return {};
  FinalizeParams f{};
  f.workspace = p.workspace;
  f.row_perm = p.row_perm;
  f.bias = p.bias;
  f.y = p.y;
  f.n = p.n;
  f.m = p.m;
  f.ws_stride = ws_stride;
  return cuda_error(launch_finalize<Act>(f, c.pdl, s), "finalize launch");
}

// The gemv and qmma launches (fmma: launch_fmma_as) for one activation type: x staged
// (transposed) first, then the kernel (gemv: and the deferred output's kernel after it); qmma's
// table in its mma type (f16 for f32 activations).
template <typename Act>
std::string launch_gemv_as(GemvParams& p, std::uintptr_t x, int m, const LayerPtrs& layer,
                           std::uintptr_t workspace, const QlinearConfig& c, cudaStream_t s) {
  if (std::string err = prepare_xt<Act>(p, x, m, layer.k, workspace, c, s); !err.empty()) return err;
  p.defer_output = c.defer_output && p.splits > 1;
  if (std::string err = cuda_error(launch_gemv<Act>(p, c, s), "gemv launch"); !err.empty()) return err;
  return finalize_deferred<Act>(p, c.gemv_tokens, c, s);
}

template <typename Act>
std::string launch_qmma_as(QmmaParams& p, std::uintptr_t x, int m, const LayerPtrs& layer,
                           std::uintptr_t workspace, const QlinearConfig& c, cudaStream_t s) {
  const auto& tables = tables16<typename MmaTypeOf<Act>::type>(static_cast<Quant>(layer.quantizer));
  std::memcpy(p.table, tables.table, sizeof p.table);
  if (std::string err = prepare_xt<Act>(p, x, m, layer.k, workspace, c, s); !err.empty()) return err;
  return cuda_error(launch_qmma<Act>(p, c, s), "qmma launch");
}

template <typename Act>
std::string launch_fmma_as(FmmaParams& p, std::uintptr_t x, int m, const LayerPtrs& layer,
                           std::uintptr_t workspace, const QlinearConfig& c, cudaStream_t s) {
  copy_tables16<typename MmaTypeOf<Act>::type>(p, layer.quantizer);
  if (std::string err = prepare_xt<Act>(p, x, m, layer.k, workspace, c, s); !err.empty()) return err;
  return cuda_error(launch_fmma<Act>(p, c, s), "fmma launch");
}

std::string fmma(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer, std::uintptr_t y,
                 std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c, cudaStream_t s) {
  FmmaParams p{};
  if (std::string err = prepare_call(p, x, m, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  // 16-byte unit copies need every unit to start on a 16-byte boundary and span whole 4-row
  // groups: all chunks' rows a multiple of 4 (then every offset is too) and an aligned qweight.
  p.copy16 = layer.gs % 4 == 0 && layer.n % 4 == 0 && layer.qweight % 16 == 0;
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf: return launch_fmma_as<__half>(p, x, m, layer, workspace, c, s);
    case DType::kBFloat16: return launch_fmma_as<__nv_bfloat16>(p, x, m, layer, workspace, c, s);
    default: return launch_fmma_as<float>(p, x, m, layer, workspace, c, s);
  }
}

// cuTensorMapEncodeTiled from the driver the runtime already loaded (no link against libcuda,
// which the CI machine lacks), looked up once.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000,
                                                             cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f)
               : nullptr;
  }();
  return fn;
}

// The stream kernel's view of qweight: rows of 256 words (one word row of a 256-row chunk), boxes
// of 8 word rows x 32 words (one consumer warp's slab of a stage), with the 128-byte swizzle for
// the mma consumers (stream_kernel.cuh) and without for the half2 ones (stream_h2.cuh). A layer
// without words gets a map over `spare` (>= 1 KB) it never reads.
std::string encode_stream_map(const LayerPtrs& layer, std::uintptr_t spare, bool swizzle,
                              CUtensorMap* map) {
  const auto encode = tensor_map_encoder();
  if (!encode) return "radio._cuda stream: cuTensorMapEncodeTiled is not available";
  if (layer.qweight_words < 0 || layer.qweight_words % kStreamRows != 0)
    return "radio._cuda stream: qweight_words must be a multiple of 256, got " +
           std::to_string(layer.qweight_words);
  const bool empty = layer.qweight_words == 0;
  const std::uintptr_t base = empty ? spare : layer.qweight;
  if (base % 16 != 0) return "radio._cuda stream: qweight must be 16-byte aligned";
  const cuuint64_t rows = empty ? 1u : static_cast<cuuint64_t>(layer.qweight_words / kStreamRows);
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(kStreamRows), rows};
  const cuuint64_t strides[1] = {kStreamRows * 4};
  const cuuint32_t box[2] = {32, kStreamStageRows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT32, 2, reinterpret_cast<void*>(base),
                            dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return "radio._cuda stream: cuTensorMapEncodeTiled failed (" +
                                std::to_string(static_cast<int>(r)) + ")";
  return {};
}

// The stream kernel's block ranges: cut at the layer's work quantiles when the call has them
// (and the A/B knob allows), else equal unit counts (block_range in stream_layout.cuh).
void set_block_ranges(StreamParams& p, const LayerPtrs& layer, const QlinearConfig& c) {
  const bool use = c.stream_quantiles && layer.work_quantile_count >= 2;
  p.work_quantiles = use ? reinterpret_cast<const std::int32_t*>(layer.work_quantiles) : nullptr;
  p.work_quantile_count = use ? layer.work_quantile_count : 0;
}

template <typename Act>
std::string launch_stream_as(StreamParams& p, const CUtensorMap& map, std::uintptr_t x, int m,
                             const LayerPtrs& layer, std::uintptr_t workspace,
                             const QlinearConfig& c, cudaStream_t s) {
  copy_tables16<typename MmaTypeOf<Act>::type>(p, layer.quantizer);
  p.buf_stagers = c.stream_buf_stagers;
  set_block_ranges(p, layer, c);
  if (std::string err = prepare_xt<Act>(p, x, m, layer.k, workspace, c, s); !err.empty()) return err;
  return cuda_error(launch_stream<Act>(p, map, c, s), "stream launch");
}

std::string stream_qlinear(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer,
                          std::uintptr_t y, std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c,
                          cudaStream_t s) {
  StreamParams p{};
  if (std::string err = prepare_call(p, x, m, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  CUtensorMap map;
  if (std::string err = encode_stream_map(layer, workspace, true, &map); !err.empty()) return err;
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf: return launch_stream_as<__half>(p, map, x, m, layer, workspace, c, s);
    case DType::kBFloat16:
      return launch_stream_as<__nv_bfloat16>(p, map, x, m, layer, workspace, c, s);
    default: return launch_stream_as<float>(p, map, x, m, layer, workspace, c, s);
  }
}

// One token, f16 activations, where the config allows it: the half2 kernel with its K split.
std::string hgemv(std::uintptr_t x, const LayerPtrs& layer, std::uintptr_t y,
                  std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c, cudaStream_t s) {
  HgemvParams p{};
  if (std::string err = prepare_call(p, x, 1, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  p.units_per_split = c.h2_units_per_split;
  p.splits = c.h2_splits;
  p.defer_output = c.defer_output && p.splits > 1;
  copy_tables16<__half>(p, layer.quantizer);
  p.xt = reinterpret_cast<const void*>(x);
  if (std::string err = cuda_error(launch_hgemv(p, c, s), "hgemv launch"); !err.empty()) return err;
  return finalize_deferred<__half>(p, 1, c, s);
}

// One token, f16 activations, where the config allows it: the stream kernel with half2
// consumers, x read directly.
std::string stream_h2(std::uintptr_t x, const LayerPtrs& layer, std::uintptr_t y,
                      std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c, cudaStream_t s) {
  StreamParams p{};
  if (std::string err = prepare_call(p, x, 1, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  CUtensorMap map;
  if (std::string err = encode_stream_map(layer, workspace, false, &map); !err.empty()) return err;
  copy_tables16<__half>(p, layer.quantizer);
  p.buf_stagers = c.stream_buf_stagers;
  set_block_ranges(p, layer, c);
  p.xt = reinterpret_cast<const void*>(x);
  return cuda_error(launch_stream_h2(p, map, c, s), "stream h2 launch");
}

std::string gemv(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer, std::uintptr_t y,
                 std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c, cudaStream_t s) {
  if (m == 1 && static_cast<DType>(dtype) == DType::kHalf) {
    if (c.stream_h2) return stream_h2(x, layer, y, workspace, ws_zeroed, c, s);
    if (c.gemv_h2) return hgemv(x, layer, y, workspace, ws_zeroed, c, s);
  }
  GemvParams p{};
  if (std::string err = prepare_call(p, x, m, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  fill_table_f32(static_cast<Quant>(layer.quantizer), p.table);
  std::memcpy(p.pair_table, tables16<__half>(static_cast<Quant>(layer.quantizer)).pairs,
              sizeof p.pair_table);
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf: return launch_gemv_as<__half>(p, x, m, layer, workspace, c, s);
    case DType::kBFloat16: return launch_gemv_as<__nv_bfloat16>(p, x, m, layer, workspace, c, s);
    default: return launch_gemv_as<float>(p, x, m, layer, workspace, c, s);
  }
}

std::string qmma(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer, std::uintptr_t y,
                 std::uintptr_t workspace, bool ws_zeroed, const QlinearConfig& c, cudaStream_t s) {
  QmmaParams p{};
  if (std::string err = prepare_call(p, x, m, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf: return launch_qmma_as<__half>(p, x, m, layer, workspace, c, s);
    case DType::kBFloat16: return launch_qmma_as<__nv_bfloat16>(p, x, m, layer, workspace, c, s);
    default: return launch_qmma_as<float>(p, x, m, layer, workspace, c, s);
  }
}

// The older tensor-core kernel (qlinear_kernel.cuh).
std::string older_kernel_qlinear(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer,
                                 std::uintptr_t y, std::uintptr_t workspace, bool ws_zeroed,
                                 const QlinearConfig& c, cudaStream_t s) {
  QlinearParams p{};
  if (std::string err = prepare_call(p, x, m, layer, y, workspace, ws_zeroed, c, s); !err.empty()) return err;
  p.rows_per_block = c.rows_per_block;
  p.row_blocks_per_chunk = c.row_blocks_per_chunk;
  p.slice_units = c.slice_units;
  p.tok_groups = c.tok_groups;
  const Quant q = static_cast<Quant>(layer.quantizer);
  if (q == Quant::kLaplace) {
    if (static_cast<DType>(dtype) == DType::kBFloat16)
      std::memcpy(p.lut, tables16<__nv_bfloat16>(q).table, sizeof p.lut);
    else
      std::memcpy(p.lut, tables16<__half>(q).table, sizeof p.lut);
  }
  const bool lap = q == Quant::kLaplace;
  cudaError_t err;
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf:
      err = lap ? launch_qlinear_tiles<__half, Quant::kLaplace>(p, c, s)
                : launch_qlinear_tiles<__half, Quant::kUniform>(p, c, s);
      break;
    case DType::kBFloat16:
      err = lap ? launch_qlinear_tiles<__nv_bfloat16, Quant::kLaplace>(p, c, s)
                : launch_qlinear_tiles<__nv_bfloat16, Quant::kUniform>(p, c, s);
      break;
    default:
      err = lap ? launch_qlinear_tiles<float, Quant::kLaplace>(p, c, s)
                : launch_qlinear_tiles<float, Quant::kUniform>(p, c, s);
      break;
  }
  return cuda_error(err, "qlinear launch");
}

}  // namespace

std::string qlinear(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer,
                    std::uintptr_t y, std::uintptr_t workspace, const QlinearConfig& c,
                    std::uintptr_t stream, bool ws_zeroed) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (c.stream) return stream_qlinear(x, dtype, m, layer, y, workspace, ws_zeroed, c, s);
  if (c.fmma) return fmma(x, dtype, m, layer, y, workspace, ws_zeroed, c, s);
  if (c.gemv) return gemv(x, dtype, m, layer, y, workspace, ws_zeroed, c, s);
  if (c.qmma) return qmma(x, dtype, m, layer, y, workspace, ws_zeroed, c, s);
  // The older tensor-core kernel: its last blocks do not zero the workspace (partials of
  // tokens past m are added but never read), so a kept workspace is zeroed after it.
  if (std::string err = older_kernel_qlinear(x, dtype, m, layer, y, workspace, ws_zeroed, c, s);
      !err.empty() || !ws_zeroed || c.zeroed_bytes == 0)
    return err;
  return cuda_error(cudaMemsetAsync(reinterpret_cast<void*>(workspace), 0, c.zeroed_bytes, s),
                    "workspace memset");
}

std::string dequantize(const LayerPtrs& layer, std::uintptr_t out, int dtype,
                       std::uintptr_t stream) {
  const int out_bytes = static_cast<DType>(dtype) == DType::kFloat ? 4 : 2;
  const DequantConfig c =
      select_dequant_config(layer.n, layer.k, layer.gs, out_bytes, device_sm_count());
  DequantParams p{};
  fill_layer(p, layer);
  p.out = reinterpret_cast<void*>(out);
  p.rows_per_block = c.rows_per_block;
  p.row_blocks_per_chunk = c.row_blocks_per_chunk;
  p.units_per_split = c.units_per_split;
  p.tile_rows = c.tile_rows;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const Quant q = static_cast<Quant>(layer.quantizer);
  fill_table_f32(q, p.lut);
  const bool lap = q == Quant::kLaplace;
  cudaError_t err;
  switch (static_cast<DType>(dtype)) {
    case DType::kHalf:
      err = lap ? launch_dequant<__half, Quant::kLaplace>(p, c, s)
                : launch_dequant<__half, Quant::kUniform>(p, c, s);
      break;
    case DType::kBFloat16:
      err = lap ? launch_dequant<__nv_bfloat16, Quant::kLaplace>(p, c, s)
                : launch_dequant<__nv_bfloat16, Quant::kUniform>(p, c, s);
      break;
    default:
      err = lap ? launch_dequant<float, Quant::kLaplace>(p, c, s)
                : launch_dequant<float, Quant::kUniform>(p, c, s);
      break;
  }
  return cuda_error(err, "dequantize launch");
}

}  // namespace radio::cuda
