// The packed format, version 1: constants and the geometry of one quantized layer.
// docs/format.md is the prose definition; this header is its single C++ statement, shared by the
// CPU reference (pack.hpp, dequant.hpp), the rate model (rate.hpp), serialization and cuda/.
#pragma once

#include <cstdint>

#include "radio/config.hpp"

namespace radio {

inline constexpr int kFormatVersion = 1;
inline constexpr int kUnit = 32;      // columns per unit; one bit depth per unit
inline constexpr int kMaxDepth = 8;   // depths are 0..8
inline constexpr int kSideScalarBytes = 2;  // scale, loc and bias are stored as float16

enum class Quantizer : std::uint8_t { kLaplace = 0, kUniform = 1 };

// Bytes of one permutation entry for an axis of length n (u16 while the sentinel value n fits).
constexpr std::int64_t index_bytes(std::int64_t n) { return n <= 65535 ? 2 : 4; }

// Derived sizes of an [N, K] layer grouped in chunks of `rows_per_group` rows.
struct LayerGeometry {
  std::int64_t out_features = 0;    // N
  std::int64_t in_features = 0;     // K
  std::int64_t rows_per_group = 0;  // gs

  LayerGeometry() = default;
  LayerGeometry(std::int64_t n, std::int64_t k, std::int64_t gs)
      : out_features(n), in_features(k), rows_per_group(gs) {
    RADIO_CHECK(n > 0, "out_features must be positive, got ", n);
    RADIO_CHECK(k > 0, "in_features must be positive, got ", k);
    RADIO_CHECK(gs > 0, "rows_per_group must be positive, got ", gs);
    RADIO_CHECK(n <= (std::int64_t{1} << 31) - 1 && k <= (std::int64_t{1} << 31) - 1,
                "layer shape [", n, ", ", k, "] exceeds 2^31-1 per dimension");
  }

  std::int64_t chunks() const { return (out_features + rows_per_group - 1) / rows_per_group; }
  std::int64_t units() const { return (in_features + kUnit - 1) / kUnit; }
  std::int64_t padded_in() const { return units() * kUnit; }
  std::int64_t rows_in_chunk(std::int64_t c) const {
    const std::int64_t left = out_features - c * rows_per_group;
    return left < rows_per_group ? left : rows_per_group;
  }
  std::int64_t weights() const { return out_features * in_features; }

  // Bytes of everything but qweight (it depends on the depths): scale, loc, col_perm, depth,
  // row_perm and, when present, bias. See docs/format.md "Size".
  std::int64_t side_bytes(bool has_bias) const {
    const std::int64_t per_position = 2 * kSideScalarBytes + index_bytes(in_features);
    return chunks() * padded_in() * per_position + chunks() * units() +
           out_features * index_bytes(out_features) + (has_bias ? kSideScalarBytes * out_features : 0);
  }
};

}  // namespace radio
