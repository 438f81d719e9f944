// Entry points: check the arguments, take the configuration from select_config.cu, launch.
#include "ops.hpp"

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "launch.cuh"
#include "radio/config.hpp"

namespace radio::cuda {

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("radio._cuda ") + what + ": " + cudaGetErrorString(err));
}

void check_layer(const LayerPtrs& l) {
  RADIO_CHECK(l.n > 0 && l.k > 0 && l.gs > 0, "layer sizes must be positive, got out_features=",
              l.n, " in_features=", l.k, " rows_per_group=", l.gs);
  RADIO_CHECK(l.quantizer == 0 || l.quantizer == 1,
              "quantizer must be 0 (laplace) or 1 (uniform), got ", l.quantizer);
  RADIO_CHECK(l.qweight && l.scale && l.loc && l.depth && l.unit_offset && l.row_perm &&
                  l.col_perm,
              "a layer tensor pointer is null (qweight, scale, loc, depth, unit_offset, row_perm, "
              "col_perm must all be set)");
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

template <typename M>
void fill_lut16(std::uint16_t (&lut)[512]) {
  for (int i = 0; i < kLutEntries; ++i) {
    // T_B[q] rounded to f32 first (the format's precision), then to the mma type
    const M h = static_cast<M>(static_cast<float>(laplace_table_entry(i)));
    std::memcpy(&lut[i], &h, 2);
  }
}

}  // namespace

std::int64_t qlinear_workspace_bytes(int m, int n, int k, int gs) {
  return select_qlinear_config(m, n, k, gs, device_sm_count()).workspace_bytes;
}

void qlinear(std::uintptr_t x, int dtype, int m, const LayerPtrs& layer, std::uintptr_t y,
             std::uintptr_t workspace, std::int64_t workspace_bytes, std::uintptr_t stream) {
  check_layer(layer);
  RADIO_CHECK(dtype >= 0 && dtype <= 2, "dtype code must be 0 (f16), 1 (bf16) or 2 (f32), got ",
              dtype);
  RADIO_CHECK(x && y, "x and y must be non-null device pointers");
  const QlinearConfig c = select_qlinear_config(m, layer.n, layer.k, layer.gs, device_sm_count());
  RADIO_CHECK(workspace_bytes >= c.workspace_bytes, "workspace of ", workspace_bytes,
              " bytes is too small: this launch needs ", c.workspace_bytes);
  RADIO_CHECK(c.workspace_bytes == 0 || workspace, "workspace pointer is null but ",
              c.workspace_bytes, " bytes are needed");
  QlinearParams p{};
  fill_layer(p, layer);
  p.x = reinterpret_cast<const void*>(x);
  p.bias = reinterpret_cast<const __half*>(layer.bias);
  p.y = reinterpret_cast<void*>(y);
  p.m = m;
  p.rows_per_block = c.rows_per_block;
  p.row_blocks_per_chunk = c.row_blocks_per_chunk;
  p.slice_units = c.slice_units;
  p.units_per_split = c.units_per_split;
  p.splits = c.splits;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (c.workspace_bytes > 0) {
    p.workspace = reinterpret_cast<float*>(workspace);
    p.counters = reinterpret_cast<int*>(workspace + c.counters_offset);
    check_cuda(cudaMemsetAsync(reinterpret_cast<void*>(workspace), 0, c.workspace_bytes, s),
               "workspace memset");
  }
  const Quant q = static_cast<Quant>(layer.quantizer);
  if (q == Quant::kLaplace) {
    if (static_cast<DType>(dtype) == DType::kBFloat16) fill_lut16<__nv_bfloat16>(p.lut);
    else fill_lut16<__half>(p.lut);
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
  check_cuda(err, "qlinear launch");
}

void dequantize(const LayerPtrs& layer, std::uintptr_t out, int dtype, std::uintptr_t stream) {
  check_layer(layer);
  RADIO_CHECK(dtype >= 0 && dtype <= 2, "dtype code must be 0 (f16), 1 (bf16) or 2 (f32), got ",
              dtype);
  RADIO_CHECK(out, "out must be a non-null device pointer");
  const DequantConfig c = select_dequant_config(layer.n, layer.k, layer.gs, device_sm_count());
  DequantParams p{};
  fill_layer(p, layer);
  p.out = reinterpret_cast<void*>(out);
  p.rows_per_block = c.rows_per_block;
  p.row_blocks_per_chunk = c.row_blocks_per_chunk;
  p.units_per_split = c.units_per_split;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const Quant q = static_cast<Quant>(layer.quantizer);
  for (int i = 0; i < kLutEntries; ++i) p.lut[i] = static_cast<float>(laplace_table_entry(i));
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
  check_cuda(err, "dequantize launch");
}

}  // namespace radio::cuda
