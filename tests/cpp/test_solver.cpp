// Bit allocation: the fast solver against its reference twin and a brute-force enumerator;
// targets met to within one unit; monotone in the target; unreachable targets and bad input.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "radio/solver.hpp"

namespace {

using radio::AllocationProblem;
using radio::AllocationReport;
using radio::AllocationTarget;
using radio::Rounding;
using radio::TargetKind;

struct Units {
  std::vector<double> coef;
  std::vector<double> weight;
};

// Log-normal coefficients (a spread like real G^2 S^2), some zeros, and weights that are either
// all equal or rows_c * 32 for random chunk heights.
Units random_units(std::mt19937_64& rng, std::size_t n, bool equal_weights, double zero_fraction) {
  std::lognormal_distribution<double> coef_dist(0.0, 3.0);
  std::uniform_int_distribution<int> rows(1, 256);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Units u;
  for (std::size_t i = 0; i < n; ++i) {
    u.coef.push_back(unit(rng) < zero_fraction ? 0.0 : coef_dist(rng));
    u.weight.push_back(equal_weights ? 256.0 * 32 : 32.0 * rows(rng));
  }
  return u;
}

double sum(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s;
}

double max_positive_weight(const Units& u) {
  double m = 0;
  for (std::size_t i = 0; i < u.coef.size(); ++i) {
    if (u.coef[i] > 0) m = std::max(m, u.weight[i]);
  }
  return m;
}

double index_bits_of(const Units& u, const std::vector<std::uint8_t>& depth) {
  double bits = 0;
  for (std::size_t i = 0; i < depth.size(); ++i) bits += u.weight[i] * depth[i];
  return bits;
}

double distortion_of(const Units& u, const std::vector<std::uint8_t>& depth) {
  long double d = 0;
  for (std::size_t i = 0; i < depth.size(); ++i) {
    d += static_cast<long double>(u.coef[i]) * std::pow(4.0L, -static_cast<int>(depth[i]));
  }
  return static_cast<double>(d);
}

AllocationReport run(const Units& u, AllocationProblem options, TargetKind kind, double value,
                     std::vector<std::uint8_t>& depth, bool reference = false) {
  const AllocationTarget target{kind, value};
  return reference ? radio::allocate_reference(u.coef, u.weight, options, target, depth)
                   : radio::allocate(u.coef, u.weight, options, target, depth);
}

// Every depth vector in {0..max_depth}^n, calling fn(depths).
template <typename Fn>
void enumerate(std::size_t n, int max_depth, Fn&& fn) {
  std::vector<std::uint8_t> d(n, 0);
  for (;;) {
    fn(d);
    std::size_t i = 0;
    while (i < n && d[i] == max_depth) d[i++] = 0;
    if (i == n) return;
    ++d[i];
  }
}

}  // namespace

TEST_CASE("fast allocation equals the reference twin on random data", "[solver]") {
  std::mt19937_64 rng(20250501);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int trial = 0; trial < 24; ++trial) {
    const std::size_t n = 200 + static_cast<std::size_t>(unit(rng) * 5000);
    const Units u = random_units(rng, n, trial % 3 == 0, trial % 2 ? 0.1 : 0.0);
    AllocationProblem options;
    options.max_depth = 1 + trial % 8;
    options.rounding = trial % 4 == 1 ? Rounding::kNearest : Rounding::kRateDistortion;
    options.side_bits = 0.5 * sum(u.weight);
    const double tw = sum(u.weight);
    const double full = options.max_depth * tw;  // upper bound on index bits
    std::vector<std::pair<TargetKind, double>> targets = {
        {TargetKind::kIndexBitsPerWeight, unit(rng) * options.max_depth * 0.9},
        {TargetKind::kBitsPerWeight, 0.5 + unit(rng) * options.max_depth * 0.9},
        {TargetKind::kTotalBytes, (options.side_bits + unit(rng) * 0.9 * full) / 8},
        {TargetKind::kDistortion, sum(u.coef) * std::pow(4.0, -unit(rng) * options.max_depth)}};
    for (const auto& [kind, value] : targets) {
      CAPTURE(trial, n, options.max_depth, static_cast<int>(kind), value);
      std::vector<std::uint8_t> fast, ref;
      const AllocationReport a = run(u, options, kind, value, fast);
      const AllocationReport b = run(u, options, kind, value, ref, true);
      REQUIRE(fast == ref);
      CHECK(a.index_bits == b.index_bits);
      CHECK(a.distortion == Approx(b.distortion).epsilon(1e-12));
      CHECK(a.log2_V == Approx(b.log2_V).epsilon(1e-12));
      CHECK(a.index_bits == index_bits_of(u, fast));
      CHECK(a.distortion == Approx(distortion_of(u, fast)).epsilon(1e-12));
      CHECK(a.exact_passes == 1);  // the histogram bracket held; no widening needed
    }
  }
}

TEST_CASE("rate targets are met from below to within one unit", "[solver]") {
  std::mt19937_64 rng(7);
  const Units u = random_units(rng, 20000, false, 0.05);
  const double tw = sum(u.weight) * 0.97;  // padding: fewer real weights than unit weights
  AllocationProblem options;
  options.side_bits = 0.3 * tw;
  options.total_weights = tw;
  const double one_unit = max_positive_weight(u);
  for (double bits : {0.3, 0.31, 1.0, 2.5, 3.0, 4.123, 7.9}) {
    CAPTURE(bits);
    std::vector<std::uint8_t> depth;
    const AllocationReport r = run(u, options, TargetKind::kBitsPerWeight, bits, depth);
    CHECK(r.bits_per_weight <= bits);
    CHECK((bits * tw - r.total_bits) < one_unit);
    CHECK(r.total_bits == Approx(index_bits_of(u, depth) + options.side_bits));
  }
  for (double index_bits : {0.0, 0.01, 2.0, 3.5}) {
    std::vector<std::uint8_t> depth;
    const AllocationReport r =
        run(u, options, TargetKind::kIndexBitsPerWeight, index_bits, depth);
    CHECK(r.index_bits_per_weight <= index_bits);
    CHECK((index_bits * tw - r.index_bits) < one_unit);
  }
  for (double fraction : {0.1, 0.5, 0.9}) {
    const double bytes = (options.side_bits + fraction * 8 * sum(u.weight)) / 8;
    std::vector<std::uint8_t> depth;
    const AllocationReport r = run(u, options, TargetKind::kTotalBytes, bytes, depth);
    CHECK(r.total_bits / 8 <= bytes);
    CHECK((8 * bytes - r.total_bits) < one_unit);
  }
}

TEST_CASE("distortion target gives the least rate within it", "[solver]") {
  std::mt19937_64 rng(11);
  const Units u = random_units(rng, 5000, false, 0.0);
  AllocationProblem options;
  for (double exponent : {0.1, 1.0, 3.3, 7.5}) {
    const double target = sum(u.coef) * std::pow(4.0, -exponent);
    std::vector<std::uint8_t> depth;
    const AllocationReport r = run(u, options, TargetKind::kDistortion, target, depth);
    CHECK(r.distortion <= target);
    // Removing the last bit taken (the smallest key among taken increments) breaks the target.
    std::size_t last = 0;
    double last_key = std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < depth.size(); ++i) {
      if (depth[i] == 0) continue;
      const double key = std::ldexp(u.coef[i] / u.weight[i], -2 * (depth[i] - 1));
      if (key < last_key) last_key = key, last = i;
    }
    std::vector<std::uint8_t> fewer = depth;
    --fewer[last];
    CHECK(distortion_of(u, fewer) > target);
  }
}

TEST_CASE("equal weights: the exact optimum of brute force", "[solver]") {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int trial = 0; trial < 40; ++trial) {
    const std::size_t n = 1 + trial % 5;
    const int max_depth = 1 + trial % 3;
    Units u = random_units(rng, n, true, trial % 4 == 0 ? 0.3 : 0.0);
    if (trial % 7 == 0) std::fill(u.coef.begin(), u.coef.end(), 2.5);  // ties everywhere
    AllocationProblem options;
    options.max_depth = max_depth;
    const double w = u.weight[0];
    double positive_weight = 0;
    for (std::size_t i = 0; i < n; ++i) positive_weight += u.coef[i] > 0 ? w : 0.0;
    const int max_steps = static_cast<int>(positive_weight / w) * max_depth;
    for (int steps = 0; steps < max_steps; ++steps) {
      const double budget = steps * w + unit(rng) * 0.99 * w;
      double best = std::numeric_limits<double>::infinity();
      enumerate(n, max_depth, [&](const std::vector<std::uint8_t>& d) {
        if (index_bits_of(u, d) <= budget) best = std::min(best, distortion_of(u, d));
      });
      CAPTURE(trial, n, max_depth, steps, budget);
      std::vector<std::uint8_t> depth;
      const AllocationReport r =
          run(u, options, TargetKind::kIndexBitsPerWeight, budget / sum(u.weight), depth);
      CHECK(r.distortion == Approx(best).epsilon(1e-12));
      CHECK(r.index_bits <= budget);
    }
    // Distortion target: least rate over all allocations within it.
    for (int k = 0; k < 6; ++k) {
      double lo = 0;
      for (double c : u.coef) lo += c * std::pow(4.0, -max_depth);
      const double target = lo + unit(rng) * (sum(u.coef) - lo);
      double least = std::numeric_limits<double>::infinity();
      enumerate(n, max_depth, [&](const std::vector<std::uint8_t>& d) {
        if (distortion_of(u, d) <= target) least = std::min(least, index_bits_of(u, d));
      });
      std::vector<std::uint8_t> depth;
      const AllocationReport r = run(u, options, TargetKind::kDistortion, target, depth);
      CAPTURE(trial, target);
      CHECK(r.index_bits == least);
      CHECK(r.distortion <= target);
    }
  }
}

TEST_CASE("unequal weights: no allocation of at most the same rate has less distortion",
          "[solver]") {
  // With distinct keys the result is the Lagrangian solution at the boundary slope, so brute
  // force cannot beat it at its own rate.
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t n = 2 + trial % 4;
    const int max_depth = 2 + trial % 2;
    const Units u = random_units(rng, n, false, 0.0);
    AllocationProblem options;
    options.max_depth = max_depth;
    const double target = unit(rng) * max_depth;
    std::vector<std::uint8_t> depth;
    const AllocationReport r = run(u, options, TargetKind::kIndexBitsPerWeight, target, depth);
    double best = std::numeric_limits<double>::infinity();
    enumerate(n, max_depth, [&](const std::vector<std::uint8_t>& d) {
      if (index_bits_of(u, d) <= r.index_bits) best = std::min(best, distortion_of(u, d));
    });
    CAPTURE(trial, target);
    CHECK(r.distortion == Approx(best).epsilon(1e-12));
    CHECK(r.index_bits <= target * sum(u.weight));
  }
}

TEST_CASE("allocation is monotone in its target", "[solver]") {
  std::mt19937_64 rng(9);
  const Units u = random_units(rng, 3000, false, 0.02);
  AllocationProblem options;
  options.side_bits = sum(u.weight) * 0.25;
  std::vector<std::uint8_t> previous(u.coef.size(), 0);
  double previous_bits = -1, previous_distortion = std::numeric_limits<double>::infinity();
  for (double bits = 0.25; bits <= 8.0; bits += 0.0625) {
    std::vector<std::uint8_t> depth;
    const AllocationReport r = run(u, options, TargetKind::kBitsPerWeight, bits, depth);
    CAPTURE(bits);
    CHECK(r.total_bits >= previous_bits);
    CHECK(r.distortion <= previous_distortion);
    bool elementwise = true;
    for (std::size_t i = 0; i < depth.size(); ++i) elementwise = elementwise && depth[i] >= previous[i];
    CHECK(elementwise);
    previous = depth;
    previous_bits = r.total_bits;
    previous_distortion = r.distortion;
  }
  // Distortion: a looser target never costs more bits.
  previous_bits = std::numeric_limits<double>::infinity();
  for (double exponent = 7.9; exponent >= 0; exponent -= 0.1) {
    std::vector<std::uint8_t> depth;
    const AllocationReport r =
        run(u, options, TargetKind::kDistortion, sum(u.coef) * std::pow(4.0, -exponent), depth);
    CHECK(r.index_bits <= previous_bits);
    previous_bits = r.index_bits;
  }
}

TEST_CASE("ends of the range, zero coefficients and ties", "[solver]") {
  Units u{{0.0, 3.0, 1.0, 0.0, 2.0}, {64, 64, 32, 32, 96}};
  AllocationProblem options;
  options.max_depth = 4;
  const double tw = sum(u.weight);
  std::vector<std::uint8_t> depth;
  // Maximum: every unit with coef > 0 at max_depth, zero-coefficient units at 0.
  const double max_bits = 4.0 * (64 + 32 + 96) / tw;
  AllocationReport r = run(u, options, TargetKind::kIndexBitsPerWeight, max_bits, depth);
  CHECK(depth == std::vector<std::uint8_t>{0, 4, 4, 0, 4});
  CHECK(r.reachable_max == Approx(max_bits));
  r = run(u, options, TargetKind::kIndexBitsPerWeight, 0.0, depth);
  CHECK(depth == std::vector<std::uint8_t>{0, 0, 0, 0, 0});
  CHECK(r.distortion == 6.0);
  r = run(u, options, TargetKind::kDistortion, 6.0, depth);
  CHECK(depth == std::vector<std::uint8_t>{0, 0, 0, 0, 0});
  r = run(u, options, TargetKind::kDistortion, 6.0 / 256, depth);  // exactly the minimum
  CHECK(depth == std::vector<std::uint8_t>{0, 4, 4, 0, 4});
  // Ties: equal keys go to the lower unit index first.
  Units tied{{1.0, 1.0, 1.0}, {32, 32, 32}};
  r = run(tied, options, TargetKind::kIndexBitsPerWeight, 1.0, depth);  // 96 bits: 3 increments
  CHECK(depth == std::vector<std::uint8_t>{1, 1, 1});
  r = run(tied, options, TargetKind::kIndexBitsPerWeight, 4.0 / 3, depth);  // 4 increments
  CHECK(depth == std::vector<std::uint8_t>{2, 1, 1});
}

TEST_CASE("closed form: thresholds, the 0.4431 rule and nearest", "[solver]") {
  std::mt19937_64 rng(13);
  std::lognormal_distribution<double> dist(0.0, 4.0);
  for (int i = 0; i < 20000; ++i) {
    const double coef = dist(rng), weight = 32.0, v = dist(rng) * 1e-3;
    for (Rounding rounding : {Rounding::kRateDistortion, Rounding::kNearest}) {
      const int b = radio::closed_form_depth(coef, weight, v, rounding, 8);
      // B >= k iff r > V * kappa * 4^(k-1).
      const double kappa = radio::detail::rounding_kappa(rounding);
      int expected = 0;
      for (int k = 1; k <= 8; ++k) expected += coef / weight > v * kappa * std::pow(4.0, k - 1);
      CHECK(b == expected);
      if (rounding == Rounding::kRateDistortion && b > 0 && b < 8) {
        // The chosen integer has the least Lagrangian cost among its neighbours.
        auto cost = [&](int k) { return coef * std::pow(4.0, -k) + v * weight * k; };
        CHECK(cost(b) <= cost(b - 1));
        CHECK(cost(b) <= cost(b + 1));
      }
    }
  }
  // Both rules give the same depths for a target: they only rescale V.
  const Units u = random_units(rng, 1000, false, 0.0);
  AllocationProblem rd, nearest;
  nearest.rounding = Rounding::kNearest;
  std::vector<std::uint8_t> a, b;
  const AllocationReport ra = run(u, rd, TargetKind::kIndexBitsPerWeight, 3.0, a);
  const AllocationReport rb = run(u, nearest, TargetKind::kIndexBitsPerWeight, 3.0, b);
  CHECK(a == b);
  CHECK(rb.log2_V - ra.log2_V == Approx(std::log2((4.0 / 3) * std::log(2.0))));
}

TEST_CASE("unreachable targets raise with the reachable range", "[solver]") {
  Units u{{1.0, 2.0}, {100, 100}};
  AllocationProblem options;
  options.side_bits = 50;
  options.total_weights = 200;
  std::vector<std::uint8_t> depth;
  // Reachable: [0.25, 8.25] bits per weight.
  REQUIRE_THROWS_WITH(run(u, options, TargetKind::kBitsPerWeight, 0.2, depth),
                      Catch::Contains("target_bits = 0.2 is not reachable") &&
                          Catch::Contains("side information alone") &&
                          Catch::Contains("[0.25, 8.25]"));
  REQUIRE_THROWS_WITH(run(u, options, TargetKind::kBitsPerWeight, 8.3, depth),
                      Catch::Contains("[0.25, 8.25]") && Catch::Contains("max_depth 8"));
  REQUIRE_NOTHROW(run(u, options, TargetKind::kBitsPerWeight, 8.25, depth));
  REQUIRE_THROWS_WITH(run(u, options, TargetKind::kTotalBytes, 6.0, depth),
                      Catch::Contains("target_bytes = 6") && Catch::Contains("[6.25, 206.25]"));
  REQUIRE_THROWS_WITH(run(u, options, TargetKind::kDistortion, 3.0 / 65537, depth),
                      Catch::Contains("target_distortion") &&
                          Catch::Contains("[4.577636719e-05, 3]"));
  REQUIRE_THROWS_WITH(run(u, options, TargetKind::kIndexBitsPerWeight, std::nan(""), depth),
                      Catch::Contains("must be finite"));
}

TEST_CASE("bad units and options raise naming the value", "[solver]") {
  std::vector<std::uint8_t> depth;
  AllocationProblem options;
  auto with = [&](std::vector<double> coef, std::vector<double> weight) {
    return run(Units{coef, weight}, options, TargetKind::kIndexBitsPerWeight, 1.0, depth);
  };
  REQUIRE_THROWS_WITH(with({1.0, -2.0}, {32, 32}), Catch::Contains("coef[1] = -2"));
  REQUIRE_THROWS_WITH(with({1.0, std::nan("")}, {32, 32}), Catch::Contains("coef[1] = nan"));
  REQUIRE_THROWS_WITH(with({HUGE_VAL, 1.0}, {32, 32}), Catch::Contains("coef[0] = inf"));
  REQUIRE_THROWS_WITH(with({1.0, 1.0}, {32, 0}), Catch::Contains("weight[1] = 0"));
  REQUIRE_THROWS_WITH(with({1.0, 1.0}, {32}), Catch::Contains("coef has 2 units but weight has 1"));
  REQUIRE_THROWS_WITH(with({}, {}), Catch::Contains("at least one unit"));
  options.max_depth = 9;
  REQUIRE_THROWS_WITH(with({1.0}, {32}), Catch::Contains("max_depth must be in 1..8, got 9"));
  options.max_depth = 8;
  options.side_bits = -1;
  REQUIRE_THROWS_WITH(with({1.0}, {32}), Catch::Contains("side_bits"));
  REQUIRE_THROWS_WITH(radio::parse_rounding("floor"), Catch::Contains("\"floor\""));
  // The reference twin validates the same way.
  options.side_bits = 0;
  REQUIRE_THROWS_WITH(run(Units{{1.0, -2.0}, {32, 32}}, options, TargetKind::kIndexBitsPerWeight,
                          1.0, depth, true),
                      Catch::Contains("coef[1] = -2"));
}
