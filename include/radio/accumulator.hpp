// Streaming, mergeable statistics of the Radio distortion model (docs/method.md section 2):
//  - GroupStats: per-group mean squared gradient G^2 = (sum of squared gradients) / count;
//  - InputMean:  running mean of a layer's input, per input feature (for bias correction);
//  - group_spread(): each group's location (median or mean) and spread S^2 = mean((w - loc)^2).
// Calibration adds many small batches into large sums, and ranks/rounds are merged, so every sum
// is a double with Neumaier compensation: merging two accumulators gives what one accumulator fed
// all the data would have given, to rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "radio/config.hpp"
#include "radio/format.hpp"

namespace radio {

// Neumaier's compensated sum: `sum + compensation` carries about twice the precision of a double,
// so adding 1e8 then many values near 1 loses nothing that float64 input can express.
struct CompensatedSum {
  double sum = 0.0;
  double compensation = 0.0;

  void add(double x) {
    const double t = sum + x;
    // The smaller operand lost its low bits in `t`; recover them exactly.
    if (std::fabs(sum) >= std::fabs(x)) {
      compensation += (sum - t) + x;
    } else {
      compensation += (x - t) + sum;
    }
    sum = t;
  }
  void merge(const CompensatedSum& other) {
    add(other.sum);
    add(other.compensation);
  }
  double value() const { return sum + compensation; }
};

// Per-group running sums of squared gradients and sample counts. Group g's mean squared gradient
// is G^2[g] = sum[g] / count[g]; its scale is irrelevant to the solver (it is absorbed by V).
class GroupStats {
 public:
  explicit GroupStats(std::int64_t n_groups) {
    RADIO_CHECK(n_groups > 0, "GroupStats needs a positive number of groups, got ", n_groups);
    sums_.resize(static_cast<std::size_t>(n_groups));
    counts_.resize(static_cast<std::size_t>(n_groups));
  }

  std::int64_t size() const { return static_cast<std::int64_t>(sums_.size()); }

  // Adds one batch: `sum_sq_grad[g]` is the batch's sum of squared gradients over group g, and
  // the batch holds `count` samples for every group.
  void add(const double* sum_sq_grad, std::int64_t n, double count) {
    check_batch(sum_sq_grad, n);
    RADIO_CHECK(std::isfinite(count) && count >= 0, "count must be finite and >= 0, got ", count);
    for (std::size_t g = 0; g < sums_.size(); ++g) {
      sums_[g].add(sum_sq_grad[g]);
      counts_[g].add(count);
    }
  }
  // Same with a per-group count (groups seen by different numbers of samples).
  void add(const double* sum_sq_grad, std::int64_t n, const double* counts) {
    check_batch(sum_sq_grad, n);
    for (std::size_t g = 0; g < sums_.size(); ++g) {
      RADIO_CHECK(std::isfinite(counts[g]) && counts[g] >= 0, "count[", g,
                  "] must be finite and >= 0, got ", counts[g]);
    }
    for (std::size_t g = 0; g < sums_.size(); ++g) {
      sums_[g].add(sum_sq_grad[g]);
      counts_[g].add(counts[g]);
    }
  }

  void merge(const GroupStats& other) {
    RADIO_CHECK(other.size() == size(), "cannot merge GroupStats of ", other.size(),
                " groups into one of ", size(), " groups");
    for (std::size_t g = 0; g < sums_.size(); ++g) {
      sums_[g].merge(other.sums_[g]);
      counts_[g].merge(other.counts_[g]);
    }
  }

  // G^2 per group. A group that has seen no sample has no estimate: that is an error, not 0.
  std::vector<double> mean_sq_grad() const {
    std::vector<double> out(sums_.size());
    for (std::size_t g = 0; g < sums_.size(); ++g) {
      const double count = counts_[g].value();
      RADIO_CHECK(count > 0, "group ", g, " has no samples yet (count 0): add() data first");
      out[g] = sums_[g].value() / count;
    }
    return out;
  }

  // The whole state as 4 rows of n doubles (sum, sum compensation, count, count compensation),
  // so distributed runs can all-reduce it elementwise and rebuild with from_state().
  static constexpr int kStateRows = 4;
  std::vector<double> state() const {
    const std::size_t n = sums_.size();
    std::vector<double> out(kStateRows * n);
    for (std::size_t g = 0; g < n; ++g) {
      out[g] = sums_[g].sum;
      out[n + g] = sums_[g].compensation;
      out[2 * n + g] = counts_[g].sum;
      out[3 * n + g] = counts_[g].compensation;
    }
    return out;
  }
  static GroupStats from_state(const double* state, std::int64_t n_groups) {
    GroupStats stats(n_groups);
    const std::size_t n = static_cast<std::size_t>(n_groups);
    for (std::size_t i = 0; i < kStateRows * n; ++i) {
      RADIO_CHECK(std::isfinite(state[i]), "GroupStats state[", i / n, ", ", i % n, "] = ",
                  state[i], " is not finite");
    }
    for (std::size_t g = 0; g < n; ++g) {
      stats.sums_[g] = {state[g], state[n + g]};
      stats.counts_[g] = {state[2 * n + g], state[3 * n + g]};
      RADIO_CHECK(stats.sums_[g].value() >= 0 && stats.counts_[g].value() >= 0,
                  "GroupStats state for group ", g, " has a negative sum or count (sum ",
                  stats.sums_[g].value(), ", count ", stats.counts_[g].value(), ")");
    }
    return stats;
  }

 private:
  void check_batch(const double* sum_sq_grad, std::int64_t n) const {
    RADIO_CHECK(n == size(), "sum_sq_grad has ", n, " groups, expected ", size());
    for (std::int64_t g = 0; g < n; ++g) {
      RADIO_CHECK(std::isfinite(sum_sq_grad[g]) && sum_sq_grad[g] >= 0, "sum_sq_grad[", g,
                  "] = ", sum_sq_grad[g], " must be finite and >= 0");
    }
  }

  std::vector<CompensatedSum> sums_;
  std::vector<CompensatedSum> counts_;
};

// Running mean of a layer's input x (rows = tokens), per input feature: x_bar in the bias
// correction b <- b - (W_hat - W) x_bar.
class InputMean {
 public:
  explicit InputMean(std::int64_t in_features) {
    RADIO_CHECK(in_features > 0, "InputMean needs a positive feature count, got ", in_features);
    sums_.resize(static_cast<std::size_t>(in_features));
  }

  std::int64_t features() const { return static_cast<std::int64_t>(sums_.size()); }
  double count() const { return count_.value(); }

  // Adds `tokens` rows of a row-major [tokens, in_features] float32 array.
  void add(const float* x, std::int64_t tokens, std::int64_t in_features) {
    RADIO_CHECK(in_features == features(), "input has ", in_features, " features, expected ",
                features());
    RADIO_CHECK(tokens >= 0, "token count must be >= 0, got ", tokens);
    const std::size_t k = sums_.size();
    for (std::int64_t t = 0; t < tokens; ++t) {
      const float* row = x + static_cast<std::size_t>(t) * k;
      for (std::size_t j = 0; j < k; ++j) {
        RADIO_CHECK(std::isfinite(row[j]), "x[", t, ", ", j, "] = ", row[j], " is not finite");
        sums_[j].add(static_cast<double>(row[j]));
      }
    }
    count_.add(static_cast<double>(tokens));
  }

  void merge(const InputMean& other) {
    RADIO_CHECK(other.features() == features(), "cannot merge an InputMean of ",
                other.features(), " features into one of ", features());
    for (std::size_t j = 0; j < sums_.size(); ++j) sums_[j].merge(other.sums_[j]);
    count_.merge(other.count_);
  }

  std::vector<double> mean() const {
    RADIO_CHECK(count() > 0, "InputMean has no samples yet: add() data first");
    std::vector<double> out(sums_.size());
    for (std::size_t j = 0; j < sums_.size(); ++j) out[j] = sums_[j].value() / count();
    return out;
  }

 private:
  std::vector<CompensatedSum> sums_;
  CompensatedSum count_;
};

enum class Location : std::uint8_t { kMedian = 0, kMean = 1 };

inline Location parse_location(const std::string& name) {
  if (name == "median") return Location::kMedian;
  if (name == "mean") return Location::kMean;
  detail::fail("location must be \"median\" or \"mean\", got \"", name, "\"");
}

// Location and spread of every group of a layer. Output arrays are [C, K] row-major:
//   loc[c, k] = median (lower median for even counts, as docs/format.md's encoder) or mean of
//               column k over the rows of chunk c (rows row_perm[c*gs .. c*gs + rows_c));
//   s2[c, k]  = mean((w - loc[c, k])^2) about the float32 location that is returned.
// weight is row-major [N, K]; row_perm is a permutation of 0..N-1.
inline void group_spread(const float* weight, std::int64_t n, std::int64_t k,
                         const std::int32_t* row_perm, std::int64_t rows_per_group,
                         Location location, float* loc, float* s2) {
  const LayerGeometry geom(n, k, rows_per_group);
  {
    std::vector<char> seen(static_cast<std::size_t>(n), 0);
    for (std::int64_t p = 0; p < n; ++p) {
      const std::int64_t row = row_perm[p];
      RADIO_CHECK(row >= 0 && row < n, "row_perm[", p, "] = ", row, " is outside 0..", n - 1);
      RADIO_CHECK(!seen[static_cast<std::size_t>(row)], "row_perm[", p, "] = ", row,
                  " repeats an earlier entry; row_perm must be a permutation of 0..", n - 1);
      seen[static_cast<std::size_t>(row)] = 1;
    }
  }
  const std::size_t cols = static_cast<std::size_t>(k);
  // One chunk transposed to column-major, so each group is contiguous for nth_element.
  std::vector<float> block(static_cast<std::size_t>(geom.rows_in_chunk(0)) * cols);
  for (std::int64_t c = 0; c < geom.chunks(); ++c) {
    const std::int64_t rows = geom.rows_in_chunk(c);
    const std::size_t stride = static_cast<std::size_t>(rows);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t row = row_perm[c * rows_per_group + r];
      const float* src = weight + static_cast<std::size_t>(row) * cols;
      for (std::size_t j = 0; j < cols; ++j) {
        RADIO_CHECK(std::isfinite(src[j]), "weight[", row, ", ", j, "] = ", src[j],
                    " is not finite");
        block[j * stride + static_cast<std::size_t>(r)] = src[j];
      }
    }
    for (std::size_t j = 0; j < cols; ++j) {
      float* group = block.data() + j * stride;
      float center;
      if (location == Location::kMedian) {
        // Lower median: element (rows-1)/2 of the sorted group. Order does not matter for S^2.
        float* mid = group + (rows - 1) / 2;
        std::nth_element(group, mid, group + rows);
        center = *mid;
      } else {
        CompensatedSum total;
        for (std::int64_t r = 0; r < rows; ++r) total.add(static_cast<double>(group[r]));
        center = static_cast<float>(total.value() / static_cast<double>(rows));
      }
      CompensatedSum squares;
      for (std::int64_t r = 0; r < rows; ++r) {
        const double d = static_cast<double>(group[r]) - static_cast<double>(center);
        squares.add(d * d);
      }
      const std::size_t out = static_cast<std::size_t>(c) * cols + j;
      loc[out] = center;
      // A constant group has every deviation exactly 0, so S^2 = 0 exactly, never NaN.
      s2[out] = static_cast<float>(squares.value() / static_cast<double>(rows));
    }
  }
}

}  // namespace radio
