// The rate model against the byte count of docs/format.md ("Size"), computed here independently
// tensor by tensor; and the solver's total bits against the model.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <vector>

#include "radio/rate.hpp"
#include "radio/solver.hpp"

namespace {

// Bytes of one layer's tensors straight from the spec's table of tensors.
std::int64_t spec_bytes(std::int64_t n, std::int64_t k, std::int64_t gs, bool bias,
                        const std::vector<std::uint8_t>& depth) {
  const std::int64_t chunks = (n + gs - 1) / gs;
  const std::int64_t units = (k + 31) / 32;
  const std::int64_t kp = 32 * units;
  const std::int64_t perm_k = k <= 65535 ? 2 : 4;
  const std::int64_t perm_n = n <= 65535 ? 2 : 4;
  std::int64_t words = 0;  // W = sum_c rows_c * D_c
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::int64_t rows = std::min(gs, n - c * gs);
    std::int64_t d_c = 0;
    for (std::int64_t u = 0; u < units; ++u) d_c += depth[c * units + u];
    words += rows * d_c;
  }
  const std::int64_t row_perm = n * perm_n;
  const std::int64_t col_perm = chunks * kp * perm_k;
  const std::int64_t depth_bytes = chunks * units;  // u8
  const std::int64_t scale = chunks * kp * 2;       // f16
  const std::int64_t loc = chunks * kp * 2;         // f16
  const std::int64_t qweight = 4 * words;           // i32
  const std::int64_t bias_bytes = bias ? 2 * n : 0;  // f16
  return row_perm + col_perm + depth_bytes + scale + loc + qweight + bias_bytes;
}

}  // namespace

TEST_CASE("layer rate equals the spec's byte count for random depths", "[rate]") {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<int> depth_dist(0, 8);
  const std::int64_t shapes[][3] = {{1, 1, 1},      {300, 40, 256},   {256, 4096, 256},
                                    {4097, 33, 64}, {70000, 5, 512},  {17, 70000, 4},
                                    {11008, 64, 256}};
  for (const auto& s : shapes) {
    for (bool bias : {false, true}) {
      const radio::LayerRate rate(radio::LayerGeometry(s[0], s[1], s[2]), bias);
      std::vector<std::uint8_t> depth(static_cast<std::size_t>(rate.units()));
      for (int trial = 0; trial < 5; ++trial) {
        for (auto& d : depth) d = static_cast<std::uint8_t>(depth_dist(rng));
        CAPTURE(s[0], s[1], s[2], bias, trial);
        const std::int64_t expected = spec_bytes(s[0], s[1], s[2], bias, depth);
        CHECK(rate.total_bytes(depth.data()) == expected);
        // The model's pieces: side bits + sum of unit_weight * depth.
        std::int64_t bits = rate.side_bits();
        for (std::int64_t c = 0; c < rate.geometry.chunks(); ++c) {
          for (std::int64_t u = 0; u < rate.geometry.units(); ++u) {
            bits += rate.unit_bits(c, depth[c * rate.geometry.units() + u]);
          }
        }
        CHECK(bits == 8 * expected);
      }
    }
  }
}

TEST_CASE("hand-computed example", "[rate]") {
  // N=300, K=40, gs=256: C=2 (256 + 44 rows), U=2, Kp=64.
  // side: C*Kp*(2+2+2) = 768, depth C*U = 4, row_perm 600, bias 600 -> 1972 bytes.
  const radio::LayerRate rate(radio::LayerGeometry(300, 40, 256), true);
  CHECK(rate.side_bits() == 8 * 1972);
  CHECK(rate.unit_weight(0) == 256 * 32);
  CHECK(rate.unit_weight(1) == 44 * 32);
  const std::vector<std::uint8_t> depth = {3, 0, 1, 8};
  // W = 256 * 3 + 44 * 9 = 1164 words.
  CHECK(rate.qweight_words(depth.data()) == 1164);
  CHECK(rate.total_bytes(depth.data()) == 1972 + 4 * 1164);
}

TEST_CASE("model rate feeds the solver; reported total bits equal the stored bytes", "[rate]") {
  radio::ModelRate model;
  const std::int64_t off_a = model.add_layer(radio::LayerGeometry(700, 96, 256), true);
  const std::int64_t off_b = model.add_layer(radio::LayerGeometry(64, 50, 256), false);
  CHECK(off_a == 0);
  CHECK(off_b == 3 * 3);
  CHECK(model.units() == 9 + 2);
  CHECK(model.total_weights() == 700 * 96 + 64 * 50);
  std::mt19937_64 rng(1);
  std::lognormal_distribution<double> coef_dist(0.0, 2.0);
  std::vector<double> coef(static_cast<std::size_t>(model.units()));
  for (auto& c : coef) c = coef_dist(rng);
  radio::AllocationProblem options;
  options.side_bits = static_cast<double>(model.side_bits());
  options.total_weights = static_cast<double>(model.total_weights());
  for (double bits : {3.0, 4.25, 6.0}) {
    std::vector<std::uint8_t> depth;
    const radio::AllocationReport r = radio::allocate(
        coef, model.unit_weights(), options, {radio::TargetKind::kBitsPerWeight, bits}, depth);
    CHECK(r.total_bits == 8.0 * static_cast<double>(model.total_bytes(depth.data())));
    CHECK(r.bits_per_weight <= bits);
  }
}

TEST_CASE("depth above 8 is refused by the rate model", "[rate]") {
  const radio::LayerRate rate(radio::LayerGeometry(10, 10, 4), false);
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(rate.units()), 2);
  depth[1] = 9;
  REQUIRE_THROWS_WITH(rate.total_bytes(depth.data()), Catch::Contains("depth[1, 0] = 9"));
  REQUIRE_THROWS_WITH(rate.unit_bits(0, -1), Catch::Contains("depth -1"));
}
