// float <-> IEEE float16 bit patterns. The format stores scale, loc and bias as f16; the core keeps
// them as raw uint16 bits (what numpy and safetensors hand over) and converts through Eigen::half,
// which rounds to nearest-even like torch and numpy.
#pragma once

#include <Eigen/Core>
#include <cstdint>

namespace radio {

inline float half_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::half(Eigen::half_impl::raw_uint16_to_half(bits)));
}

inline std::uint16_t float_to_half(float value) {
  return Eigen::half_impl::raw_half_as_uint16(Eigen::half_impl::float_to_half_rtne(value));
}

// The float the decoder will see after `value` is stored as f16.
inline float round_to_half(float value) { return half_to_float(float_to_half(value)); }

// True when the f16 bits encode a finite number (exponent not all ones).
inline bool half_is_finite(std::uint16_t bits) { return (bits & 0x7c00u) != 0x7c00u; }

}  // namespace radio
