// Single-thread pack/unpack throughput on a realistic layer: 4096 x 4096, rows_per_group 256,
// random unit depths averaging about 4 bits. Prints GB/s of packed data (qweight bytes) per core.
//   bench_pack [N K gs]   (build with -DRADIO_BUILD_BENCH=ON, Release)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "radio/pack.hpp"

namespace {

template <typename F>
double best_seconds(F&& f, int repeats) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  const std::int64_t k = argc > 2 ? std::atoll(argv[2]) : 4096;
  const std::int64_t gs = argc > 3 ? std::atoll(argv[3]) : 256;
  const radio::LayerGeometry g(n, k, gs);
  std::mt19937 rng(0);
  // Depths 0..8 with mean ~4: a binomial(8, 1/2) draw, like a real allocation's spread.
  std::binomial_distribution<int> bits(8, 0.5);
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(g.chunks() * g.units()));
  double mean_depth = 0;
  for (auto& d : depth) {
    d = static_cast<std::uint8_t>(bits(rng));
    mean_depth += d;
  }
  mean_depth /= static_cast<double>(depth.size());
  const std::int64_t kp = g.padded_in();
  std::vector<std::uint8_t> idx(static_cast<std::size_t>(n * kp));
  for (std::int64_t row = 0; row < n; ++row)
    for (std::int64_t p = 0; p < kp; ++p) {
      const int d = depth[static_cast<std::size_t>((row / gs) * g.units() + p / 32)];
      idx[static_cast<std::size_t>(row * kp + p)] = static_cast<std::uint8_t>(rng() & ((1u << d) - 1u));
    }
  const radio::WordLayout layout(g, depth.data());
  std::vector<std::uint32_t> words(static_cast<std::size_t>(layout.words));
  std::vector<std::uint8_t> back(idx.size());

  const double t_pack = best_seconds([&] { radio::pack_layer(g, depth.data(), idx.data(), words.data(), layout); }, 25);
  const double t_unpack = best_seconds([&] { radio::unpack_layer(g, depth.data(), words.data(), back.data(), layout); }, 25);
  if (back != idx) {
    std::fprintf(stderr, "round trip FAILED\n");
    return 1;
  }
  const double packed_gb = static_cast<double>(words.size()) * 4.0 / 1e9;
  std::printf("layer %lld x %lld, rows_per_group %lld, mean depth %.3f bits, packed %.2f MB\n",
              static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(gs),
              mean_depth, packed_gb * 1e3);
  std::printf("pack:   %8.3f ms  %6.2f GB/s packed  (%6.2f GB/s of uint8 indices)\n", t_pack * 1e3,
              packed_gb / t_pack, static_cast<double>(idx.size()) / 1e9 / t_pack);
  std::printf("unpack: %8.3f ms  %6.2f GB/s packed  (%6.2f GB/s of uint8 indices)\n", t_unpack * 1e3,
              packed_gb / t_unpack, static_cast<double>(idx.size()) / 1e9 / t_unpack);
  return 0;
}
