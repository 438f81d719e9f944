// Speed of the global bit allocation on a Llama-2-7B-sized problem: 25e6 units (groups of 256
// weights) with log-normal coefficients, one thread. Prints the median time of allocate() for a
// bits-per-weight target over several runs, and the same for a distortion target.
//   usage: bench_solver [units=25000000] [runs=7]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "radio/solver.hpp"

namespace {

template <typename Fn>
double median_seconds(int runs, Fn&& fn) {
  std::vector<double> times;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t units = argc > 1 ? std::atoll(argv[1]) : 25000000;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 7;
  std::mt19937_64 rng(2025);
  std::lognormal_distribution<double> coef_dist(0.0, 3.0);  // G^2 S^2 spans many decades
  std::vector<double> coef(static_cast<std::size_t>(units));
  for (auto& c : coef) c = coef_dist(rng);
  const std::vector<double> weight(coef.size(), 256.0);
  std::vector<std::uint8_t> depth(coef.size());

  radio::AllocationProblem problem;
  problem.coef = coef.data();
  problem.weight = weight.data();
  problem.units = units;
  problem.side_bits = 0.14 * 256.0 * static_cast<double>(units);  // ~0.14 bits/weight of side info

  const radio::AllocationTarget bits{radio::TargetKind::kBitsPerWeight, 3.14};
  radio::AllocationReport report;
  const double t_bits = median_seconds(runs, [&] { report = radio::allocate(problem, bits, depth.data()); });
  std::printf("units %lld, weight 256, log-normal(0, 3) coefs, 1 thread, median of %d runs\n",
              static_cast<long long>(units), runs);
  std::printf("allocate(target_bits=%.2f): %.3f s  (bits/weight %.6f, iterations %d, exact passes %d, "
              "candidates %lld, greedy %lld, log2 V %.4f)\n",
              bits.value, t_bits, report.bits_per_weight, report.iterations, report.exact_passes,
              static_cast<long long>(report.candidates), static_cast<long long>(report.greedy_steps),
              report.log2_V);

  const radio::AllocationTarget dist{radio::TargetKind::kDistortion, report.distortion};
  const double t_dist = median_seconds(runs, [&] { report = radio::allocate(problem, dist, depth.data()); });
  std::printf("allocate(target_distortion=%.6g): %.3f s  (bits/weight %.6f, exact passes %d, "
              "candidates %lld)\n",
              dist.value, t_dist, report.bits_per_weight, report.exact_passes,
              static_cast<long long>(report.candidates));
  return 0;
}
