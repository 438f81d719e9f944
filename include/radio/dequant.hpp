// CPU reference reconstruction of a packed layer (docs/format.md "Reconstruction"): dequantize()
// to a float32 [N, K] matrix in the original row/column order, and dequant_matmul() = dequantize
// then one Eigen GEMM. This is the reference the CUDA kernels are checked against, so it favours
// plainness over speed.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"
#include "radio/half.hpp"
#include "radio/layer.hpp"
#include "radio/pack.hpp"
#include "radio/tables.hpp"

namespace radio {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// W float32 [N, K], original order. Validates the layer first (bad permutations would otherwise
// write out of bounds).
inline RowMatrixF dequantize(const QuantizedLayer& layer) {
  layer.validate();
  const LayerGeometry& g = layer.geometry;
  const std::int64_t k = g.in_features, kp = g.padded_in(), units = g.units();
  const std::vector<std::uint8_t> idx = unpack_layer(
      g, layer.depth.data(), layer.qweight.data(), static_cast<std::int64_t>(layer.qweight.size()));
  const QuantizerLut& lut = quantizer_lut(layer.quantizer);
  RowMatrixF w(g.out_features, k);
  std::vector<float> scale(static_cast<std::size_t>(kp)), loc(static_cast<std::size_t>(kp));
  std::vector<int> lut_base(static_cast<std::size_t>(kp));
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    for (std::int64_t p = 0; p < kp; ++p) {
      scale[static_cast<std::size_t>(p)] = half_to_float(layer.scale[static_cast<std::size_t>(c * kp + p)]);
      loc[static_cast<std::size_t>(p)] = half_to_float(layer.loc[static_cast<std::size_t>(c * kp + p)]);
      lut_base[static_cast<std::size_t>(p)] = 1 << layer.depth[static_cast<std::size_t>(c * units + p / kUnit)];
    }
    const std::int32_t* col_perm = layer.col_perm.data() + c * kp;
    for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r) {
      const std::int64_t prow = c * g.rows_per_group + r;
      const std::uint8_t* q = idx.data() + prow * kp;
      float* dst = w.data() + static_cast<std::int64_t>(layer.row_perm[static_cast<std::size_t>(prow)]) * k;
      for (std::int64_t p = 0; p < k; ++p) {
        const auto sp = static_cast<std::size_t>(p);
        dst[col_perm[p]] = loc[sp] + scale[sp] * lut[static_cast<std::size_t>(lut_base[sp] + q[p])];
      }
    }
  }
  return w;
}

// Y float32 [M, N] = X [M, K] (row-major) times W^T, plus the bias when the layer has one.
inline RowMatrixF dequant_matmul(const QuantizedLayer& layer, const float* x, std::int64_t m) {
  RADIO_CHECK(m >= 0, "x must have a non-negative number of rows, got ", m);
  const RowMatrixF w = dequantize(layer);
  const Eigen::Map<const RowMatrixF> xm(x, m, layer.geometry.in_features);
  RowMatrixF y = xm * w.transpose();
  if (layer.has_bias) {
    Eigen::RowVectorXf b(layer.geometry.out_features);
    for (std::int64_t i = 0; i < b.size(); ++i) b(i) = half_to_float(layer.bias[static_cast<std::size_t>(i)]);
    y.rowwise() += b;
  }
  return y;
}

}  // namespace radio
