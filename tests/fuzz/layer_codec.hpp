// A plain byte encoding of a QuantizedLayer, shared by the layer fuzz target (decode) and the seed
// corpus generator (encode), so that seeds are exact valid layers and every mutation of them is
// a layer the unpacker and validate() must survive.
//
// Layout, little-endian, read front to back:
//   u16 n-1, u16 k-1, u16 gs-1, u8 flags (bit 0: uniform quantizer, bit 1: has_bias)
//   i32 row_perm[N], i32 col_perm[C*Kp], u8 depth[C*U], u16 scale[C*Kp], u16 loc[C*Kp],
//   u32 W, u32 qweight[W], u16 bias[N] when has_bias
// N, K and gs are taken modulo kMaxExtent so one decoded layer stays small (the fuzzer must run
// millions of them); decode() returns false when the bytes end before the layer does, and never
// reserves memory for more elements than the remaining bytes hold.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "radio/layer.hpp"

namespace radio::fuzz {

inline constexpr std::int64_t kMaxExtent = 1024;

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), left_(size) {}

  template <typename T>
  bool read(T& out) {
    if (left_ < sizeof(T)) return false;
    std::memcpy(&out, data_, sizeof(T));  // little-endian host (radio files require it too)
    data_ += sizeof(T);
    left_ -= sizeof(T);
    return true;
  }

  // Reads `count` values of T into v, or returns false (v untouched) if the bytes run short.
  template <typename T>
  bool read_array(std::vector<T>& v, std::int64_t count) {
    if (count < 0 || static_cast<std::uint64_t>(count) > left_ / sizeof(T)) return false;
    v.resize(static_cast<std::size_t>(count));
    if (count > 0) std::memcpy(v.data(), data_, static_cast<std::size_t>(count) * sizeof(T));
    data_ += static_cast<std::size_t>(count) * sizeof(T);
    left_ -= static_cast<std::size_t>(count) * sizeof(T);
    return true;
  }

 private:
  const std::uint8_t* data_;
  std::size_t left_;
};

// Fills `layer` from the bytes; false when they end early. The layer is NOT validated.
inline bool decode_layer(const std::uint8_t* data, std::size_t size, QuantizedLayer& layer) {
  ByteReader in(data, size);
  std::uint16_t n = 0, k = 0, gs = 0;
  std::uint8_t flags = 0;
  if (!in.read(n) || !in.read(k) || !in.read(gs) || !in.read(flags)) return false;
  layer.geometry = LayerGeometry(1 + n % kMaxExtent, 1 + k % kMaxExtent, 1 + gs % kMaxExtent);
  layer.quantizer = (flags & 1) ? Quantizer::kUniform : Quantizer::kLaplace;
  layer.has_bias = (flags & 2) != 0;
  const LayerGeometry& g = layer.geometry;
  const std::int64_t positions = g.chunks() * g.padded_in();
  std::uint32_t words = 0;
  if (!in.read_array(layer.row_perm, g.out_features) || !in.read_array(layer.col_perm, positions) ||
      !in.read_array(layer.depth, g.chunks() * g.units()) || !in.read_array(layer.scale, positions) ||
      !in.read_array(layer.loc, positions) || !in.read(words) ||
      !in.read_array(layer.qweight, words))
    return false;
  layer.bias.clear();
  return !layer.has_bias || in.read_array(layer.bias, g.out_features);
}

inline std::vector<std::uint8_t> encode_layer(const QuantizedLayer& layer) {
  std::vector<std::uint8_t> out;
  auto put = [&out](const void* p, std::size_t bytes) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    out.insert(out.end(), b, b + bytes);
  };
  auto put_vec = [&put](const auto& v) { put(v.data(), v.size() * sizeof(v[0])); };
  const LayerGeometry& g = layer.geometry;
  RADIO_CHECK(g.out_features <= kMaxExtent && g.in_features <= kMaxExtent &&
                  g.rows_per_group <= kMaxExtent,
              "encode_layer: extents must be <= ", kMaxExtent);
  const auto n = static_cast<std::uint16_t>(g.out_features - 1);
  const auto k = static_cast<std::uint16_t>(g.in_features - 1);
  const auto gs = static_cast<std::uint16_t>(g.rows_per_group - 1);
  const auto flags = static_cast<std::uint8_t>((layer.quantizer == Quantizer::kUniform ? 1 : 0) |
                                               (layer.has_bias ? 2 : 0));
  const auto words = static_cast<std::uint32_t>(layer.qweight.size());
  put(&n, 2);
  put(&k, 2);
  put(&gs, 2);
  put(&flags, 1);
  put_vec(layer.row_perm);
  put_vec(layer.col_perm);
  put_vec(layer.depth);
  put_vec(layer.scale);
  put_vec(layer.loc);
  put(&words, 4);
  put_vec(layer.qweight);
  if (layer.has_bias) put_vec(layer.bias);
  return out;
}

}  // namespace radio::fuzz
