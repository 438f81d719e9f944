// Bit packing of the qweight tensor (docs/format.md, "qweight layout").
//
// One unit row (32 indices of B bits) is a little-endian 32*B-bit string split into B uint32
// words: index j occupies bits [j*B, j*B + B). BitPack<kBits> packs/unpacks one unit row with the
// bit positions known at compile time (fully unrolled, no per-index branches); `with_depth` is
// the single place where a runtime depth becomes that template argument. The whole-layer
// functions walk the layout: chunk c starts at word base[c], unit u of chunk c at word row
// off[c, u], and the B words of one chunk row r lie rows_c apart (row-interleaved, so 32
// consecutive rows read 32 consecutive words on the GPU).
//
// The *_ref functions are the plain bit-by-bit twins the tests compare against.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"

namespace radio {

// Calls f(std::integral_constant<int, B>{}) for the runtime depth B in 0..kMaxDepth: the one
// dispatch from runtime depths to compile-time bit widths.
template <typename F>
decltype(auto) with_depth(int depth, F&& f) {
  switch (depth) {
    case 0: return f(std::integral_constant<int, 0>{});
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: detail::fail("bit depth must be in 0..", kMaxDepth, ", got ", depth);
  }
}

template <int kBits>
struct BitPack {
  static_assert(kBits >= 1 && kBits <= kMaxDepth, "BitPack needs 1..8 bits");
  // A unit row is 32*kBits bits = kLanes 64-bit lanes (the last one half full for odd kBits).
  static constexpr int kLanes = (kUnit * kBits + 63) / 64;
  // Every byte of an 8-index group must fit in kBits bits.
  static constexpr std::uint64_t kByteMask = 0x0101010101010101ull * ((1u << kBits) - 1u);

  // Packs idx[0..32) into kBits words out[0], out[stride], ... Returns the OR of all indices
  // (as bytes of a uint64), so the caller can check once per many rows that every index fits.
  static std::uint64_t pack(const std::uint8_t* idx, std::uint32_t* out, std::int64_t stride) {
    std::uint64_t lanes[kLanes] = {};
    std::uint64_t seen = 0;
    pack_groups(idx, lanes, seen, std::make_index_sequence<4>{});
    store_words(lanes, out, stride, std::make_index_sequence<kBits>{});
    return seen;
  }

  // Unpacks kBits words in[0], in[stride], ... into idx[0..32).
  static void unpack(const std::uint32_t* in, std::int64_t stride, std::uint8_t* idx) {
    std::uint64_t lanes[kLanes] = {};
    load_words(in, stride, lanes, std::make_index_sequence<kBits>{});
    unpack_groups(lanes, idx, std::make_index_sequence<4>{});
  }

  // 8 indices (one per byte, each < 2^kBits) -> their 8*kBits-bit string, index j at bits
  // [j*kBits, (j+1)*kBits). Three SWAR steps halve the number of lanes, doubling their width.
  static constexpr std::uint64_t squeeze(std::uint64_t x) {
    x = (x & 0x00FF00FF00FF00FFull) | ((x & 0xFF00FF00FF00FF00ull) >> (8 - kBits));
    x = (x & 0x0000FFFF0000FFFFull) | ((x & 0xFFFF0000FFFF0000ull) >> (16 - 2 * kBits));
    return (x & 0x00000000FFFFFFFFull) | ((x & 0xFFFFFFFF00000000ull) >> (32 - 4 * kBits));
  }
  // Inverse of squeeze: an 8*kBits-bit string (higher bits zero) -> 8 bytes.
  static constexpr std::uint64_t spread(std::uint64_t x) {
    x = (x & low_bits(4 * kBits)) | ((x << (32 - 4 * kBits)) & 0xFFFFFFFF00000000ull);
    x = (x & (0x0000000100000001ull * low_bits(2 * kBits))) |
        ((x << (16 - 2 * kBits)) & 0xFFFF0000FFFF0000ull);
    return (x & (0x0001000100010001ull * low_bits(kBits))) |
           ((x << (8 - kBits)) & 0xFF00FF00FF00FF00ull);
  }

 private:
  static constexpr std::uint64_t low_bits(int n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

  // Group g (indices 8g..8g+7) occupies string bits [g*8*kBits, (g+1)*8*kBits): lane kLane at
  // shift kShift, spilling into the next lane when it does not fit.
  template <std::size_t G>
  static void put(std::uint64_t (&lanes)[kLanes], std::uint64_t piece) {
    constexpr int kBit = static_cast<int>(G) * 8 * kBits, kLane = kBit / 64, kShift = kBit % 64;
    lanes[kLane] |= piece << kShift;
    if constexpr (kShift + 8 * kBits > 64) lanes[kLane + 1] |= piece >> (64 - kShift);
  }
  template <std::size_t G>
  static std::uint64_t get(const std::uint64_t (&lanes)[kLanes]) {
    constexpr int kBit = static_cast<int>(G) * 8 * kBits, kLane = kBit / 64, kShift = kBit % 64;
    std::uint64_t piece = lanes[kLane] >> kShift;
    if constexpr (kShift + 8 * kBits > 64) piece |= lanes[kLane + 1] << (64 - kShift);
    return piece & low_bits(8 * kBits);
  }
  template <std::size_t... G>
  static void pack_groups(const std::uint8_t* idx, std::uint64_t (&lanes)[kLanes],
                          std::uint64_t& seen, std::index_sequence<G...>) {
    std::uint64_t x[4];
    std::memcpy(x, idx, sizeof x);  // little-endian: byte j of x[g] is index 8g + j
    // No masking: an index that does not fit shows in `seen`, and the caller then throws.
    ((seen |= x[G], put<G>(lanes, squeeze(x[G]))), ...);
  }
  template <std::size_t... G>
  static void unpack_groups(const std::uint64_t (&lanes)[kLanes], std::uint8_t* idx,
                            std::index_sequence<G...>) {
    const std::uint64_t x[4] = {spread(get<G>(lanes))...};
    std::memcpy(idx, x, sizeof x);
  }
  // Word b of the string is the low (b even) or high (b odd) half of lane b / 2.
  template <std::size_t... B>
  static void store_words(const std::uint64_t (&lanes)[kLanes], std::uint32_t* out,
                          std::int64_t stride, std::index_sequence<B...>) {
    ((out[static_cast<std::int64_t>(B) * stride] =
          static_cast<std::uint32_t>(lanes[B / 2] >> (32 * (B % 2)))),
     ...);
  }
  template <std::size_t... B>
  static void load_words(const std::uint32_t* in, std::int64_t stride,
                         std::uint64_t (&lanes)[kLanes], std::index_sequence<B...>) {
    ((lanes[B / 2] |= static_cast<std::uint64_t>(in[static_cast<std::int64_t>(B) * stride])
                      << (32 * (B % 2))),
     ...);
  }
};

// Where every unit's words live in qweight, derived from depth [C, U] (docs/format.md):
// unit_word[c*U + u] = base[c] + off[c, u] * rows_c is the index of word 0 of chunk row 0.
struct WordLayout {
  std::vector<std::int64_t> unit_word;
  std::int64_t words = 0;  // W, the length of qweight

  WordLayout(const LayerGeometry& g, const std::uint8_t* depth) {
    const std::int64_t chunks = g.chunks(), units = g.units();
    unit_word.resize(static_cast<std::size_t>(chunks * units));
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t rows = g.rows_in_chunk(c);
      std::int64_t off = 0;
      for (std::int64_t u = 0; u < units; ++u) {
        const int d = depth[c * units + u];
        RADIO_CHECK(d <= kMaxDepth, "depth[", c, ", ", u, "] must be in 0..", kMaxDepth, ", got ",
                    d);
        unit_word[static_cast<std::size_t>(c * units + u)] = words + off * rows;
        off += d;
      }
      words += off * rows;
    }
  }
};

// qweight length W = sum_c rows_c * sum_u depth[c, u].
inline std::int64_t qweight_words(const LayerGeometry& g, const std::uint8_t* depth) {
  return WordLayout(g, depth).words;
}

namespace detail {
[[noreturn]] inline void fail_index_range(const LayerGeometry& g, const std::uint8_t* indices,
                                          std::int64_t c, std::int64_t u, int depth) {
  const std::int64_t kp = g.padded_in();
  for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r) {
    for (int j = 0; j < kUnit; ++j) {
      const std::int64_t row = c * g.rows_per_group + r, col = u * kUnit + j;
      const int v = indices[row * kp + col];
      RADIO_CHECK((v >> depth) == 0, "indices[", row, ", ", col, "] = ", v, " does not fit in the ",
                  depth, "-bit depth of its unit (chunk ", c, ", unit ", u, "); expected < ",
                  (1 << depth));
    }
  }
  fail("internal: index range failure not found");
}
}  // namespace detail

// Rows are walked in tiles of kRowTile: a tile of indices (kRowTile * Kp bytes) stays in cache
// while every unit of the chunk packs it, and each unit writes whole cache lines of every word.
inline constexpr std::int64_t kRowTile = 32;

// indices uint8 [N, Kp] (permuted rows, chunk-position order) -> qweight [W]. Every index must be
// < 2^depth of its unit (so depth-0 units and padding hold 0 when their unit's depth is 0).
inline void pack_layer(const LayerGeometry& g, const std::uint8_t* depth,
                       const std::uint8_t* indices, std::uint32_t* qweight,
                       const WordLayout& layout) {
  const std::int64_t units = g.units(), kp = g.padded_in();
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    const std::int64_t rows = g.rows_in_chunk(c);
    const std::uint8_t* chunk_idx = indices + c * g.rows_per_group * kp;
    for (std::int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
      const std::int64_t r1 = std::min(rows, r0 + kRowTile);
      for (std::int64_t u = 0; u < units; ++u) {
        const int d = depth[c * units + u];
        std::uint32_t* out = qweight + layout.unit_word[static_cast<std::size_t>(c * units + u)];
        const std::uint8_t* in = chunk_idx + u * kUnit;
        // OR of every index of the tile, bytewise: one range check per tile, not per index.
        const bool fits = with_depth(d, [&](auto bits) -> bool {
          constexpr int kBits = decltype(bits)::value;
          std::uint64_t any = 0;
          if constexpr (kBits == 0) {
            for (std::int64_t r = r0; r < r1; ++r)
              for (int j = 0; j < kUnit; ++j) any |= in[r * kp + j];
            return any == 0;
          } else {
            for (std::int64_t r = r0; r < r1; ++r)
              any |= BitPack<kBits>::pack(in + r * kp, out + r, rows);
            return (any & ~BitPack<kBits>::kByteMask) == 0;
          }
        });
        if (!fits) detail::fail_index_range(g, indices, c, u, d);
      }
    }
  }
}

inline std::vector<std::uint32_t> pack_layer(const LayerGeometry& g, const std::uint8_t* depth,
                                             const std::uint8_t* indices) {
  const WordLayout layout(g, depth);
  std::vector<std::uint32_t> qweight(static_cast<std::size_t>(layout.words));
  pack_layer(g, depth, indices, qweight.data(), layout);
  return qweight;
}

// qweight [W] -> indices uint8 [N, Kp]; depth-0 units unpack to 0. Same tiling as pack_layer.
inline void unpack_layer(const LayerGeometry& g, const std::uint8_t* depth,
                         const std::uint32_t* qweight, std::uint8_t* indices,
                         const WordLayout& layout) {
  const std::int64_t units = g.units(), kp = g.padded_in();
  for (std::int64_t c = 0; c < g.chunks(); ++c) {
    const std::int64_t rows = g.rows_in_chunk(c);
    std::uint8_t* chunk_idx = indices + c * g.rows_per_group * kp;
    for (std::int64_t r0 = 0; r0 < rows; r0 += kRowTile) {
      const std::int64_t r1 = std::min(rows, r0 + kRowTile);
      for (std::int64_t u = 0; u < units; ++u) {
        const std::uint32_t* in =
            qweight + layout.unit_word[static_cast<std::size_t>(c * units + u)];
        std::uint8_t* out = chunk_idx + u * kUnit;
        with_depth(depth[c * units + u], [&](auto bits) {
          constexpr int kBits = decltype(bits)::value;
          if constexpr (kBits == 0) {
            for (std::int64_t r = r0; r < r1; ++r) std::memset(out + r * kp, 0, kUnit);
          } else {
            for (std::int64_t r = r0; r < r1; ++r)
              BitPack<kBits>::unpack(in + r, rows, out + r * kp);
          }
        });
      }
    }
  }
}

inline std::vector<std::uint8_t> unpack_layer(const LayerGeometry& g, const std::uint8_t* depth,
                                              const std::uint32_t* qweight, std::int64_t words) {
  const WordLayout layout(g, depth);
  RADIO_CHECK(words == layout.words, "qweight has ", words, " words but the depths need ",
              layout.words);
  std::vector<std::uint8_t> indices(static_cast<std::size_t>(g.out_features * g.padded_in()));
  unpack_layer(g, depth, qweight, indices.data(), layout);
  return indices;
}

// ---- Reference twins: one bit at a time, offsets recomputed by plain sums. ----

// Unit row: 32 indices of `depth` bits -> `depth` words (string bit i = bit i%32 of word i/32).
inline void pack_unit_ref(const std::uint8_t* idx, int depth, std::uint32_t* words) {
  for (int b = 0; b < depth; ++b) words[b] = 0;
  for (int j = 0; j < kUnit; ++j)
    for (int k = 0; k < depth; ++k)
      if ((idx[j] >> k) & 1) {
        const int bit = j * depth + k;
        words[bit / 32] |= 1u << (bit % 32);
      }
}

inline void unpack_unit_ref(const std::uint32_t* words, int depth, std::uint8_t* idx) {
  for (int j = 0; j < kUnit; ++j) {
    int v = 0;
    for (int k = 0; k < depth; ++k) {
      const int bit = j * depth + k;
      v |= static_cast<int>((words[bit / 32] >> (bit % 32)) & 1u) << k;
    }
    idx[j] = static_cast<std::uint8_t>(v);
  }
}

// Word index of word b of unit u for chunk row r of chunk c, straight from the formula of the
// spec: qweight[base[c] + (off[c, u] + b) * rows_c + r], with base and off as plain sums.
struct WordIndexRef {
  const LayerGeometry& g;
  std::vector<std::int64_t> base, off;  // base[c], off[c*U + u]

  WordIndexRef(const LayerGeometry& geometry, const std::uint8_t* depth) : g(geometry) {
    const std::int64_t units = g.units();
    base.assign(static_cast<std::size_t>(g.chunks()) + 1, 0);
    off.assign(static_cast<std::size_t>(g.chunks() * units), 0);
    for (std::int64_t c = 0; c < g.chunks(); ++c) {
      std::int64_t d_c = 0;
      for (std::int64_t u = 0; u < units; ++u) {
        off[static_cast<std::size_t>(c * units + u)] = d_c;
        d_c += depth[c * units + u];
      }
      base[static_cast<std::size_t>(c) + 1] = base[static_cast<std::size_t>(c)] + g.rows_in_chunk(c) * d_c;
    }
  }
  std::int64_t total() const { return base.back(); }
  std::int64_t operator()(std::int64_t c, std::int64_t u, int b, std::int64_t r) const {
    return base[static_cast<std::size_t>(c)] +
           (off[static_cast<std::size_t>(c * g.units() + u)] + b) * g.rows_in_chunk(c) + r;
  }
};

inline std::vector<std::uint32_t> pack_layer_ref(const LayerGeometry& g,
                                                 const std::uint8_t* depth,
                                                 const std::uint8_t* indices) {
  const WordIndexRef word_index(g, depth);
  std::vector<std::uint32_t> qweight(static_cast<std::size_t>(word_index.total()), 0u);
  const std::int64_t kp = g.padded_in();
  for (std::int64_t c = 0; c < g.chunks(); ++c)
    for (std::int64_t u = 0; u < g.units(); ++u) {
      const int d = depth[c * g.units() + u];
      for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r) {
        std::uint32_t words[kMaxDepth];
        pack_unit_ref(indices + (c * g.rows_per_group + r) * kp + u * kUnit, d, words);
        for (int b = 0; b < d; ++b)
          qweight[static_cast<std::size_t>(word_index(c, u, b, r))] = words[b];
      }
    }
  return qweight;
}

inline std::vector<std::uint8_t> unpack_layer_ref(const LayerGeometry& g,
                                                  const std::uint8_t* depth,
                                                  const std::vector<std::uint32_t>& qweight) {
  const WordIndexRef word_index(g, depth);
  const std::int64_t kp = g.padded_in();
  std::vector<std::uint8_t> indices(static_cast<std::size_t>(g.out_features * kp), 0);
  for (std::int64_t c = 0; c < g.chunks(); ++c)
    for (std::int64_t u = 0; u < g.units(); ++u) {
      const int d = depth[c * g.units() + u];
      for (std::int64_t r = 0; r < g.rows_in_chunk(c); ++r) {
        std::uint32_t words[kMaxDepth] = {};
        for (int b = 0; b < d; ++b)
          words[b] = qweight.at(static_cast<std::size_t>(word_index(c, u, b, r)));
        unpack_unit_ref(words, d, indices.data() + (c * g.rows_per_group + r) * kp + u * kUnit);
      }
    }
  return indices;
}

}  // namespace radio
