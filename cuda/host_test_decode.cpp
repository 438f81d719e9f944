// Host check of decode.cuh: for every depth, pack random indices of a 16-row unit exactly as
// docs/format.md says, let each of the 32 emulated lanes build its windows and A fragments the
// way qlinear_kernel.cuh does (same loads, same clamping, same extraction), feed them with
// B fragments taken from the staged x layout into an emulated mma.m16n8k16 (element ownership as
// in the PTX ISA), and compare with the plain sum over positions. Integer arithmetic throughout,
// so the comparison is exact. Exit code 0 = pass.
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "decode.cuh"

using radio::cuda::Window;
using radio::cuda::lane_bit_offset;
using radio::cuda::lane_first_word;
using radio::cuda::lane_words;

namespace {

constexpr int kRows = 16;
constexpr int kTokens = 8;

// words[b * rows + r]: word b of row r for one unit (format: bit i of the row's string is bit
// i % 32 of word i / 32, index j at bits [jB, jB + B)).
std::vector<std::uint32_t> pack_unit(const std::vector<std::vector<int>>& q, int depth) {
  std::vector<std::uint32_t> words(static_cast<std::size_t>(depth) * kRows, 0u);
  for (int r = 0; r < kRows; ++r)
    for (int j = 0; j < 32; ++j)
      for (int bit = 0; bit < depth; ++bit)
        if ((q[r][j] >> bit) & 1) {
          const int i = j * depth + bit;
          words[static_cast<std::size_t>(i / 32) * kRows + r] |= 1u << (i % 32);
        }
  return words;
}

template <int kB>
Window<kB> lane_window(const std::vector<std::uint32_t>& words, int row, int t) {
  constexpr int kW = lane_words(kB);
  std::uint32_t w[kW];
  for (int i = 0; i < kW; ++i) {
    int idx = lane_first_word(kB, t) + i;
    if (idx > kB - 1) idx = kB - 1;  // the kernel's clamp
    w[i] = words[static_cast<std::size_t>(idx) * kRows + row];
  }
  return Window<kB>::make(w, lane_bit_offset(kB, t));
}

// The kernel's a_fragment: register i = index pair (4s + (0,0,2,2)[i], +1) of rows (g,g+8,g,g+8)[i].
template <int kB, int kS>
void a_fragment(int (&a)[4][2], const Window<kB>& wa, const Window<kB>& wb) {
  a[0][0] = static_cast<int>(wa.template index<4 * kS>());
  a[0][1] = static_cast<int>(wa.template index<4 * kS + 1>());
  a[1][0] = static_cast<int>(wb.template index<4 * kS>());
  a[1][1] = static_cast<int>(wb.template index<4 * kS + 1>());
  a[2][0] = static_cast<int>(wa.template index<4 * kS + 2>());
  a[2][1] = static_cast<int>(wa.template index<4 * kS + 3>());
  a[3][0] = static_cast<int>(wb.template index<4 * kS + 2>());
  a[3][1] = static_cast<int>(wb.template index<4 * kS + 3>());
}

template <int kB>
int check_depth(std::mt19937& rng) {
  std::uniform_int_distribution<int> qd(0, (1 << kB) - 1), xd(-50, 50);
  std::vector<std::vector<int>> q(kRows, std::vector<int>(32));
  for (auto& row : q)
    for (auto& v : row) v = qd(rng);
  int xs[kTokens][32];  // staged x * scale, natural position order
  for (auto& row : xs)
    for (auto& v : row) v = xd(rng);
  const std::vector<std::uint32_t> words = pack_unit(q, kB);

  long long c[kRows][kTokens] = {};
  int failures = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const Window<kB> wa = lane_window<kB>(words, g, t);
    const Window<kB> wb = lane_window<kB>(words, g + 8, t);
    // windows hold exactly the lane's positions 8t .. 8t+7
    for (int i = 0; i < 8; ++i) {
      const std::uint32_t got[8] = {wa.template index<0>(), wa.template index<1>(),
                                    wa.template index<2>(), wa.template index<3>(),
                                    wa.template index<4>(), wa.template index<5>(),
                                    wa.template index<6>(), wa.template index<7>()};
      if (static_cast<int>(got[i]) != q[g][8 * t + i]) {
        if (failures++ < 5)
          std::printf("B=%d lane %d row %d: window index %d = %u, expected %d\n", kB, lane, g, i,
                      got[i], q[g][8 * t + i]);
      }
    }
    (void)wb;
  }
  // Emulated mma over the two k-steps: C[row][tok] += sum_kk A[row][kk] * B[kk][tok], with A and
  // B assembled from the per-lane registers according to the PTX ownership rules.
  for (int s = 0; s < 2; ++s) {
    int a_mat[kRows][16] = {}, b_mat[16][kTokens] = {};
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      const Window<kB> wa = lane_window<kB>(words, g, t);
      const Window<kB> wb = lane_window<kB>(words, g + 8, t);
      int a[4][2];
      if (s == 0) a_fragment<kB, 0>(a, wa, wb); else a_fragment<kB, 1>(a, wa, wb);
      for (int reg = 0; reg < 4; ++reg)
        for (int h = 0; h < 2; ++h)
          a_mat[radio::cuda::fragment_row(g, reg)][radio::cuda::mma_a_col(t, reg, h)] = a[reg][h];
      // B registers: one 16-byte load of positions 8t..8t+7 of token g; k-step s uses
      // registers 2s (b0) and 2s+1 (b1); register r holds positions 8t + 2r, 8t + 2r + 1.
      for (int j = 0; j < 2; ++j)
        for (int h = 0; h < 2; ++h)
          b_mat[radio::cuda::mma_b_row(t, j, h)][g] = xs[g][8 * t + 2 * (2 * s + j) + h];
    }
    for (int r = 0; r < kRows; ++r)
      for (int n = 0; n < kTokens; ++n)
        for (int kk = 0; kk < 16; ++kk) c[r][n] += static_cast<long long>(a_mat[r][kk]) * b_mat[kk][n];
  }
  for (int r = 0; r < kRows; ++r)
    for (int n = 0; n < kTokens; ++n) {
      long long want = 0;
      for (int j = 0; j < 32; ++j) want += static_cast<long long>(q[r][j]) * xs[n][j];
      if (want != c[r][n] && failures++ < 10)
        std::printf("B=%d row %d token %d: mma %lld, expected %lld\n", kB, r, n, c[r][n], want);
    }
  // fragment_position agrees with the B layout used above
  for (int t = 0; t < 4; ++t)
    for (int s = 0; s < 2; ++s)
      for (int reg = 0; reg < 4; ++reg)
        for (int h = 0; h < 2; ++h) {
          const int pos = radio::cuda::fragment_position(t, s, reg, h);
          const int j = reg >= 2 ? 1 : 0;
          if (pos != 8 * t + 2 * (2 * s + j) + h && failures++ < 10)
            std::printf("fragment_position(%d,%d,%d,%d) = %d\n", t, s, reg, h, pos);
        }
  return failures;
}

// unit_index, unit_index_x4 and unit_pair_offset (the GEMV and dequantize kernels'
// per-row decode) read back every index of a packed row, for all 32 positions.
template <int kB, int... kJs>
int check_row_decode(std::mt19937& rng, std::integer_sequence<int, kJs...>) {
  std::uniform_int_distribution<int> pick(0, (1 << kB) - 1);
  std::vector<std::vector<int>> q(kRows, std::vector<int>(32));
  for (auto& row : q)
    for (int& v : row) v = pick(rng);
  const std::vector<std::uint32_t> words = pack_unit(q, kB);
  int failures = 0;
  for (int r = 0; r < kRows; ++r) {
    std::uint32_t w[kB];
    for (int b = 0; b < kB; ++b) w[b] = words[static_cast<std::size_t>(b) * kRows + r];
    const std::uint32_t got[] = {radio::cuda::unit_index<kB, kJs>(w)...};
    const std::uint32_t got4[] = {radio::cuda::unit_index_x4<kB, kJs>(w)...};
    if constexpr (kB <= 3) {
      for (std::uint32_t lane = 0; lane < 32; lane += 7) {
        const std::uint32_t pairs[] = {
            (kJs % 2 == 0 ? radio::cuda::unit_pair_offset<kB, kJs - kJs % 2>(w, 4 * lane) : 0u)...};
        for (int j = 0; j < 32; j += 2) {
          const std::uint32_t want = 128u * static_cast<std::uint32_t>(q[r][j] | (q[r][j + 1] << kB)) | 4u * lane;
          if (pairs[j] != want && failures++ < 10)
            std::printf("B=%d row %d pair %d lane %u: offset %u, expected %u\n", kB, r, j, lane,
                        pairs[j], want);
        }
      }
    }
    for (int j = 0; j < 32; ++j)
      if ((got[j] != static_cast<std::uint32_t>(q[r][j]) ||
           got4[j] != 4u * static_cast<std::uint32_t>(q[r][j])) && failures++ < 10)
        std::printf("B=%d row %d position %d: unit_index %u, x4 %u, expected %d\n", kB, r, j,
                    got[j], got4[j], q[r][j]);
  }
  return failures;
}

template <int... kBs>
int check_all(std::mt19937& rng, std::integer_sequence<int, kBs...>) {
  int failures = 0;
  for (int rep = 0; rep < 20; ++rep) {
    ((failures += check_depth<kBs + 1>(rng)), ...);
    ((failures += check_row_decode<kBs + 1>(rng, std::make_integer_sequence<int, 32>{})), ...);
  }
  return failures;
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  const int failures = check_all(rng, std::make_integer_sequence<int, 8>{});
  std::printf("%s: decode mapping and row decode, depths 1..8, 20 random units each (%d failures)\n",
              failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
