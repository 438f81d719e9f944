// radio files: bit-exact round trip, atomic save, and rejection of malformed files with a clear
// error (never a crash or a giant allocation).
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "radio/quantizer.hpp"
#include "radio/serialize.hpp"

namespace {

using Json = nlohmann::ordered_json;

radio::QuantizedLayer make_layer(std::int64_t n, std::int64_t k, std::int64_t gs,
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
    std::iota(col_perm.begin() + c * kp, col_perm.begin() + c * kp + k, 0);
    std::shuffle(col_perm.begin() + c * kp, col_perm.begin() + c * kp + k, rng);
  }
  std::vector<std::uint8_t> depth(static_cast<std::size_t>(g.chunks() * g.units()));
  for (auto& d : depth) d = static_cast<std::uint8_t>(1 + rng() % 8);
  radio::QuantizerOptions opt;
  opt.quantizer = quantizer;
  opt.refine = false;
  auto layer = radio::quantize_layer(w.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt);
  if (bias) {
    layer.has_bias = true;
    for (std::int64_t i = 0; i < n; ++i) layer.bias.push_back(radio::float_to_half(normal(rng)));
  }
  return layer;
}

std::string temp_path(const std::string& name) {
  return "/tmp/radio_test_serialize_" + std::to_string(::getpid()) + "_" + name;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

struct Parsed {
  Json header;
  std::vector<char> data;
};

Parsed parse(const std::vector<char>& bytes) {
  std::uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)])) << (8 * i);
  Parsed p;
  p.header = Json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  p.data.assign(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n), bytes.end());
  return p;
}

// Re-assembles a file; with fix_crc the header's CRC is recomputed so that another check fails.
std::vector<char> assemble(Parsed p, bool fix_crc) {
  if (fix_crc) {
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", radio::crc32(p.data.data(), p.data.size()));
    p.header["__metadata__"]["crc32"] = hex;
  }
  const std::string text = p.header.dump();
  std::vector<char> out(8);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  out.insert(out.end(), text.begin(), text.end());
  out.insert(out.end(), p.data.begin(), p.data.end());
  return out;
}

bool same(const radio::QuantizedLayer& a, const radio::QuantizedLayer& b) {
  return a.geometry.out_features == b.geometry.out_features &&
         a.geometry.in_features == b.geometry.in_features &&
         a.geometry.rows_per_group == b.geometry.rows_per_group && a.quantizer == b.quantizer &&
         a.has_bias == b.has_bias && a.row_perm == b.row_perm && a.col_perm == b.col_perm &&
         a.depth == b.depth && a.scale == b.scale && a.loc == b.loc && a.qweight == b.qweight &&
         a.bias == b.bias;
}

struct Fixture {
  std::string path = temp_path("model.radio");
  radio::NamedLayers layers;
  std::vector<char> good;

  Fixture() {
    std::mt19937 rng(9);
    layers.emplace_back("model.layers.0.q_proj", make_layer(70, 45, 32, radio::Quantizer::kLaplace, true, rng));
    layers.emplace_back("weight", make_layer(33, 7, 4, radio::Quantizer::kUniform, false, rng));
    radio::save(path, layers, {{"note", "hello"}});
    good = read_bytes(path);
  }
  ~Fixture() { std::remove(path.c_str()); }

  // Applies `edit` to a parsed copy of the good file, writes it, and expects load to fail with
  // a message containing `message`.
  void expect_rejected(const std::function<void(Parsed&)>& edit, bool fix_crc,
                       const std::string& message) {
    Parsed p = parse(good);
    edit(p);
    write_bytes(path, assemble(p, fix_crc));
    CHECK_THROWS_WITH(radio::load(path), Catch::Contains(message));
  }
};

}  // namespace

TEST_CASE("save/load round trip is bit-exact", "[format][serialize]") {
  Fixture f;
  const radio::RadioFile file = radio::load(f.path);
  REQUIRE(file.layers.size() == 2);
  CHECK(file.layers[0].first == "model.layers.0.q_proj");
  CHECK(file.layers[1].first == "weight");
  CHECK(same(file.layers[0].second, f.layers[0].second));
  CHECK(same(file.layers[1].second, f.layers[1].second));
  CHECK(file.metadata == radio::Metadata{{"note", "hello"}});
  // Saving what was loaded gives the same bytes.
  const std::string again = temp_path("again.radio");
  radio::save(again, file.layers, file.metadata);
  CHECK(read_bytes(again) == f.good);
  std::remove(again.c_str());
}

TEST_CASE("int32 permutations above 65535 entries round-trip", "[format][serialize]") {
  std::mt19937 rng(1);
  radio::NamedLayers layers;
  layers.emplace_back("tall", make_layer(70000, 2, 8192, radio::Quantizer::kLaplace, false, rng));
  layers.emplace_back("wide", make_layer(1, 66000, 1, radio::Quantizer::kUniform, true, rng));
  const std::string path = temp_path("big.radio");
  radio::save(path, layers);
  const Parsed p = parse(read_bytes(path));
  CHECK(p.header["tall.row_perm"]["dtype"] == "I32");
  CHECK(p.header["tall.col_perm"]["dtype"] == "U16");
  CHECK(p.header["wide.col_perm"]["dtype"] == "I32");
  const auto file = radio::load(path);
  CHECK(same(file.layers[0].second, layers[0].second));
  CHECK(same(file.layers[1].second, layers[1].second));
  // File size = 8 + header + the exact bytes of every layer.
  const auto header_len = read_bytes(path).size() - p.data.size();
  CHECK(p.data.size() == static_cast<std::size_t>(layers[0].second.bytes() + layers[1].second.bytes()));
  CHECK(header_len % 8 == 0);
  std::remove(path.c_str());
}

TEST_CASE("save is atomic: a failed save leaves the old file", "[format][serialize]") {
  Fixture f;
  auto bad = f.layers;
  bad[1].second.depth[0] = 9;
  CHECK_THROWS_WITH(radio::save(f.path, bad), Catch::Contains("layer 'weight'"));
  CHECK_THROWS_WITH(radio::save(f.path, f.layers, {{"crc32", "x"}}), Catch::Contains("reserved"));
  CHECK_THROWS_WITH(radio::save("/nonexistent_dir_radio/x.radio", f.layers), Catch::Contains("cannot create"));
  CHECK(read_bytes(f.path) == f.good);
  CHECK(std::ifstream(f.path + ".tmp-" + std::to_string(::getpid())).fail());
}

TEST_CASE("load rejects malformed files", "[format][serialize]") {
  Fixture f;
  SECTION("truncated file") {
    auto bytes = f.good;
    bytes.resize(bytes.size() - 10);
    write_bytes(f.path, bytes);
    CHECK_THROWS_WITH(radio::load(f.path), Catch::Contains("not within the data section"));
    bytes.resize(5);
    write_bytes(f.path, bytes);
    CHECK_THROWS_WITH(radio::load(f.path), Catch::Contains("too short"));
  }
  SECTION("corrupted byte fails the CRC") {
    auto bytes = f.good;
    bytes[bytes.size() - 100] ^= 0x10;
    write_bytes(f.path, bytes);
    CHECK_THROWS_WITH(radio::load(f.path), Catch::Contains("CRC-32"));
  }
  SECTION("header length beyond the file") {
    auto bytes = f.good;
    bytes[6] = 1;  // header length ~2^48
    write_bytes(f.path, bytes);
    CHECK_THROWS_WITH(radio::load(f.path), Catch::Contains("runs past the end of the file"));
  }
  SECTION("offsets out of range") {
    f.expect_rejected([](Parsed& p) {
      const auto end = p.data.size();
      p.header["weight.depth"]["data_offsets"] = {end - 2, end + 6};
    }, true, "not within the data section");
  }
  SECTION("overlapping offsets") {
    f.expect_rejected([](Parsed& p) {
      auto& o = p.header["weight.loc"]["data_offsets"];
      o = {o[0].get<std::uint64_t>() - 2, o[1].get<std::uint64_t>() - 2};
    }, true, "overlaps");
  }
  SECTION("wrong dtype") {
    f.expect_rejected([](Parsed& p) { p.header["weight.qweight"]["dtype"] = "F32"; }, true,
                      "dtype must be I32, got F32");
  }
  SECTION("shape mismatch") {
    f.expect_rejected([](Parsed& p) { p.header["model.layers.0.q_proj.row_perm"]["shape"] = {71}; },
                      true, "shape must be [70]");
  }
  SECTION("depth 9") {
    f.expect_rejected([](Parsed& p) {
      p.data[p.header["weight.depth"]["data_offsets"][0].get<std::size_t>()] = 9;
    }, true, "depth[0, 0] = 9");
  }
  SECTION("bad permutation") {
    f.expect_rejected([](Parsed& p) {
      const auto at = p.header["weight.row_perm"]["data_offsets"][0].get<std::size_t>();
      p.data[at] = p.data[at + 2];
      p.data[at + 1] = p.data[at + 3];
    }, true, "row_perm is not a permutation");
  }
  SECTION("newer format_version") {
    f.expect_rejected([](Parsed& p) { p.header["__metadata__"]["format_version"] = "7"; }, true,
                      "format_version 7 is newer than this radio understands (1)");
  }
  SECTION("huge claimed tensor is refused without allocating") {
    f.expect_rejected([](Parsed& p) {
      p.header["weight.qweight"]["shape"] = {std::uint64_t{1} << 38};
      p.header["weight.qweight"]["data_offsets"] = {0, std::uint64_t{1} << 40};
    }, true, "shape must be [W] with W <=");
    f.expect_rejected([](Parsed& p) {
      p.header["model.layers.0.q_proj.scale"]["shape"] = {1 << 20, 1 << 20};
      p.header["model.layers.0.q_proj.scale"]["data_offsets"] = {0, std::uint64_t{1} << 41};
    }, true, "shape must be [3,64]");
  }
  SECTION("missing tensor, unknown layer, not a radio file, bad attributes") {
    f.expect_rejected([](Parsed& p) { p.header.erase("weight.loc"); }, true, "has no tensor 'loc'");
    f.expect_rejected([](Parsed& p) { p.header["x.depth"] = p.header["weight.depth"]; }, true,
                      "belongs to no layer");
    f.expect_rejected([](Parsed& p) { p.header["__metadata__"]["format"] = "gguf"; }, true,
                      "must be \"radio\"");
    f.expect_rejected([](Parsed& p) { p.header["__metadata__"].erase("crc32"); }, false,
                      "\"crc32\" is missing");
    f.expect_rejected([](Parsed& p) {
      auto layers = Json::parse(p.header["__metadata__"]["layers"].get<std::string>());
      layers["weight"]["has_bias"] = true;
      p.header["__metadata__"]["layers"] = layers.dump();
    }, true, "has no tensor 'bias'");
    f.expect_rejected([](Parsed& p) {
      auto layers = Json::parse(p.header["__metadata__"]["layers"].get<std::string>());
      layers["weight"]["out_features"] = -3;
      p.header["__metadata__"]["layers"] = layers.dump();
    }, true, "out_features must be >= 1, got -3");
    f.expect_rejected([](Parsed& p) { p.header["__metadata__"]["layers"] = "{"; }, true,
                      "not valid JSON");
  }
  SECTION("missing file") {
    CHECK_THROWS_WITH(radio::load(temp_path("missing.radio")), Catch::Contains("cannot open"));
  }
}

TEST_CASE("every truncation and random corruption is rejected cleanly", "[format][serialize]") {
  Fixture f;
  // Only radio::Error may come out (a crash or another exception type fails the test).
  auto loads_or_rejects = [&](const std::vector<char>& bytes) {
    write_bytes(f.path, bytes);
    try {
      radio::load(f.path);
      return true;
    } catch (const radio::Error&) {
      return false;
    }
  };
  for (std::size_t n = 0; n < f.good.size(); n += 1 + n / 16) {
    INFO("truncated to " << n << " bytes");
    CHECK_FALSE(loads_or_rejects(std::vector<char>(f.good.begin(), f.good.begin() + static_cast<std::ptrdiff_t>(n))));
  }
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    auto bytes = f.good;
    const int flips = 1 + trial % 3;
    for (int i = 0; i < flips; ++i)
      bytes[rng() % bytes.size()] ^= static_cast<char>(1 + rng() % 255);
    (void)loads_or_rejects(bytes);  // a flip inside JSON whitespace may load fine; no crash
  }
}

TEST_CASE("crc32 equals zlib's check value", "[format][serialize]") {
  const char text[] = "123456789";
  CHECK(radio::crc32(text, 9) == 0xcbf43926u);
  CHECK(radio::crc32(text + 4, 5, radio::crc32(text, 4)) == 0xcbf43926u);
}
