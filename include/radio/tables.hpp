// The fixed reconstruction tables T_B of docs/format.md ("Reconstruction"), B = 0..8, for both
// quantizers. Each is computed once, in double, and rounded to float once, so the C++ core, the
// CUDA kernels (which copy these values) and the Python twins agree bit for bit.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "radio/config.hpp"
#include "radio/format.hpp"

namespace radio {

inline Quantizer parse_quantizer(const std::string& name) {
  if (name == "laplace") return Quantizer::kLaplace;
  if (name == "uniform") return Quantizer::kUniform;
  detail::fail("quantizer must be \"laplace\" or \"uniform\", got \"", name, "\"");
}

inline const char* quantizer_name(Quantizer q) {
  return q == Quantizer::kLaplace ? "laplace" : "uniform";
}

// All tables of one quantizer in one array: entry (1 << B) + q is T_B[q]. Entry 0 is unused and
// entry 1 is T_0[0] = 0, so mixed-depth decoding is one lookup.
using QuantizerLut = std::array<float, (2u << kMaxDepth)>;

namespace detail {
inline QuantizerLut make_lut(Quantizer quantizer) {
  QuantizerLut lut{};
  for (int depth = 0; depth <= kMaxDepth; ++depth) {
    const int levels = 1 << depth;
    for (int q = 0; q < levels; ++q) {
      double t;
      if (quantizer == Quantizer::kLaplace) {
        // Unit-scale Laplace inverse CDF at the bin centre v (log1p keeps the small |v| exact).
        const double v = (q + 0.5) / levels - 0.5;
        t = v == 0.0 ? 0.0 : -std::copysign(1.0, v) * std::log1p(-2.0 * std::fabs(v));
      } else {
        t = q - (levels - 1) / 2.0;
      }
      lut[static_cast<std::size_t>(levels + q)] = static_cast<float>(t);
    }
  }
  return lut;
}
}  // namespace detail

inline const QuantizerLut& quantizer_lut(Quantizer quantizer) {
  static const QuantizerLut laplace = detail::make_lut(Quantizer::kLaplace);
  static const QuantizerLut uniform = detail::make_lut(Quantizer::kUniform);
  return quantizer == Quantizer::kLaplace ? laplace : uniform;
}

// T_B as a pointer to 2^B floats.
inline const float* quantizer_table(Quantizer quantizer, int depth) {
  RADIO_CHECK(depth >= 0 && depth <= kMaxDepth, "depth must be in 0..", kMaxDepth, ", got ",
              depth);
  return quantizer_lut(quantizer).data() + (std::size_t{1} << depth);
}

}  // namespace radio
