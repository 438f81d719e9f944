// The group quantizers of docs/format.md ("Encoding"): companded Laplace and min-max uniform
// (asymmetric or symmetric), with the optional refinement search, and quantize_layer(), which
// quantizes every group of a layer and packs the result.
//
// A group is one column of one chunk (rows_c values). Its location and scale are rounded to f16
// before any index is chosen, so the encoder minimises the error of what the decoder will see.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"
#include "radio/half.hpp"
#include "radio/layer.hpp"
#include "radio/pack.hpp"
#include "radio/tables.hpp"

namespace radio {

// Options shared by every group of a layer.
struct QuantizerOptions {
  Quantizer quantizer = Quantizer::kLaplace;
  bool refine = true;
  bool symmetric = false;  // uniform only: mu = 0, s0 = 2 max|w| / (2^B - 1)

  void check() const {
    RADIO_CHECK(!(symmetric && quantizer == Quantizer::kLaplace),
                "symmetric=True applies to the uniform quantizer only, got quantizer=\"laplace\"");
  }
};

// Location and scale of one group, as the floats of the f16 numbers the file stores.
struct GroupCode {
  float loc = 0.0f;
  float scale = 0.0f;
};

// Refinement grid: m, beta in {-2, -1.875, ..., 2}.
inline constexpr int kRefineSteps = 33;
inline double refine_step(int i) { return -2.0 + 0.125 * i; }

// Lower median (the smaller middle value for even n). `scratch` is reordered.
inline float lower_median(std::vector<float>& scratch) {
  const auto mid = scratch.begin() + static_cast<std::ptrdiff_t>((scratch.size() - 1) / 2);
  std::nth_element(scratch.begin(), mid, scratch.end());
  return *mid;
}

// sqrt(mean((w - loc)^2)), summed in double.
inline float rms_about(const float* w, std::int64_t n, float loc) {
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(w[i]) - loc;
    sum += d * d;
  }
  return static_cast<float>(std::sqrt(sum / static_cast<double>(n)));
}

// Index of one value; scale > 0 and levels = 2^B >= 2.
inline std::uint8_t encode_value(float w, float loc, float scale, int levels,
                                 Quantizer quantizer) {
  const float z = (w - loc) / scale;
  const float top = static_cast<float>(levels - 1);
  float q;
  if (quantizer == Quantizer::kLaplace) {
    // F(z) = 1/2 + sign(z)/2 * (1 - exp(-|z|)): the Laplace CDF maps z to a uniform bin.
    const float sign = z > 0.0f ? 1.0f : (z < 0.0f ? -1.0f : 0.0f);
    const float f = sign * -std::expm1(-std::fabs(z)) * 0.5f + 0.5f;
    q = std::min(std::floor(static_cast<float>(levels) * f), top);
  } else {
    q = std::min(std::max(std::nearbyint(z + top * 0.5f), 0.0f), top);  // round half to even
  }
  return static_cast<std::uint8_t>(q);
}

// Indices of a group at depth B with the given (f16-valued) code; all 0 when B = 0 or scale = 0.
inline void encode_group(const float* w, std::int64_t n, int depth, GroupCode code,
                         Quantizer quantizer, std::uint8_t* q) {
  if (depth == 0 || !(code.scale > 0.0f)) {
    std::fill(q, q + n, std::uint8_t{0});
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) q[i] = encode_value(w[i], code.loc, code.scale, 1 << depth, quantizer);
}

// Squared error of the group after encoding and decoding with `code` (float diffs, double sum).
inline double group_error(const float* w, std::int64_t n, int depth, GroupCode code,
                          Quantizer quantizer) {
  const float* table = quantizer_table(quantizer, depth);
  const bool zero = depth == 0 || !(code.scale > 0.0f);
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    const int q = zero ? 0 : encode_value(w[i], code.loc, code.scale, 1 << depth, quantizer);
    const float d = code.loc + code.scale * table[q] - w[i];
    sum += static_cast<double>(d * d);
  }
  return sum;
}

// Location mu0, spread S (RMS about mu0) and base scale s0 of a group (docs/format.md).
struct GroupBase {
  float mu0 = 0.0f;
  float spread = 0.0f;
  float s0 = 0.0f;
};

inline GroupBase group_base(const float* w, std::int64_t n, int depth,
                            const QuantizerOptions& opt, std::vector<float>& scratch) {
  GroupBase base;
  const float steps = static_cast<float>(std::max((1 << depth) - 1, 1));
  if (opt.quantizer == Quantizer::kLaplace) {
    scratch.assign(w, w + n);
    base.mu0 = lower_median(scratch);
    base.spread = rms_about(w, n, base.mu0);
    // Laplace of standard deviation 3S: the Panter-Dite compander for a Laplace source.
    base.s0 = base.spread * static_cast<float>(3.0 / std::sqrt(2.0));
  } else {
    const auto [lo, hi] = std::minmax_element(w, w + n);
    if (opt.symmetric) {
      base.mu0 = 0.0f;
      base.s0 = 2.0f * std::max(std::fabs(*lo), std::fabs(*hi)) / steps;
    } else {
      base.mu0 = (*hi + *lo) * 0.5f;
      base.s0 = (*hi - *lo) / steps;
    }
    base.spread = rms_about(w, n, base.mu0);
  }
  if (depth == 0) base.s0 = 0.0f;
  return base;
}

// Chooses the group's code (refined when opt.refine) and writes its indices to q.
inline GroupCode quantize_group(const float* w, std::int64_t n, int depth,
                                const QuantizerOptions& opt, std::vector<float>& scratch,
                                std::uint8_t* q) {
  const GroupBase base = group_base(w, n, depth, opt, scratch);
  GroupCode code{round_to_half(base.mu0), round_to_half(base.s0)};
  if (depth > 0 && opt.refine) {
    // Scale search at mu = mu0; strict '<' keeps the earlier candidate on ties.
    double best = HUGE_VAL;
    int best_m = kRefineSteps / 2;  // m = 0
    for (int i = 0; i < kRefineSteps; ++i) {
      const GroupCode cand{code.loc,
                           round_to_half(base.s0 * static_cast<float>(std::exp2(refine_step(i))))};
      const double err = group_error(w, n, depth, cand, opt.quantizer);
      if (err < best) {
        best = err;
        best_m = i;
      }
    }
    const float mult = static_cast<float>(std::exp2(refine_step(best_m)));
    code.scale = round_to_half(base.s0 * mult);
    if (!opt.symmetric) {
      // Shift search in steps of the spread at the chosen scale.
      const float step = base.spread * mult;
      best = HUGE_VAL;
      float best_loc = code.loc;
      for (int i = 0; i < kRefineSteps; ++i) {
        const GroupCode cand{
            round_to_half(base.mu0 + static_cast<float>(refine_step(i)) * step), code.scale};
        const double err = group_error(w, n, depth, cand, opt.quantizer);
        if (err < best) {
          best = err;
          best_loc = cand.loc;
        }
      }
      code.loc = best_loc;
    }
  }
  encode_group(w, n, depth, code, opt.quantizer, q);
  return code;
}

// Quantizes a whole layer: weight float32 [N, K] (row-major, original order), row_perm [N],
// col_perm [C, Kp], depth [C, U]. Returns the complete QuantizedLayer (no bias). If `indices` is
// given it receives the uint8 [N, Kp] indices (permuted rows, chunk-position order).
inline QuantizedLayer quantize_layer(const float* weight, const LayerGeometry& g,
                                     const std::int32_t* row_perm, const std::int32_t* col_perm,
                                     const std::uint8_t* depth, const QuantizerOptions& opt,
                                     std::vector<std::uint8_t>* indices = nullptr) {
  opt.check();
  check_depth(g, depth);
  check_row_perm(g, row_perm);
  check_col_perm(g, col_perm);
  const std::int64_t n = g.out_features, k = g.in_features, kp = g.padded_in();
  const std::int64_t gs = g.rows_per_group, units = g.units();
  for (std::int64_t i = 0; i < n * k; ++i)
    RADIO_CHECK(std::isfinite(weight[i]), "weight[", i / k, ", ", i % k, "] = ", weight[i],
                " is not finite");

  QuantizedLayer layer;
  layer.geometry = g;
  layer.quantizer = opt.quantizer;
  layer.row_perm.assign(row_perm, row_perm + n);
  layer.col_perm.assign(col_perm, col_perm + g.chunks() * kp);
  layer.depth.assign(depth, depth + g.chunks() * units);
  layer.scale.assign(static_cast<std::size_t>(g.chunks() * kp), 0);
  layer.loc.assign(static_cast<std::size_t>(g.chunks() * kp), 0);
  std::vector<std::uint8_t> idx(static_cast<std::size_t>(n * kp), 0);

  std::vector<float> block;    // [K, rows_c]: the chunk transposed, so each group is contiguous
  std::vector<float> scratch;  // median workspace
  std::vector<std::uint8_t> q(static_cast<std::size_t>(gs));
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    const std::int64_t rows = g.rows_in_chunk(c);
    block.resize(static_cast<std::size_t>(k * rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* src = weight + static_cast<std::int64_t>(row_perm[c * gs + r]) * k;
      for (std::int64_t col = 0; col < k; ++col) block[static_cast<std::size_t>(col * rows + r)] = src[col];
    }
    for (std::int64_t p = 0; p < k; ++p) {
      const std::int64_t col = col_perm[c * kp + p];
      const int d = depth[c * units + p / kUnit];
      const GroupCode code = quantize_group(block.data() + col * rows, rows, d, opt, scratch, q.data());
      const std::uint16_t scale_bits = float_to_half(code.scale), loc_bits = float_to_half(code.loc);
      RADIO_CHECK(half_is_finite(scale_bits) && half_is_finite(loc_bits), "the group of column ",
                  col, " in chunk ", c, " has a location or scale too large for float16 "
                  "(|x| <= 65504); scale the weights down first");
      layer.scale[static_cast<std::size_t>(c * kp + p)] = scale_bits;
      layer.loc[static_cast<std::size_t>(c * kp + p)] = loc_bits;
      for (std::int64_t r = 0; r < rows; ++r)
        idx[static_cast<std::size_t>((c * gs + r) * kp + p)] = q[static_cast<std::size_t>(r)];
    }
  }
  layer.qweight = pack_layer(g, depth, idx.data());
  if (indices) *indices = std::move(idx);
  return layer;
}

}  // namespace radio
