// QuantizedLayer: one layer of the packed format v1 held in owning arrays, with validate() doing
// every check of docs/format.md and bytes() the exact stored size. Permutations are held as int32
// whatever their file dtype; f16 tensors as raw uint16 bits.
#pragma once

#include <cstdint>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"
#include "radio/half.hpp"
#include "radio/pack.hpp"

namespace radio {

// row_perm [N]: a permutation of 0..N-1.
inline void check_row_perm(const LayerGeometry& g, const std::int32_t* row_perm) {
  const std::int64_t n = g.out_features;
  std::vector<bool> seen(static_cast<std::size_t>(n), false);
  for (std::int64_t p = 0; p < n; ++p) {
    const std::int64_t v = row_perm[p];
    RADIO_CHECK(v >= 0 && v < n, "row_perm[", p, "] = ", v, " is out of range; expected 0..",
                n - 1);
    RADIO_CHECK(!seen[static_cast<std::size_t>(v)], "row_perm is not a permutation: row ", v,
                " appears twice (again at position ", p, ")");
    seen[static_cast<std::size_t>(v)] = true;
  }
}

// col_perm [C, Kp]: per chunk, positions < K a permutation of 0..K-1, positions >= K hold K.
inline void check_col_perm(const LayerGeometry& g, const std::int32_t* col_perm) {
  const std::int64_t k = g.in_features, kp = g.padded_in();
  std::vector<std::int64_t> seen_in(static_cast<std::size_t>(k), -1);  // chunk that saw it
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    const std::int32_t* perm = col_perm + c * kp;
    for (std::int64_t p = 0; p < k; ++p) {
      const std::int64_t v = perm[p];
      RADIO_CHECK(v >= 0 && v < k, "col_perm[", c, ", ", p, "] = ", v,
                  " is out of range; expected a column in 0..", k - 1);
      RADIO_CHECK(seen_in[static_cast<std::size_t>(v)] != c, "col_perm[", c,
                  "] is not a permutation: column ", v, " appears twice (again at position ", p,
                  ")");
      seen_in[static_cast<std::size_t>(v)] = c;
    }
    for (std::int64_t p = k; p < kp; ++p)
      RADIO_CHECK(perm[p] == k, "col_perm[", c, ", ", p, "] = ", perm[p],
                  " is a padding position; expected the sentinel ", k);
  }
}

// depth [C, U]: every entry in 0..8.
inline void check_depth(const LayerGeometry& g, const std::uint8_t* depth) {
  const std::int64_t units = g.units();
  for (std::int64_t i = 0; i < g.chunks() * units; ++i)
    RADIO_CHECK(depth[i] <= kMaxDepth, "depth[", i / units, ", ", i % units, "] = ",
                int{depth[i]}, "; expected 0..", kMaxDepth);
}

struct QuantizedLayer {
  LayerGeometry geometry;
  Quantizer quantizer = Quantizer::kLaplace;
  bool has_bias = false;
  std::vector<std::int32_t> row_perm;  // [N]
  std::vector<std::int32_t> col_perm;  // [C, Kp]
  std::vector<std::uint8_t> depth;     // [C, U]
  std::vector<std::uint16_t> scale;    // [C, Kp] f16 bits
  std::vector<std::uint16_t> loc;      // [C, Kp] f16 bits
  std::vector<std::uint32_t> qweight;  // [W]
  std::vector<std::uint16_t> bias;     // [N] f16 bits, original row order; empty without bias

  std::int64_t chunk_positions() const { return geometry.chunks() * geometry.padded_in(); }

  // Every check of docs/format.md; throws radio::Error naming the first violation.
  void validate() const {
    const LayerGeometry& g = geometry;
    RADIO_CHECK(g.out_features > 0 && g.in_features > 0 && g.rows_per_group > 0,
                "layer geometry must be positive, got out_features=", g.out_features,
                " in_features=", g.in_features, " rows_per_group=", g.rows_per_group);
    // Re-run the constructor's checks (a default-built geometry may have been filled by hand).
    (void)LayerGeometry(g.out_features, g.in_features, g.rows_per_group);
    check_size("row_perm", row_perm.size(), g.out_features);
    check_size("col_perm", col_perm.size(), chunk_positions());
    check_size("depth", depth.size(), g.chunks() * g.units());
    check_size("scale", scale.size(), chunk_positions());
    check_size("loc", loc.size(), chunk_positions());
    check_size("bias", bias.size(), has_bias ? g.out_features : 0);
    check_depth(g, depth.data());
    const std::int64_t words = qweight_words(g, depth.data());
    RADIO_CHECK(static_cast<std::int64_t>(qweight.size()) == words, "qweight has ",
                qweight.size(), " words but the depths need ", words);
    check_row_perm(g, row_perm.data());
    check_col_perm(g, col_perm.data());
    const std::int64_t k = g.in_features, kp = g.padded_in();
    for (std::int64_t i = 0; i < chunk_positions(); ++i) {
      const std::int64_t c = i / kp, p = i % kp;
      RADIO_CHECK(half_is_finite(scale[static_cast<std::size_t>(i)]) &&
                      half_is_finite(loc[static_cast<std::size_t>(i)]),
                  "scale/loc at chunk ", c, ", position ", p, " are not finite (scale bits 0x",
                  std::hex, scale[static_cast<std::size_t>(i)], ", loc bits 0x",
                  loc[static_cast<std::size_t>(i)], std::dec, ")");
      if (p >= k)
        RADIO_CHECK(half_to_float(scale[static_cast<std::size_t>(i)]) == 0.0f &&
                        half_to_float(loc[static_cast<std::size_t>(i)]) == 0.0f,
                    "scale/loc at padding position ", p, " of chunk ", c, " must be 0, got ",
                    half_to_float(scale[static_cast<std::size_t>(i)]), " and ",
                    half_to_float(loc[static_cast<std::size_t>(i)]));
    }
    for (std::size_t i = 0; i < bias.size(); ++i)
      RADIO_CHECK(half_is_finite(bias[i]), "bias[", i, "] is not finite");
  }

  // Exact stored bytes of this layer's tensors (docs/format.md "Size").
  std::int64_t bytes() const {
    return geometry.side_bytes(has_bias) + 4 * static_cast<std::int64_t>(qweight.size());
  }

 private:
  static void check_size(const char* name, std::size_t got, std::int64_t expected) {
    RADIO_CHECK(static_cast<std::int64_t>(got) == expected, name, " has ", got,
                " elements; expected ", expected);
  }
};

}  // namespace radio
