// Statistics accumulators against exact or naive float64/long double computations: compensated
// sums on ill-conditioned data, merge == single pass, group location and spread, bad input.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "radio/accumulator.hpp"

namespace {

// Values k * 2^-40 (k < 2^10) are exact doubles, so their exact sum is an integer count.
constexpr double kTiny = 1.0 / (1LL << 40);

}  // namespace

TEST_CASE("compensated sum survives a 1e8 offset that a plain sum loses", "[stats]") {
  std::mt19937_64 rng(1);
  // Each value is below half an ulp of 1e8: a plain sum never moves.
  std::uniform_int_distribution<std::int64_t> k(1, (1 << 10) - 1);
  radio::CompensatedSum compensated;
  double plain = 0.0;
  std::int64_t exact_small = 0;
  compensated.add(1e8);
  plain += 1e8;
  for (int i = 0; i < 100000; ++i) {
    const std::int64_t ki = k(rng);
    exact_small += ki;
    compensated.add(static_cast<double>(ki) * kTiny);
    plain += static_cast<double>(ki) * kTiny;
  }
  const double small = static_cast<double>(exact_small) * kTiny;  // exact (< 2^27 * 2^-40)
  // The compensated result is within one rounding of the exact 1e8 + small, and the pair
  // (sum, compensation) holds the small part exactly.
  CHECK(std::fabs(compensated.value() - (1e8 + small)) <= 1e8 * 1.2e-16);
  CHECK((compensated.sum - 1e8) + compensated.compensation == small);
  // The data really is ill-conditioned: the plain sum lost every small value.
  CHECK(plain == 1e8);
}

TEST_CASE("GroupStats: mean squared gradient against a naive long double sum", "[stats]") {
  std::mt19937_64 rng(2);
  std::lognormal_distribution<double> dist(-10.0, 3.0);
  const std::int64_t groups = 37;
  radio::GroupStats stats(groups);
  std::vector<long double> naive(groups, 0.0L);
  long double count = 0;
  for (int batch = 0; batch < 200; ++batch) {
    std::vector<double> sums(groups);
    for (auto& s : sums) s = dist(rng);
    if (batch == 0) sums[3] += 1e8;  // one huge early batch for group 3
    const double n = 1 + batch % 17;
    stats.add(sums.data(), groups, n);
    for (std::int64_t g = 0; g < groups; ++g) naive[g] += sums[g];
    count += n;
  }
  const std::vector<double> mean = stats.mean_sq_grad();
  for (std::int64_t g = 0; g < groups; ++g) {
    CHECK(mean[g] == Approx(static_cast<double>(naive[g] / count)).epsilon(1e-15));
  }
}

TEST_CASE("GroupStats: merge equals one accumulator over all the data", "[stats]") {
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> dist(0.0, 2.0);
  std::uniform_int_distribution<int> part(0, 2);
  const std::int64_t groups = 16;
  radio::GroupStats single(groups), a(groups), b(groups), c(groups);
  radio::GroupStats* parts[] = {&a, &b, &c};
  for (int batch = 0; batch < 300; ++batch) {
    std::vector<double> sums(groups), counts(groups);
    for (std::int64_t g = 0; g < groups; ++g) {
      sums[g] = dist(rng) * (batch == 7 ? 1e9 : 1.0);
      counts[g] = static_cast<double>(1 + g % 3);
    }
    single.add(sums.data(), groups, counts.data());
    parts[part(rng)]->add(sums.data(), groups, counts.data());
  }
  a.merge(b);
  a.merge(c);
  const auto merged = a.mean_sq_grad();
  const auto one = single.mean_sq_grad();
  for (std::int64_t g = 0; g < groups; ++g) CHECK(merged[g] == Approx(one[g]).epsilon(1e-15));
  // state() / from_state() round-trips exactly, and state sums all-reduce elementwise.
  const std::vector<double> state = a.state();
  const radio::GroupStats rebuilt = radio::GroupStats::from_state(state.data(), groups);
  CHECK(rebuilt.mean_sq_grad() == merged);
  REQUIRE_THROWS_WITH(a.merge(radio::GroupStats(3)), Catch::Contains("3 groups"));
}

TEST_CASE("GroupStats: bad input raises naming the value", "[stats]") {
  radio::GroupStats stats(3);
  const double good[] = {1.0, 2.0, 3.0};
  const double negative[] = {1.0, -2.0, 3.0};
  const double nan[] = {1.0, 2.0, std::nan("")};
  REQUIRE_THROWS_WITH(stats.mean_sq_grad(), Catch::Contains("group 0 has no samples"));
  REQUIRE_THROWS_WITH(stats.add(good, 2, 1.0), Catch::Contains("2 groups, expected 3"));
  REQUIRE_THROWS_WITH(stats.add(negative, 3, 1.0), Catch::Contains("sum_sq_grad[1] = -2"));
  REQUIRE_THROWS_WITH(stats.add(nan, 3, 1.0), Catch::Contains("sum_sq_grad[2] = nan"));
  REQUIRE_THROWS_WITH(stats.add(good, 3, -1.0), Catch::Contains("count must be finite"));
  REQUIRE_THROWS_WITH(radio::GroupStats(0), Catch::Contains("got 0"));
}

TEST_CASE("InputMean: running mean with an offset, and merge", "[stats]") {
  std::mt19937_64 rng(4);
  std::normal_distribution<float> dist(0.0f, 1e-3f);
  const std::int64_t k = 13;
  radio::InputMean single(k), left(k), right(k);
  std::vector<long double> naive(k, 0.0L);
  long double tokens = 0;
  for (int batch = 0; batch < 50; ++batch) {
    const std::int64_t t = 1 + batch % 9;
    std::vector<float> x(static_cast<std::size_t>(t * k));
    for (std::int64_t i = 0; i < t * k; ++i) x[i] = 1e4f + dist(rng);  // offset + small
    single.add(x.data(), t, k);
    (batch % 2 ? left : right).add(x.data(), t, k);
    for (std::int64_t i = 0; i < t * k; ++i) naive[i % k] += x[i];
    tokens += t;
  }
  left.merge(right);
  const auto mean = single.mean();
  const auto merged = left.mean();
  for (std::int64_t j = 0; j < k; ++j) {
    const double expected = static_cast<double>(naive[j] / tokens);
    CHECK(mean[j] == Approx(expected).epsilon(1e-15));
    CHECK(merged[j] == Approx(mean[j]).epsilon(1e-15));
  }
  CHECK(single.count() == static_cast<double>(tokens));
  std::vector<float> bad(2 * k, 0.0f);
  bad[k + 4] = INFINITY;
  REQUIRE_THROWS_WITH(single.add(bad.data(), 2, k), Catch::Contains("x[1, 4] = inf"));
  REQUIRE_THROWS_WITH(single.add(bad.data(), 1, k + 1), Catch::Contains("14 features"));
  REQUIRE_THROWS_WITH(radio::InputMean(5).mean(), Catch::Contains("no samples"));
}

TEST_CASE("group_spread: location and S^2 per group against a naive computation", "[stats]") {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (const auto& shape : std::vector<std::array<std::int64_t, 3>>{
           {300, 40, 256}, {17, 5, 4}, {64, 33, 64}, {7, 3, 100}}) {
    const std::int64_t n = shape[0], k = shape[1], gs = shape[2];
    std::vector<float> w(static_cast<std::size_t>(n * k));
    for (auto& x : w) x = 0.5f + dist(rng);
    std::vector<std::int32_t> perm(static_cast<std::size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    const std::int64_t chunks = (n + gs - 1) / gs;
    for (radio::Location location : {radio::Location::kMedian, radio::Location::kMean}) {
      std::vector<float> loc(static_cast<std::size_t>(chunks * k)), s2(loc.size());
      radio::group_spread(w.data(), n, k, perm.data(), gs, location, loc.data(), s2.data());
      for (std::int64_t c = 0; c < chunks; ++c) {
        const std::int64_t rows = std::min(gs, n - c * gs);
        for (std::int64_t j = 0; j < k; ++j) {
          std::vector<float> group;
          for (std::int64_t r = 0; r < rows; ++r) group.push_back(w[perm[c * gs + r] * k + j]);
          std::vector<float> sorted = group;
          std::sort(sorted.begin(), sorted.end());
          long double mean = 0;
          for (float x : group) mean += x;
          mean /= rows;
          const float expected_loc = location == radio::Location::kMedian
                                         ? sorted[(rows - 1) / 2]
                                         : static_cast<float>(mean);
          long double ss = 0;
          for (float x : group) ss += (static_cast<long double>(x) - expected_loc) *
                                      (static_cast<long double>(x) - expected_loc);
          CAPTURE(n, k, gs, c, j, static_cast<int>(location));
          CHECK(loc[c * k + j] == expected_loc);
          CHECK(s2[c * k + j] == Approx(static_cast<double>(ss / rows)).epsilon(1e-6));
        }
      }
    }
  }
}

TEST_CASE("group_spread: zero-variance groups, NaN/Inf and bad permutations", "[stats]") {
  const std::int64_t n = 6, k = 4, gs = 3;
  std::vector<float> w(n * k);
  for (std::int64_t i = 0; i < n * k; ++i) w[i] = 0.1f * static_cast<float>(i % 7);
  for (std::int64_t r = 0; r < n; ++r) w[r * k + 2] = 0.3f;  // column 2 constant
  std::vector<std::int32_t> perm = {5, 4, 3, 2, 1, 0};
  std::vector<float> loc(2 * k), s2(2 * k);
  for (auto location : {radio::Location::kMedian, radio::Location::kMean}) {
    radio::group_spread(w.data(), n, k, perm.data(), gs, location, loc.data(), s2.data());
    for (int c = 0; c < 2; ++c) {
      CHECK(loc[c * k + 2] == 0.3f);
      CHECK(s2[c * k + 2] == 0.0f);
      for (int j = 0; j < k; ++j) CHECK(std::isfinite(s2[c * k + j]));
    }
  }
  w[4 * k + 1] = std::nanf("");
  REQUIRE_THROWS_WITH(radio::group_spread(w.data(), n, k, perm.data(), gs,
                                          radio::Location::kMedian, loc.data(), s2.data()),
                      Catch::Contains("weight[4, 1] = nan"));
  w[4 * k + 1] = -INFINITY;
  REQUIRE_THROWS_WITH(radio::group_spread(w.data(), n, k, perm.data(), gs,
                                          radio::Location::kMean, loc.data(), s2.data()),
                      Catch::Contains("weight[4, 1] = -inf"));
  w[4 * k + 1] = 0.0f;
  perm[3] = 5;
  REQUIRE_THROWS_WITH(radio::group_spread(w.data(), n, k, perm.data(), gs,
                                          radio::Location::kMedian, loc.data(), s2.data()),
                      Catch::Contains("row_perm[3] = 5 repeats"));
  perm[3] = 6;
  REQUIRE_THROWS_WITH(radio::group_spread(w.data(), n, k, perm.data(), gs,
                                          radio::Location::kMedian, loc.data(), s2.data()),
                      Catch::Contains("row_perm[3] = 6 is outside"));
  REQUIRE_THROWS_WITH(radio::parse_location("mode"), Catch::Contains("\"mode\""));
}

TEST_CASE("select_rank equals a full sort at every rank on awkward data", "[stats]") {
  std::mt19937_64 rng(6);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<std::uint32_t> scratch;
  for (int trial = 0; trial < 200; ++trial) {
    const std::size_t n = 1 + static_cast<std::size_t>(trial % 67);
    std::vector<float> x(n);
    for (auto& v : x) {
      switch (trial % 5) {
        case 0: v = normal(rng); break;
        case 1: v = static_cast<float>(small(rng)); break;             // many duplicates
        case 2: v = normal(rng) * 1e-40f; break;                       // denormals
        case 3: v = std::ldexp(normal(rng), small(rng) * 40); break;   // huge range
        default: v = 0.5f; break;                                      // constant
      }
    }
    if (trial % 7 == 0) x[0] = -0.0f;
    std::vector<float> sorted = x;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t m = 0; m < n; ++m) {
      CAPTURE(trial, n, m);
      CHECK(radio::detail::select_rank(x.data(), n, m, scratch) == sorted[m]);
    }
  }
}
