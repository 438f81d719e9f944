// Register-level decode of one unit of the packed format (docs/format.md) into the A fragments of
// mma.m16n8k16, templated on the unit's bit depth B. Host-compilable (no intrinsics on the host
// path) so that cuda/host_test_decode.cpp checks the lane/fragment mapping without a GPU.
//
// The mapping. A warp computes a 16-row x 8-token tile. Lane (g = lane / 4, t = lane % 4) holds,
// per PTX, A elements of rows g and g+8 at mma columns {2t, 2t+1, 2t+8, 2t+9} of each k16 step,
// and B elements of token g at the same mma columns. A dot product does not care in which order
// its terms come, so mma column kk of k-step s stands for unit position
//     pos(s, kk) = 8 * t + 4 * s + (kk < 8 ? 0 : 2) + kk % 2,     t = (kk % 8) / 2,
// which gives every lane the 8 *consecutive* positions 8t .. 8t+7 of its rows: the index bits
// [8tB, 8tB + 8B) of the row's B-word bit string. A lane loads at most 3 words per row (kWords)
// and shifts its window to bit 0 once; every index is then at a compile-time bit position. The B
// operand is x * scale staged in shared memory in natural position order, so a lane's B fragments
// for both k-steps are one 16-byte load of positions 8t .. 8t+7 (see qlinear_kernel.cuh).
//
// Register i (0..3) of the A fragment of k-step s holds rows (g, g+8, g, g+8)[i] and positions
// 8t + 4s + (0, 0, 2, 2)[i] + {0 (low half), 1 (high half)}.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RADIO_HD __host__ __device__ __forceinline__
#else
#define RADIO_HD inline
#endif

namespace radio::cuda {

// Words of the row's bit string that lane t needs: max over t of the words touched by bits
// [8tB, 8tB + 8B).
constexpr int lane_words(int depth) {
  int most = 1;
  for (int t = 0; t < 4; ++t) {
    const int first = 8 * t * depth;
    const int last = first + 8 * depth - 1;
    const int n = last / 32 - first / 32 + 1;
    most = n > most ? n : most;
  }
  return most;
}
static_assert(lane_words(1) == 1 && lane_words(2) == 1 && lane_words(3) == 2 &&
                  lane_words(4) == 1 && lane_words(5) == 2 && lane_words(6) == 2 &&
                  lane_words(7) == 3 && lane_words(8) == 2,
              "lane word counts");

// First word of lane t's window and the window's bit offset inside it.
RADIO_HD int lane_first_word(int depth, int t) { return (8 * t * depth) >> 5; }
RADIO_HD int lane_bit_offset(int depth, int t) { return (8 * t * depth) & 31; }

// (hi:lo) >> shift, keeping the low 32 bits; shift in 0..31.
RADIO_HD std::uint32_t funnel_right(std::uint32_t lo, std::uint32_t hi, int shift) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, shift);
#else
  return static_cast<std::uint32_t>(((static_cast<std::uint64_t>(hi) << 32) | lo) >> shift);
#endif
}

// Lane window: the lane's 8 indices as a 64-bit string starting at bit 0 (lo, hi).
template <int kDepth>
struct Window {
  std::uint32_t lo = 0, hi = 0;

  // words[i] = word (first + i) of the row's bit string (clamped loads beyond B-1 are allowed:
  // they only fill window bits at or above 8B, which are never read).
  RADIO_HD static Window make(const std::uint32_t (&words)[lane_words(kDepth)], int offset) {
    Window w;
    constexpr int kW = lane_words(kDepth);
    const std::uint32_t w1 = kW > 1 ? words[kW > 1 ? 1 : 0] : 0u;
    const std::uint32_t w2 = kW > 2 ? words[kW > 2 ? 2 : 0] : 0u;
    w.lo = funnel_right(words[0], w1, offset);
    if constexpr (8 * kDepth > 32) w.hi = funnel_right(w1, w2, offset);
    return w;
  }

  // Index i (0..7) of the window: bits [i*B, i*B + B).
  template <int kI>
  RADIO_HD std::uint32_t index() const {
    constexpr int kLo = kI * kDepth;
    constexpr std::uint32_t kMask = (1u << kDepth) - 1u;
    if constexpr (kLo + kDepth <= 32) {
      return (lo >> kLo) & kMask;
    } else if constexpr (kLo >= 32) {
      return (hi >> (kLo - 32)) & kMask;
    } else {
      return ((lo >> kLo) | (hi << (32 - kLo))) & kMask;
    }
  }

  // Indices kI (low half) and kI+1 (high half) of a 32-bit register, each in a 16-bit field.
  template <int kI>
  RADIO_HD std::uint32_t index_pair() const {
    return index<kI>() | (index<kI + 1>() << 16);
  }
};

// Index j (0..31) of a row's unit: bits [jB, jB + B) of its B words.
template <int kB, int kJ>
RADIO_HD std::uint32_t unit_index(const std::uint32_t (&w)[kB]) {
  constexpr int kLo = kJ * kB, kWord = kLo / 32, kShift = kLo % 32;
  constexpr std::uint32_t kMask = (1u << kB) - 1u;
  if constexpr (kShift + kB <= 32) {
    return (w[kWord] >> kShift) & kMask;
  } else {
    return ((w[kWord] >> kShift) | (w[kWord + 1] << (32 - kShift))) & kMask;
  }
}

// 4 * (index j of a row's unit): the byte offset of T_B[q] in a float table, with the multiply
// folded into the shift (one shift or funnel shift and one AND per weight; the GEMV kernel's
// inner loop is issue-bound, gemv_kernel.cuh).
template <int kB, int kJ>
RADIO_HD std::uint32_t unit_index_x4(const std::uint32_t (&w)[kB]) {
  constexpr int kLo = kJ * kB, kWord = kLo / 32, kShift = kLo % 32;
  constexpr std::uint32_t kMask = ((1u << kB) - 1u) << 2;
  if constexpr (kShift < 2) {
    return (w[kWord] << (2 - kShift)) & kMask;
  } else if constexpr (kShift + kB <= 32) {
    return (w[kWord] >> (kShift - 2)) & kMask;
  } else {
    return funnel_right(w[kWord], w[kWord + 1], kShift - 2) & kMask;
  }
}

// Byte offset of lane l's copy of the entry of index pair (j, j+1), j even, in a pair table
// replicated once per shared-memory bank (entry e of lane l at word 32 e + l, so every lane reads
// its own bank): 128 * (index j | index j+1 << B) | 4 l, from one shift and one AND-OR. The pair
// is the 2B bits [jB, jB + 2B) of the row's unit, in the order the table is indexed.
template <int kB, int kJ>
RADIO_HD std::uint32_t unit_pair_offset(const std::uint32_t (&w)[kB], std::uint32_t lane4) {
  static_assert(kJ % 2 == 0 && 2 * kB <= 24, "pairs start at even positions; 2B + 7 bits fit");
  constexpr int kLo = kJ * kB, kWord = kLo / 32, kShift = kLo % 32;
  constexpr std::uint32_t kMask = ((1u << (2 * kB)) - 1u) << 7;
  std::uint32_t v;
  if constexpr (kShift < 7) {
    v = w[kWord] << (7 - kShift);
  } else if constexpr (kShift + 2 * kB <= 32) {
    v = w[kWord] >> (kShift - 7);
  } else {
    v = funnel_right(w[kWord], w[kWord + 1], kShift - 7);
  }
  return (v & kMask) | lane4;
}

// Position (0..31 inside the unit) of A-fragment register `reg`, half `half`, k-step `step`,
// for lane t. Used by the host test and by nothing on the device (the device code is the
// unrolled form of the same rule).
RADIO_HD int fragment_position(int t, int step, int reg, int half) {
  return 8 * t + 4 * step + ((reg >= 2) ? 2 : 0) + half;
}
RADIO_HD int fragment_row(int g, int reg) { return (reg & 1) ? g + 8 : g; }

// PTX mma.m16n8k16 element ownership, written out for the host emulation:
//   A (16x16, row major): register i of lane (g, t) holds rows (g, g+8, g, g+8)[i],
//     columns 2t + (0, 0, 8, 8)[i] + half;
//   B (16x8): register j holds rows (k) 2t + 8j + half, column (token) g;
//   C (16x8, f32): element e holds row g + 8 * (e / 2), column 2t + e % 2.
RADIO_HD int mma_a_col(int t, int reg, int half) { return 2 * t + ((reg >= 2) ? 8 : 0) + half; }
RADIO_HD int mma_b_row(int t, int reg, int half) { return 2 * t + 8 * reg + half; }

}  // namespace radio::cuda
