// Group quantizers: tables, rate-distortion slope, refinement, 0-bit groups, f16 codes, errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "radio/dequant.hpp"
#include "radio/quantizer.hpp"
#include "radio/tables.hpp"

namespace {

std::vector<float> laplace_samples(std::size_t n, std::mt19937& rng) {
  std::exponential_distribution<float> e(1.0f);
  std::bernoulli_distribution sign(0.5);
  std::vector<float> w(n);
  for (auto& v : w) v = (sign(rng) ? 1.0f : -1.0f) * e(rng) * 0.02f + 0.003f;
  return w;
}

std::vector<float> gaussian_samples(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(-0.01f, 0.05f);
  std::vector<float> w(n);
  for (auto& v : w) v = g(rng);
  return w;
}

double group_mse(const std::vector<float>& w, int depth, const radio::QuantizerOptions& opt) {
  std::vector<float> scratch;
  std::vector<std::uint8_t> q(w.size());
  const auto n = static_cast<std::int64_t>(w.size());
  const radio::GroupCode code = radio::quantize_group(w.data(), n, depth, opt, scratch, q.data());
  return radio::group_error(w.data(), n, depth, code, opt.quantizer) / static_cast<double>(n);
}


}  // namespace

TEST_CASE("tables follow docs/format.md", "[format][quantizer]") {
  using radio::Quantizer;
  const float* t1 = radio::quantizer_table(Quantizer::kLaplace, 1);
  CHECK(t1[0] == Approx(-std::log(2.0)).epsilon(1e-7));
  CHECK(t1[1] == Approx(std::log(2.0)).epsilon(1e-7));
  const float* t2 = radio::quantizer_table(Quantizer::kLaplace, 2);
  CHECK(t2[0] == Approx(-1.3863).margin(1e-4));
  CHECK(t2[1] == Approx(-0.2877).margin(1e-4));
  CHECK(t2[2] == Approx(0.2877).margin(1e-4));
  CHECK(t2[3] == Approx(1.3863).margin(1e-4));
  const float* u3 = radio::quantizer_table(Quantizer::kUniform, 3);
  for (int q = 0; q < 8; ++q) CHECK(u3[q] == static_cast<float>(q) - 3.5f);
  CHECK(radio::quantizer_table(Quantizer::kLaplace, 0)[0] == 0.0f);
  for (int b = 1; b <= 8; ++b) {  // symmetric and increasing
    const float* t = radio::quantizer_table(Quantizer::kLaplace, b);
    for (int q = 0; q < (1 << b); ++q) {
      CHECK(t[q] == -t[(1 << b) - 1 - q]);
      if (q) CHECK(t[q] > t[q - 1]);
    }
  }
  CHECK_THROWS_WITH(radio::quantizer_table(Quantizer::kLaplace, 9), Catch::Contains("got 9"));
  CHECK_THROWS_WITH(radio::parse_quantizer("gauss"), Catch::Contains("\"gauss\""));
}

TEST_CASE("companded quantizer gains about 6.02 dB per bit at high rate", "[format][quantizer]") {
  std::mt19937 rng(42);
  radio::QuantizerOptions opt;  // laplace
  for (const bool refine : {false, true}) {
    opt.refine = refine;
    for (int source = 0; source < 2; ++source) {
      const auto w = source == 0 ? laplace_samples(1 << 16, rng) : gaussian_samples(1 << 16, rng);
      const double m5 = group_mse(w, 5, opt), m6 = group_mse(w, 6, opt), m7 = group_mse(w, 7, opt);
      INFO("source " << source << " refine " << refine << " mse " << m5 << " " << m6 << " " << m7);
      CHECK(10.0 * std::log10(m5 / m6) == Approx(6.02).margin(0.5));
      CHECK(10.0 * std::log10(m6 / m7) == Approx(6.02).margin(0.5));
    }
  }
  // The uniform quantizer on uniform data: exactly the same slope.
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> w(1 << 16);
  for (auto& v : w) v = u(rng);
  radio::QuantizerOptions uni;
  uni.quantizer = radio::Quantizer::kUniform;
  uni.refine = false;
  CHECK(10.0 * std::log10(group_mse(w, 5, uni) / group_mse(w, 6, uni)) == Approx(6.02).margin(0.5));
}

TEST_CASE("refinement never increases a group's error", "[format][quantizer]") {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> size(1, 300);
  for (int trial = 0; trial < 300; ++trial) {
    const auto n = static_cast<std::size_t>(size(rng));
    const auto w = trial % 2 ? laplace_samples(n, rng) : gaussian_samples(n, rng);
    const int depth = 1 + trial % 8;
    for (int kind = 0; kind < 3; ++kind) {
      radio::QuantizerOptions opt;
      opt.quantizer = kind == 0 ? radio::Quantizer::kLaplace : radio::Quantizer::kUniform;
      opt.symmetric = kind == 2;
      opt.refine = false;
      const double plain = group_mse(w, depth, opt);
      opt.refine = true;
      const double refined = group_mse(w, depth, opt);
      INFO("trial " << trial << " kind " << kind << " depth " << depth << " n " << n);
      REQUIRE(refined <= plain);
    }
  }
}

TEST_CASE("codes are f16 values; symmetric keeps loc 0; scale 0 gives index 0",
          "[format][quantizer]") {
  std::mt19937 rng(3);
  const auto w = gaussian_samples(77, rng);
  std::vector<float> scratch;
  std::vector<std::uint8_t> q(w.size());
  radio::QuantizerOptions opt;
  for (int kind = 0; kind < 3; ++kind) {
    opt.quantizer = kind == 0 ? radio::Quantizer::kLaplace : radio::Quantizer::kUniform;
    opt.symmetric = kind == 2;
    const auto code = radio::quantize_group(w.data(), 77, 4, opt, scratch, q.data());
    CHECK(radio::round_to_half(code.loc) == code.loc);
    CHECK(radio::round_to_half(code.scale) == code.scale);
    CHECK(code.scale > 0.0f);
    if (kind == 2) CHECK(code.loc == 0.0f);
    for (auto v : q) CHECK(v < 16);
  }
  const std::vector<float> flat(10, 0.25f);  // spread 0 -> scale 0 -> every index 0
  opt = radio::QuantizerOptions{};
  const auto code = radio::quantize_group(flat.data(), 10, 3, opt, scratch, q.data());
  CHECK(code.scale == 0.0f);
  CHECK(code.loc == 0.25f);
  for (int i = 0; i < 10; ++i) CHECK(q[static_cast<std::size_t>(i)] == 0);
  CHECK(radio::group_error(flat.data(), 10, 3, code, opt.quantizer) == 0.0);
}

TEST_CASE("encoding follows the spec formulas", "[format][quantizer]") {
  using radio::Quantizer;
  // Uniform, 2 bits, loc 0, scale 1: levels -1.5, -0.5, 0.5, 1.5; round half to even.
  CHECK(radio::encode_value(-9.0f, 0.0f, 1.0f, 4, Quantizer::kUniform) == 0);
  CHECK(radio::encode_value(0.0f, 0.0f, 1.0f, 4, Quantizer::kUniform) == 2);  // 1.5 -> 2
  CHECK(radio::encode_value(-1.0f, 0.0f, 1.0f, 4, Quantizer::kUniform) == 0);  // 0.5 -> 0
  CHECK(radio::encode_value(0.4f, 0.0f, 1.0f, 4, Quantizer::kUniform) == 2);
  CHECK(radio::encode_value(9.0f, 0.0f, 1.0f, 4, Quantizer::kUniform) == 3);
  // Laplace, 1 bit: sign decides; 2 bits: |z| < ln 2 is an inner bin.
  CHECK(radio::encode_value(-0.1f, 0.0f, 1.0f, 2, Quantizer::kLaplace) == 0);
  CHECK(radio::encode_value(0.1f, 0.0f, 1.0f, 2, Quantizer::kLaplace) == 1);
  CHECK(radio::encode_value(0.6f, 0.0f, 1.0f, 4, Quantizer::kLaplace) == 2);
  CHECK(radio::encode_value(0.8f, 0.0f, 1.0f, 4, Quantizer::kLaplace) == 3);
  CHECK(radio::encode_value(50.0f, 0.0f, 1.0f, 256, Quantizer::kLaplace) == 255);
  // Lower median of an even count.
  std::vector<float> v = {4.0f, 1.0f, 3.0f, 2.0f};
  CHECK(radio::lower_median(v) == 2.0f);
}

TEST_CASE("quantize_layer: 0-bit groups reconstruct to their location", "[format][quantizer]") {
  std::mt19937 rng(5);
  const radio::LayerGeometry g(20, 40, 8);
  auto w = gaussian_samples(static_cast<std::size_t>(20 * 40), rng);
  std::vector<std::int32_t> row_perm(20), col_perm(static_cast<std::size_t>(g.chunks() * 64), 40);
  std::iota(row_perm.begin(), row_perm.end(), 0);
  std::shuffle(row_perm.begin(), row_perm.end(), rng);
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    std::iota(col_perm.begin() + c * 64, col_perm.begin() + c * 64 + 40, 0);
    std::shuffle(col_perm.begin() + c * 64, col_perm.begin() + c * 64 + 40, rng);
  }
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(g.chunks() * 2), 0);
  depth[1] = 3;  // chunk 0 unit 1 (positions 32..39) at 3 bits; the rest 0 bits
  radio::QuantizerOptions opt;
  const radio::QuantizedLayer layer =
      radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt);
  REQUIRE(layer.qweight.size() == 8 * 3);
  const radio::RowMatrixF wh = radio::dequantize(layer);
  for (std::int64_t c = 0; c < g.chunks(); ++c)
    for (std::int64_t p = 0; p < 40; ++p) {
      if (c == 0 && p >= 32) continue;
      std::vector<float> group;
      for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r)
        group.push_back(w[static_cast<std::size_t>(row_perm[static_cast<std::size_t>(c * 8 + r)] * 40 +
                                                   col_perm[static_cast<std::size_t>(c * 64 + p)])]);
      const float loc = radio::round_to_half(radio::lower_median(group));
      CHECK(radio::half_to_float(layer.scale[static_cast<std::size_t>(c * 64 + p)]) == 0.0f);
      for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r)
        CHECK(wh(row_perm[static_cast<std::size_t>(c * 8 + r)], col_perm[static_cast<std::size_t>(c * 64 + p)]) == loc);
    }
}

TEST_CASE("quantize_layer rejects non-finite weights and bad options", "[format][quantizer]") {
  const radio::LayerGeometry g(2, 3, 2);
  std::vector<float> w = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
  const std::vector<std::int32_t> row_perm = {1, 0};
  std::vector<std::int32_t> col_perm(32, 3);
  col_perm[0] = 2; col_perm[1] = 0; col_perm[2] = 1;
  const std::vector<std::uint8_t> depth = {4};
  radio::QuantizerOptions opt;
  w[4] = std::nanf("");
  CHECK_THROWS_WITH(radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt),
                    Catch::Contains("weight[1, 1] = nan is not finite"));
  w[4] = INFINITY;
  CHECK_THROWS_WITH(radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt),
                    Catch::Contains("weight[1, 1] = inf"));
  w[4] = 0.5f;
  opt.symmetric = true;
  CHECK_THROWS_WITH(radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt),
                    Catch::Contains("symmetric"));
  opt.symmetric = false;
  col_perm[1] = 2;
  CHECK_THROWS_WITH(radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt),
                    Catch::Contains("column 2 appears twice"));
}
