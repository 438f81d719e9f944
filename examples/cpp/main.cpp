// A C++ application linking the installed radio (find_package(radio), radio::radio):
// allocate bits across two layers by the R-D solver, quantize, save, load back, and multiply.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "radio/accumulator.hpp"
#include "radio/dequant.hpp"
#include "radio/format.hpp"
#include "radio/quantizer.hpp"
#include "radio/serialize.hpp"
#include "radio/solver.hpp"

namespace {

struct Layer {
  radio::LayerGeometry geometry;
  std::vector<float> weight;       // [N, K]
  std::vector<float> sensitivity;  // mean squared gradient of each column (here: E[x_j^2])
  std::vector<std::int32_t> row_perm, col_perm;
  std::vector<double> unit_coef, unit_weight;
};

// Per chunk, orders the columns by G^2 S^2 (largest first) so that units of 32 group columns of
// similar sensitivity, and sums each unit's modelled distortion coefficient.
void plan_units(Layer& layer) {
  const auto& g = layer.geometry;
  const std::int64_t C = g.chunks(), K = g.in_features, Kp = g.padded_in();
  layer.row_perm.resize(g.out_features);
  std::iota(layer.row_perm.begin(), layer.row_perm.end(), 0);
  std::vector<float> loc(C * K), s2(C * K);
  radio::group_spread(layer.weight.data(), g.out_features, K, layer.row_perm.data(),
                      g.rows_per_group, radio::Location::kMedian, loc.data(), s2.data());
  layer.col_perm.assign(C * Kp, static_cast<std::int32_t>(K));  // padding holds the sentinel K
  for (std::int64_t c = 0; c < C; ++c) {
    std::vector<std::int32_t> order(K);
    std::iota(order.begin(), order.end(), 0);
    auto coef = [&](std::int32_t k) { return layer.sensitivity[k] * s2[c * K + k]; };
    std::sort(order.begin(), order.end(), [&](auto a, auto b) { return coef(a) > coef(b); });
    std::copy(order.begin(), order.end(), layer.col_perm.begin() + c * Kp);
    const double rows = static_cast<double>(g.rows_in_chunk(c));
    for (std::int64_t u = 0; u < g.units(); ++u) {
      double sum = 0.0;
      for (std::int64_t p = u * radio::kUnit; p < std::min<std::int64_t>(K, (u + 1) * radio::kUnit); ++p)
        sum += rows * coef(order[p]);
      layer.unit_coef.push_back(sum);
      layer.unit_weight.push_back(rows * radio::kUnit);
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<Layer> layers;
  for (auto [n, k] : {std::pair<std::int64_t, std::int64_t>{512, 384}, {256, 520}}) {
    Layer layer{radio::LayerGeometry(n, k, 128), {}, {}, {}, {}, {}, {}};
    for (std::int64_t i = 0; i < n * k; ++i) layer.weight.push_back(0.02f * normal(rng));
    for (std::int64_t j = 0; j < k; ++j) layer.sensitivity.push_back(std::exp(normal(rng)));
    plan_units(layer);
    layers.push_back(std::move(layer));
  }

  // One allocation across both layers: 4 bits per weight with all side information counted.
  std::vector<double> coef, weight;
  double side_bits = 0.0, total_weights = 0.0;
  for (const auto& layer : layers) {
    coef.insert(coef.end(), layer.unit_coef.begin(), layer.unit_coef.end());
    weight.insert(weight.end(), layer.unit_weight.begin(), layer.unit_weight.end());
    side_bits += 8.0 * static_cast<double>(layer.geometry.side_bytes(false));
    total_weights += static_cast<double>(layer.geometry.weights());
  }
  radio::AllocationProblem problem;
  problem.side_bits = side_bits;
  problem.total_weights = total_weights;
  std::vector<std::uint8_t> depth;
  const auto report = radio::allocate(coef, weight, problem,
                                      {radio::TargetKind::kBitsPerWeight, 4.0}, depth);
  std::printf("allocation: %.4f bits per weight (target 4), %d iterations\n",
              report.bits_per_weight, report.iterations);

  radio::NamedLayers quantized;
  std::size_t offset = 0;
  std::int64_t bytes = 0;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& layer = layers[i];
    const auto units = static_cast<std::size_t>(layer.geometry.chunks() * layer.geometry.units());
    radio::QuantizerOptions options;  // Laplace-companded, with the per-group refinement
    quantized.emplace_back("layer" + std::to_string(i),
                           radio::quantize_layer(layer.weight.data(), layer.geometry,
                                                 layer.row_perm.data(), layer.col_perm.data(),
                                                 depth.data() + offset, options));
    offset += units;
    bytes += quantized.back().second.bytes();
  }
  std::printf("stored: %lld bytes = %.4f bits per weight\n", static_cast<long long>(bytes),
              8.0 * static_cast<double>(bytes) / total_weights);

  radio::save("example.radio.safetensors", quantized);
  const radio::RadioFile file = radio::load("example.radio.safetensors");
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const auto& layer = layers[i];
    const auto& q = file.layers[i].second;
    const std::int64_t n = layer.geometry.out_features, k = layer.geometry.in_features;
    // For y = W x the mean squared gradient of column j is E[x_j^2]: draw x to match it.
    std::vector<float> x(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) x[j] = normal(rng) * std::sqrt(layer.sensitivity[j]);
    const auto y = radio::dequant_matmul(q, x.data(), 1);
    double err = 0.0, ref = 0.0;
    for (std::int64_t r = 0; r < n; ++r) {
      double exact = 0.0;
      for (std::int64_t j = 0; j < k; ++j) exact += double(layer.weight[r * k + j]) * x[j];
      err += (y(0, r) - exact) * (y(0, r) - exact);
      ref += exact * exact;
    }
    std::printf("%s: relative output error %.4f\n", file.layers[i].first.c_str(), std::sqrt(err / ref));
    if (!(std::sqrt(err / ref) < 0.2)) return 1;  // about 3.5 index bits: near 0.1
  }
  std::remove("example.radio.safetensors");
  return 0;
}
