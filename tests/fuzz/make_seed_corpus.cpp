// Writes the seed corpora of the fuzz targets: valid layers of several shapes, group sizes, depth
// patterns, quantizers and bias settings, quantized from random weights (fixed seed).
//
//   make_seed_corpus LOAD_DIR LAYER_DIR
//
// LOAD_DIR receives radio files (radio::save: one layer or several per file, some with caller
// metadata) for fuzz_load; LAYER_DIR the same layers in the byte encoding of layer_codec.hpp for
// fuzz_layer. Files stay small (a few KB) so the fuzzers run fast; int32 permutations (N or K
// above 65535) need files of hundreds of KB and are left to tests/cpp/test_serialize.cpp.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "layer_codec.hpp"
#include "radio/quantizer.hpp"
#include "radio/serialize.hpp"

namespace {

enum class Depths { kZero, kEight, kMixed, kRamp };

radio::QuantizedLayer make_layer(std::int64_t n, std::int64_t k, std::int64_t gs, Depths depths,
                                 radio::Quantizer quantizer, bool bias, std::mt19937& rng) {
  const radio::LayerGeometry g(n, k, gs);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (float& v : w) v = normal(rng);
  std::vector<std::int32_t> row_perm(static_cast<std::size_t>(n));
  std::iota(row_perm.begin(), row_perm.end(), 0);
  std::shuffle(row_perm.begin(), row_perm.end(), rng);
  const std::int64_t kp = g.padded_in();
  std::vector<std::int32_t> col_perm(static_cast<std::size_t>(g.chunks() * kp),
                                     static_cast<std::int32_t>(k));
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    std::iota(col_perm.begin() + c * kp, col_perm.begin() + c * kp + k, 0);
    std::shuffle(col_perm.begin() + c * kp, col_perm.begin() + c * kp + k, rng);
  }
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(g.chunks() * g.units()));
  for (std::size_t i = 0; i < depth.size(); ++i) {
    switch (depths) {
      case Depths::kZero: depth[i] = 0; break;
      case Depths::kEight: depth[i] = 8; break;
      case Depths::kMixed: depth[i] = static_cast<std::uint8_t>(rng() % 9); break;
      case Depths::kRamp: depth[i] = static_cast<std::uint8_t>(i % 9); break;
    }
  }
  radio::QuantizerOptions opt;
  opt.quantizer = quantizer;
  opt.refine = (rng() % 2) == 0;
  radio::QuantizedLayer layer =
      radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt);
  if (bias) {
    layer.has_bias = true;
    for (std::int64_t i = 0; i < n; ++i) layer.bias.push_back(radio::float_to_half(normal(rng)));
  }
  layer.validate();
  return layer;
}

void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  RADIO_CHECK(out.good(), "cannot write '", path, "'");
}

struct Shape {
  std::int64_t n, k, gs;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s LOAD_DIR LAYER_DIR\n", argv[0]);
    return 2;
  }
  const std::string load_dir = argv[1], layer_dir = argv[2];
  std::mt19937 rng(20250601);
  // Shapes cover: 1x1, K not a multiple of 32, K an exact multiple, gs = 1, gs > N (one chunk),
  // a short last chunk, several chunks.
  const Shape shapes[] = {{1, 1, 1},   {2, 31, 1},  {5, 33, 2},    {17, 64, 8},
                          {40, 70, 16}, {64, 96, 64}, {12, 40, 256}, {33, 129, 7}};
  const Depths patterns[] = {Depths::kZero, Depths::kEight, Depths::kMixed, Depths::kRamp};
  int files = 0;
  std::vector<std::pair<std::string, radio::QuantizedLayer>> all;
  for (const Shape& s : shapes) {
    for (const Depths d : patterns) {
      const bool bias = (files % 2) == 0;
      const auto quantizer = (files % 3) == 0 ? radio::Quantizer::kUniform : radio::Quantizer::kLaplace;
      radio::QuantizedLayer layer = make_layer(s.n, s.k, s.gs, d, quantizer, bias, rng);
      char name[96];
      std::snprintf(name, sizeof name, "seed_%02d_n%lld_k%lld_gs%lld_d%d", files,
                    static_cast<long long>(s.n), static_cast<long long>(s.k),
                    static_cast<long long>(s.gs), static_cast<int>(d));
      radio::save(load_dir + "/" + name + ".radio", {{"weight", layer}});
      write_file(layer_dir + "/" + name + ".layer", radio::fuzz::encode_layer(layer));
      all.emplace_back(name, std::move(layer));
      ++files;
    }
  }
  // Several layers per file (as a saved model holds), with caller metadata.
  for (std::size_t i = 0; i + 2 < all.size(); i += 5) {
    radio::NamedLayers layers = {{"model.layers.0.q_proj", all[i].second},
                                 {"model.layers.0.k_proj", all[i + 1].second},
                                 {"model.layers.1.mlp.up_proj", all[i + 2].second}};
    char name[64];
    std::snprintf(name, sizeof name, "multi_%02zu.radio", i / 5);
    radio::save(load_dir + "/" + name, layers, {{"config", "{\"hidden_size\": 64}"}, {"note", "seed"}});
    ++files;
  }
  std::printf("make_seed_corpus: %d radio files in %s, %zu layers in %s\n", files,
              load_dir.c_str(), all.size(), layer_dir.c_str());
  return 0;
}
