// dequantize / dequant_matmul against a naive double loop written from the spec's formula.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "radio/dequant.hpp"
#include "radio/quantizer.hpp"

namespace {

radio::QuantizedLayer random_layer(std::int64_t n, std::int64_t k, std::int64_t gs,
                                   radio::Quantizer quantizer, bool bias, std::mt19937& rng) {
  const radio::LayerGeometry g(n, k, gs);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = normal(rng);
  std::vector<std::int32_t> row_perm(static_cast<std::size_t>(n));
  std::iota(row_perm.begin(), row_perm.end(), 0);
  std::shuffle(row_perm.begin(), row_perm.end(), rng);
  const std::int64_t kp = g.padded_in();
  std::vector<std::int32_t> col_perm(static_cast<std::size_t>(g.chunks() * kp), static_cast<std::int32_t>(k));
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    auto first = col_perm.begin() + c * kp;
    std::iota(first, first + k, 0);
    std::shuffle(first, first + k, rng);
  }
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(g.chunks() * g.units()));
  for (auto& d : depth) d = static_cast<std::uint8_t>(rng() % 9);
  radio::QuantizerOptions opt;
  opt.quantizer = quantizer;
  opt.refine = false;
  radio::QuantizedLayer layer =
      radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt);
  if (bias) {
    layer.has_bias = true;
    for (std::int64_t i = 0; i < n; ++i) layer.bias.push_back(radio::float_to_half(normal(rng)));
  }
  return layer;
}

// W[row_perm[c*gs + r], col_perm[c, p]] = loc + scale * T_B[q], with q from the reference unpack.
std::vector<double> naive_weight(const radio::QuantizedLayer& layer) {
  const radio::LayerGeometry& g = layer.geometry;
  const std::int64_t k = g.in_features, kp = g.padded_in();
  const auto idx = radio::unpack_layer_ref(g, layer.depth.data(), layer.qweight);
  std::vector<double> w(static_cast<std::size_t>(g.out_features * k), std::nan(""));
  for (std::int64_t c = 0; c < g.chunks(); ++c)
    for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r)
      for (std::int64_t p = 0; p < k; ++p) {
        const auto at = static_cast<std::size_t>(c * kp + p);
        const int b = layer.depth[static_cast<std::size_t>(c * g.units() + p / 32)];
        const int q = idx[static_cast<std::size_t>((c * g.rows_per_group + r) * kp + p)];
        const float t = radio::quantizer_table(layer.quantizer, b)[q];
        const float value = radio::half_to_float(layer.loc[at]) + radio::half_to_float(layer.scale[at]) * t;
        w[static_cast<std::size_t>(layer.row_perm[static_cast<std::size_t>(c * g.rows_per_group + r)] * k +
                                   layer.col_perm[at])] = value;
      }
  return w;
}

}  // namespace

TEST_CASE("dequantize equals the naive reconstruction", "[format][dequant]") {
  std::mt19937 rng(1);
  for (auto quantizer : {radio::Quantizer::kLaplace, radio::Quantizer::kUniform})
    for (auto [n, k, gs] : {std::tuple<int, int, int>{1, 1, 1}, {7, 33, 4}, {33, 70, 32}, {100, 45, 256}}) {
      const auto layer = random_layer(n, k, gs, quantizer, false, rng);
      const auto w = radio::dequantize(layer);
      const auto ref = naive_weight(layer);
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < k; ++j) REQUIRE(w(i, j) == static_cast<float>(ref[static_cast<std::size_t>(i * k + j)]));
    }
}

TEST_CASE("dequant_matmul equals a naive double loop, with and without bias", "[format][dequant]") {
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const bool bias : {false, true}) {
    const std::int64_t n = 37, k = 70, m = 5;
    const auto layer = random_layer(n, k, 16, radio::Quantizer::kLaplace, bias, rng);
    std::vector<float> x(static_cast<std::size_t>(m * k));
    for (auto& v : x) v = normal(rng);
    const auto y = radio::dequant_matmul(layer, x.data(), m);
    REQUIRE(y.rows() == m);
    REQUIRE(y.cols() == n);
    const auto w = naive_weight(layer);
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t o = 0; o < n; ++o) {
        double sum = bias ? radio::half_to_float(layer.bias[static_cast<std::size_t>(o)]) : 0.0;
        for (std::int64_t j = 0; j < k; ++j)
          sum += static_cast<double>(x[static_cast<std::size_t>(i * k + j)]) * w[static_cast<std::size_t>(o * k + j)];
        REQUIRE(y(i, o) == Approx(sum).margin(1e-5).epsilon(1e-5));
      }
  }
}

TEST_CASE("layer bytes and validate", "[format][dequant]") {
  std::mt19937 rng(3);
  auto layer = random_layer(70, 45, 32, radio::Quantizer::kUniform, true, rng);
  layer.validate();
  CHECK(layer.bytes() == layer.geometry.side_bytes(true) + 4 * static_cast<std::int64_t>(layer.qweight.size()));
  // C=3, Kp=64: scale+loc+col_perm 3*64*6, depth 3*2, row_perm 70*2, bias 70*2, qweight 4W.
  CHECK(layer.bytes() == 3 * 64 * 6 + 6 + 140 + 140 + 4 * static_cast<std::int64_t>(layer.qweight.size()));
  auto bad = layer;
  bad.row_perm[3] = 70;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("row_perm[3] = 70 is out of range"));
  bad = layer;
  bad.col_perm[70] = 45;  // chunk 1, position 6 < K: sentinel where a column belongs
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("col_perm[1, 6] = 45"));
  bad = layer;
  bad.depth[2] = 9;
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("depth[1, 0] = 9"));
  bad = layer;
  bad.qweight.push_back(0);
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("but the depths need"));
  bad = layer;
  bad.scale[50] = radio::float_to_half(1.0f);  // chunk 0, padding position 50
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("padding position 50"));
  bad = layer;
  bad.loc[3] = 0x7e00;  // NaN
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("not finite"));
  bad = layer;
  bad.bias.pop_back();
  CHECK_THROWS_WITH(bad.validate(), Catch::Contains("bias has 69 elements; expected 70"));
  CHECK_THROWS_WITH(radio::dequantize(bad), Catch::Contains("bias"));
}
