// The rate model: how many bits a quantized layer costs, counted exactly as the packed format v1
// stores it (docs/format.md, "Size"). Each unit (32 positions of one chunk) at depth B costs
// rows_c * 32 * B index bits (B words per chunk row); everything else (scale, loc, col_perm,
// depth, row_perm, bias) is side information fixed by the shape, LayerGeometry::side_bytes().
// The solver (solver.hpp) sees only per-unit weights and the total side bits built here.
#pragma once

#include <cstdint>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"

namespace radio {

// Rate of one layer. Units are numbered in depth order: unit (c, u) is c * U + u.
struct LayerRate {
  LayerGeometry geometry;
  bool has_bias = false;

  LayerRate(const LayerGeometry& geom, bool bias) : geometry(geom), has_bias(bias) {}

  std::int64_t units() const { return geometry.chunks() * geometry.units(); }
  std::int64_t side_bits() const { return 8 * geometry.side_bytes(has_bias); }

  // Index bits that one bit of depth costs in chunk c: one 32-bit word per chunk row.
  std::int64_t unit_weight(std::int64_t c) const {
    return geometry.rows_in_chunk(c) * kUnit;
  }
  // Index bits of unit (c, *) at depth B.
  std::int64_t unit_bits(std::int64_t c, int depth) const {
    RADIO_CHECK(depth >= 0 && depth <= kMaxDepth, "depth ", depth, " is outside 0..", kMaxDepth);
    return unit_weight(c) * depth;
  }
  // Appends the weight of every unit, in depth order.
  void append_unit_weights(std::vector<double>& out) const {
    for (std::int64_t c = 0; c < geometry.chunks(); ++c) {
      const double w = static_cast<double>(unit_weight(c));
      out.insert(out.end(), static_cast<std::size_t>(geometry.units()), w);
    }
  }

  // qweight words W = sum_c rows_c * D_c for depths [C, U] (row-major).
  std::int64_t qweight_words(const std::uint8_t* depth) const {
    std::int64_t words = 0;
    const std::int64_t n_units = geometry.units();
    for (std::int64_t c = 0; c < geometry.chunks(); ++c) {
      std::int64_t d_c = 0;
      for (std::int64_t u = 0; u < n_units; ++u) {
        const int b = depth[c * n_units + u];
        RADIO_CHECK(b <= kMaxDepth, "depth[", c, ", ", u, "] = ", b, " exceeds ", kMaxDepth);
        d_c += b;
      }
      words += geometry.rows_in_chunk(c) * d_c;
    }
    return words;
  }
  std::int64_t index_bits(const std::uint8_t* depth) const { return 32 * qweight_words(depth); }
  // Bytes of the layer's tensors exactly as stored.
  std::int64_t total_bytes(const std::uint8_t* depth) const {
    return geometry.side_bytes(has_bias) + 4 * qweight_words(depth);
  }
};

// The rate of a whole model: all layers' units in one list for one global allocation.
class ModelRate {
 public:
  // Adds a layer; its units occupy [offset, offset + layer.units()) of unit_weights().
  std::int64_t add_layer(const LayerGeometry& geometry, bool has_bias) {
    const LayerRate layer(geometry, has_bias);
    const std::int64_t offset = static_cast<std::int64_t>(unit_weights_.size());
    layer.append_unit_weights(unit_weights_);
    side_bits_ += layer.side_bits();
    total_weights_ += geometry.weights();
    layers_.push_back(layer);
    offsets_.push_back(offset);
    return offset;
  }

  const std::vector<double>& unit_weights() const { return unit_weights_; }
  std::int64_t units() const { return static_cast<std::int64_t>(unit_weights_.size()); }
  std::int64_t side_bits() const { return side_bits_; }
  // Sum of N*K over layers: the denominator of "bits per weight" (padding not counted).
  std::int64_t total_weights() const { return total_weights_; }
  const std::vector<LayerRate>& layers() const { return layers_; }
  const std::vector<std::int64_t>& offsets() const { return offsets_; }

  // Bytes of every layer's tensors for depths over all units (in unit_weights() order).
  std::int64_t total_bytes(const std::uint8_t* depth) const {
    std::int64_t bytes = 0;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      bytes += layers_[i].total_bytes(depth + offsets_[i]);
    }
    return bytes;
  }

 private:
  std::vector<LayerRate> layers_;
  std::vector<std::int64_t> offsets_;
  std::vector<double> unit_weights_;
  std::int64_t side_bits_ = 0;
  std::int64_t total_weights_ = 0;
};

}  // namespace radio
