// Global bit allocation (docs/method.md section 3): one integer depth B_u in 0..max_depth for
// every unit u of every layer at once.
//
// Model. Unit u has modelled distortion coef[u] * 2^(-2B) and costs weight[u] * B index bits
// (weight = rows_c * 32, rate.hpp). Minimising sum_u coef_u 2^(-2B_u) + V sum_u weight_u B_u
// gives the closed form B_u(V) = clamp(1/2 log2(2 ln2 * r_u / V), 0, max_depth), r_u =
// coef_u / weight_u, integerised by the R-D threshold (round up iff the fraction exceeds 0.4431:
// the higher integer then has the lower Lagrangian cost) or to nearest (closed_form_depth()).
//
// What allocate() returns. Raising unit u from depth b-1 to b is an *increment* that saves
// coef_u * (3/4) 4^(1-b) distortion for weight_u bits; its key r_u * 4^(1-b) is proportional to
// that saving per bit. Both rounding rules say B_u(V) >= b iff r_u > V * kappa * 4^(b-1)
// (kappa = 4/3 for "rd", 1/ln2 for "nearest"), i.e. iff the key exceeds t = kappa * V. So every
// closed-form allocation is a prefix of the list of all increments sorted by key (descending; ties
// by unit index), and between two such prefixes the greedy fill by distortion per bit walks the
// same list. The result is therefore one prefix of that list:
//   - rate targets: the longest prefix whose index bits fit the budget (the achieved rate is below
//     the target by less than the weight of the first increment left out);
//   - distortion target: the shortest prefix whose modelled distortion is <= the target.
// With equal weights this is the exact optimum (separable convex allocation). Because a rounding
// rule only rescales V (t = kappa * V), it changes the reported log2_V, never the depths.
//
// Speed (about 25 million units in well under a second on one core): no log2 per unit. One pass
// builds a histogram of r over the float bit pattern (monotone for positive floats); it bounds the
// rate and distortion at any t, so bisection on log2 t brackets the answer to one histogram bin
// per depth. One exact pass then compares r with the 8 thresholds t * 4^(b-1) of each end of the
// bracket; only increments inside the bracket are sorted and filled. allocate_reference() is the
// plain twin (bisection with the per-unit log2 formula) that tests compare with.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "radio/accumulator.hpp"
#include "radio/config.hpp"
#include "radio/format.hpp"

namespace radio {

enum class Rounding : std::uint8_t { kRateDistortion = 0, kNearest = 1 };

inline Rounding parse_rounding(const std::string& name) {
  if (name == "rd") return Rounding::kRateDistortion;
  if (name == "nearest") return Rounding::kNearest;
  detail::fail("rounding must be \"rd\" or \"nearest\", got \"", name, "\"");
}

enum class TargetKind : std::uint8_t {
  kBitsPerWeight = 0,       // all-in: (index bits + side bits) / total weights
  kIndexBitsPerWeight = 1,  // index bits / total weights (the paper's R)
  kTotalBytes = 2,          // (index bits + side bits) / 8
  kDistortion = 3,          // modelled distortion sum_u coef_u 2^(-2 B_u)
};

inline const char* target_name(TargetKind kind) {
  switch (kind) {
    case TargetKind::kBitsPerWeight: return "target_bits";
    case TargetKind::kIndexBitsPerWeight: return "target_index_bits";
    case TargetKind::kTotalBytes: return "target_bytes";
    case TargetKind::kDistortion: return "target_distortion";
  }
  return "target";
}

inline const char* target_unit(TargetKind kind) {
  switch (kind) {
    case TargetKind::kBitsPerWeight: return "bits per weight (index + side information)";
    case TargetKind::kIndexBitsPerWeight: return "index bits per weight";
    case TargetKind::kTotalBytes: return "bytes (index + side information)";
    case TargetKind::kDistortion: return "modelled distortion";
  }
  return "";
}

struct AllocationTarget {
  TargetKind kind = TargetKind::kBitsPerWeight;
  double value = 0.0;
};

// The units to allocate: views of caller-owned arrays of length `units`.
struct AllocationProblem {
  const double* coef = nullptr;    // >= 0, finite; 0 means "never needs bits"
  const double* weight = nullptr;  // > 0, finite: index bits per bit of depth
  std::int64_t units = 0;
  double side_bits = 0.0;      // bits of side information, counted in all-in targets
  double total_weights = 0.0;  // denominator of bits per weight; 0: the sum of `weight`
  int max_depth = kMaxDepth;   // 1..8
  Rounding rounding = Rounding::kRateDistortion;
};

struct AllocationReport {
  int iterations = 0;           // bisection steps on log2 V
  int exact_passes = 0;         // full passes comparing every unit with the thresholds
  std::int64_t candidates = 0;  // increments inside the final bracket (sorted and filled)
  std::int64_t greedy_steps = 0;  // of those, increments taken by the fill
  double log2_V = 0.0;  // log2 of the slope at the boundary: the first increment left out
  double index_bits = 0.0;
  double total_bits = 0.0;  // index_bits + side_bits
  double bits_per_weight = 0.0;
  double index_bits_per_weight = 0.0;
  double distortion = 0.0;
  double reachable_min = 0.0;  // reachable range of the target, in its own unit
  double reachable_max = 0.0;
};

namespace detail {

inline constexpr double kLn2 = 0.69314718055994530942;

// B >= b iff coef/weight > V * kappa * 4^(b-1) (see the file comment).
inline double rounding_kappa(Rounding rounding) {
  return rounding == Rounding::kRateDistortion ? 4.0 / 3.0 : 1.0 / kLn2;
}

inline std::string format_number(double x) {
  std::ostringstream out;
  out.precision(10);
  out << x;
  return out.str();
}

// Raising `unit` to `depth`; key = r * 4^(1-depth) (exact power-of-two scaling).
struct Increment {
  double key;
  std::int64_t unit;
  int depth;
};
inline bool comes_first(const Increment& a, const Increment& b) {
  if (a.key != b.key) return a.key > b.key;
  if (a.unit != b.unit) return a.unit < b.unit;
  return a.depth < b.depth;
}
inline double increment_key(double r, int depth) { return std::ldexp(r, -2 * (depth - 1)); }
// Distortion saved by raising a unit of coefficient c from depth-1 to depth: c * 3 * 4^(-depth).
inline double increment_saving(double c, int depth) { return std::ldexp(3.0 * c, -2 * depth); }
inline double distortion_at(double c, int depth) { return std::ldexp(c, -2 * depth); }

inline void check_unit(const AllocationProblem& p, std::int64_t u) {
  const double c = p.coef[u];
  const double w = p.weight[u];
  RADIO_CHECK(std::isfinite(c) && c >= 0, "coef[", u, "] = ", c, " must be finite and >= 0");
  RADIO_CHECK(std::isfinite(w) && w > 0, "weight[", u, "] = ", w, " must be finite and > 0");
  RADIO_CHECK(std::isfinite(c / w), "coef[", u, "] / weight[", u, "] = ", c, " / ", w,
              " overflows a double");
}

inline void check_problem(const AllocationProblem& p) {
  RADIO_CHECK(p.units > 0, "there must be at least one unit to allocate, got ", p.units);
  RADIO_CHECK(p.coef != nullptr && p.weight != nullptr, "coef and weight must not be null");
  RADIO_CHECK(p.max_depth >= 1 && p.max_depth <= kMaxDepth, "max_depth must be in 1..", kMaxDepth,
              ", got ", p.max_depth);
  RADIO_CHECK(std::isfinite(p.side_bits) && p.side_bits >= 0,
              "side_bits must be finite and >= 0, got ", p.side_bits);
  RADIO_CHECK(std::isfinite(p.total_weights) && p.total_weights >= 0,
              "total_weights must be finite and > 0 (or 0 for the sum of weights), got ",
              p.total_weights);
}

// Sums over the units that the target needs.
struct UnitTotals {
  double weight_sum = 0.0;           // all units
  double positive_weight_sum = 0.0;  // units with coef > 0 (the only ones that get bits)
  double coef_sum = 0.0;             // compensated
  double r_max = 0.0;                // largest coef/weight
  double r_min_positive = std::numeric_limits<double>::infinity();
  std::int64_t positive_units = 0;
};

// The target turned into an index-bit budget or a distortion bound; throws when unreachable.
struct ResolvedTarget {
  bool is_distortion = false;
  double index_budget = 0.0;  // rate targets: index bits allowed
  double distortion = 0.0;    // distortion target
  double total_weights = 0.0;
  double full_index_bits = 0.0;  // every unit with coef > 0 at max_depth
  double reachable_min = 0.0;
  double reachable_max = 0.0;
};

inline ResolvedTarget resolve_target(const AllocationProblem& p, const AllocationTarget& target,
                                     const UnitTotals& totals) {
  const double value = target.value;
  const char* name = target_name(target.kind);
  RADIO_CHECK(std::isfinite(value), name, " = ", value, " must be finite");
  ResolvedTarget out;
  out.total_weights = p.total_weights > 0 ? p.total_weights : totals.weight_sum;
  out.full_index_bits = p.max_depth * totals.positive_weight_sum;
  const double tw = out.total_weights;
  const double side = p.side_bits;
  const double full = out.full_index_bits;
  switch (target.kind) {
    case TargetKind::kBitsPerWeight:
      out.reachable_min = side / tw;
      out.reachable_max = (side + full) / tw;
      out.index_budget = value * tw - side;
      break;
    case TargetKind::kIndexBitsPerWeight:
      out.reachable_min = 0.0;
      out.reachable_max = full / tw;
      out.index_budget = value * tw;
      break;
    case TargetKind::kTotalBytes:
      out.reachable_min = side / 8.0;
      out.reachable_max = (side + full) / 8.0;
      out.index_budget = 8.0 * value - side;
      break;
    case TargetKind::kDistortion:
      out.is_distortion = true;
      out.reachable_min = std::ldexp(totals.coef_sum, -2 * p.max_depth);
      out.reachable_max = totals.coef_sum;
      out.distortion = value;
      break;
  }
  const std::string range = "[" + format_number(out.reachable_min) + ", " +
                            format_number(out.reachable_max) + "] " + target_unit(target.kind);
  if (out.is_distortion) {
    RADIO_CHECK(value >= out.reachable_min, name, " = ", format_number(value),
                " is not reachable: it is below the distortion with every unit at max_depth ",
                p.max_depth, "; the reachable range is ", range);
    return out;
  }
  // A relative slack of 1e-12 forgives the rounding of value * total_weights.
  const double slack = 1e-12 * std::max(std::fabs(out.reachable_max), 1.0);
  RADIO_CHECK(value >= out.reachable_min - slack, name, " = ", format_number(value),
              " is not reachable: the side information alone costs ",
              format_number(out.reachable_min), "; the reachable range is ", range);
  RADIO_CHECK(value <= out.reachable_max + slack, name, " = ", format_number(value),
              " is not reachable: it is above every unit with coef > 0 at max_depth ",
              p.max_depth, "; the reachable range is ", range);
  out.index_budget = std::min(std::max(out.index_budget, 0.0), full);
  return out;
}

// Totals of depths, common to both implementations.
inline void fill_report_rates(const AllocationProblem& p, const ResolvedTarget& rt,
                              double index_bits, double distortion, AllocationReport& report) {
  report.index_bits = index_bits;
  report.total_bits = index_bits + p.side_bits;
  report.bits_per_weight = report.total_bits / rt.total_weights;
  report.index_bits_per_weight = index_bits / rt.total_weights;
  report.distortion = distortion;
  report.reachable_min = rt.reachable_min;
  report.reachable_max = rt.reachable_max;
}

// Largest key among increments not taken (the boundary slope), by one scan of the depths; used
// when the sorted candidates do not contain it. Returns 0 when every increment was taken.
inline double first_left_out_key(const AllocationProblem& p, const std::uint8_t* depth) {
  double best = 0.0;
  for (std::int64_t u = 0; u < p.units; ++u) {
    if (p.coef[u] > 0 && depth[u] < p.max_depth) {
      best = std::max(best, increment_key(p.coef[u] / p.weight[u], depth[u] + 1));
    }
  }
  return best;
}
// Smallest key among increments taken; used when all of them were taken.
inline double last_taken_key(const AllocationProblem& p, const std::uint8_t* depth) {
  double best = std::numeric_limits<double>::infinity();
  for (std::int64_t u = 0; u < p.units; ++u) {
    if (depth[u] > 0) best = std::min(best, increment_key(p.coef[u] / p.weight[u], depth[u]));
  }
  return best;
}

inline double log2_v_of_key(double key, Rounding rounding) {
  return std::log2(key) - std::log2(rounding_kappa(rounding));
}

// Histogram of r = coef/weight over the top bits of its float pattern. For positive floats the
// bit pattern is monotone in the value, so bin(r) > bin(x) implies r > x and bin(r) < bin(x)
// implies r < x: only units in the bin of a threshold are undecided.
struct RatioHistogram {
  static constexpr int kShift = 15;  // 8 exponent + 8 mantissa bits: bins 2^-8 wide (relative)
  static constexpr std::size_t kBins = (std::size_t{0x7F800000u} >> kShift) + 1;  // up to +inf

  std::vector<double> weight_above;  // [kBins + 1]: weight of units in bins >= i
  std::vector<double> coef_above;    // same for coef (only for distortion targets)

  static std::size_t bin(double x) {
    // Clamp first: converting a double above FLT_MAX to float is undefined behaviour.
    const float f = static_cast<float>(std::min(x, static_cast<double>(FLT_MAX)));
    std::uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits >> kShift;
  }
};

// Bounds on the index bits and the distortion of the closed-form allocation at slope t (keys > t
// taken), from the histogram alone.
struct HistogramBounds {
  const RatioHistogram& hist;
  int max_depth;
  double coef_total;

  // Thresholds t * 4^(b-1) for b = 1..max_depth, as bins.
  template <typename Fn>
  void for_each_threshold_bin(double t, Fn&& fn) const {
    for (int b = 1; b <= max_depth; ++b) fn(b, RatioHistogram::bin(std::ldexp(t, 2 * (b - 1))));
  }
  double rate_upper(double t) const {  // undecided units counted as above their threshold
    double sum = 0.0;
    for_each_threshold_bin(t, [&](int, std::size_t i) { sum += hist.weight_above[i]; });
    return sum;
  }
  double rate_lower(double t) const {
    double sum = 0.0;
    for_each_threshold_bin(t, [&](int, std::size_t i) { sum += hist.weight_above[i + 1]; });
    return sum;
  }
  // D = sum_u c_u 4^(-B_u) = C - sum_b 3 * 4^(-b) * (coef of units with B_u >= b).
  double distortion_lower(double t) const {
    double saved = 0.0;
    for_each_threshold_bin(t, [&](int b, std::size_t i) {
      saved += std::ldexp(3.0 * hist.coef_above[i], -2 * b);
    });
    return coef_total - saved;
  }
  double distortion_upper(double t) const {
    double saved = 0.0;
    for_each_threshold_bin(t, [&](int b, std::size_t i) {
      saved += std::ldexp(3.0 * hist.coef_above[i + 1], -2 * b);
    });
    return coef_total - saved;
  }
};

// Pass 1: validates every unit, sums the totals and fills the histogram.
inline UnitTotals scan_units(const AllocationProblem& p, bool need_coef_histogram,
                             RatioHistogram& hist) {
  UnitTotals totals;
  std::vector<double> weight_in(RatioHistogram::kBins + 1, 0.0);
  std::vector<double> coef_in(need_coef_histogram ? RatioHistogram::kBins + 1 : 0, 0.0);
  CompensatedSum coef_sum;
  for (std::int64_t u = 0; u < p.units; ++u) {
    const double c = p.coef[u];
    const double w = p.weight[u];
    if (!(c >= 0 && c <= DBL_MAX && w > 0 && w <= DBL_MAX && c / w <= DBL_MAX)) {
      check_unit(p, u);  // throws with the message naming u
    }
    totals.weight_sum += w;
    if (c == 0) continue;
    const double r = c / w;
    totals.positive_weight_sum += w;
    ++totals.positive_units;
    coef_sum.add(c);
    totals.r_max = std::max(totals.r_max, r);
    totals.r_min_positive = std::min(totals.r_min_positive, r);
    const std::size_t i = RatioHistogram::bin(r);
    weight_in[i] += w;
    if (need_coef_histogram) coef_in[i] += c;
  }
  totals.coef_sum = coef_sum.value();
  // Suffix sums: entry i = total of bins >= i.
  for (std::size_t i = RatioHistogram::kBins; i-- > 0;) weight_in[i] += weight_in[i + 1];
  for (std::size_t i = coef_in.size(); i-- > 1;) coef_in[i - 1] += coef_in[i];
  hist.weight_above = std::move(weight_in);
  hist.coef_above = std::move(coef_in);
  return totals;
}

// What one exact pass found for the bracket (t_low, t_base].
struct ExactPass {
  double base_index_bits = 0.0;    // allocation with keys > t_base
  CompensatedSum base_distortion;
  double candidate_weight = 0.0;   // increments with keys in (t_low, t_base]
  CompensatedSum candidate_saving;
  std::vector<Increment> candidates;
};

// Pass 2: depth[u] = number of keys of u above t_base; collects the increments in the bracket.
// kMaxDepth fixes the number of threshold comparisons per unit at compile time.
template <int kMaxDepth>
ExactPass exact_pass(const AllocationProblem& p, double t_base, double t_low,
                     std::uint8_t* depth) {
  double above[kMaxDepth];     // r > above[b]  <=>  key of increment b+1 > t_base
  double low[kMaxDepth + 1];   // r > low[b]    <=>  key of increment b+1 > t_low
  for (int b = 0; b < kMaxDepth; ++b) {
    above[b] = std::ldexp(t_base, 2 * b);
    low[b] = std::ldexp(t_low, 2 * b);
  }
  low[kMaxDepth] = std::numeric_limits<double>::infinity();  // nothing above max depth
  double pow4[kMaxDepth + 1];
  for (int b = 0; b <= kMaxDepth; ++b) pow4[b] = std::ldexp(1.0, -2 * b);

  ExactPass out;
  for (std::int64_t u = 0; u < p.units; ++u) {
    const double c = p.coef[u];
    const double w = p.weight[u];
    const double r = c / w;
    int d = 0;
    for (int b = 0; b < kMaxDepth; ++b) d += r > above[b] ? 1 : 0;
    depth[u] = static_cast<std::uint8_t>(d);
    out.base_index_bits += w * d;
    out.base_distortion.add(c * pow4[d]);
    if (r > low[d]) {  // rare: u has increments inside the bracket
      for (int b = d; r > low[b]; ++b) {
        out.candidates.push_back({increment_key(r, b + 1), u, b + 1});
        out.candidate_weight += w;
        out.candidate_saving.add(increment_saving(c, b + 1));
      }
    }
  }
  return out;
}

// The one place where the runtime max_depth becomes a compile-time constant.
template <typename Fn>
decltype(auto) dispatch_max_depth(int max_depth, Fn&& fn) {
  switch (max_depth) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    default: fail("max_depth must be in 1..", kMaxDepth, ", got ", max_depth);
  }
}

// Bisection on x = log2 t of a predicate that is false at lo and true at hi (monotone in t);
// returns the final (lo, hi). Stops at a width of 1e-9 in log2 t, far below one histogram bin.
template <typename Pred>
std::pair<double, double> bisect_log2(double lo, double hi, Pred&& pred, int& iterations) {
  while (hi - lo > 1e-9 && iterations < 1000) {
    const double mid = 0.5 * (lo + hi);
    if (pred(std::exp2(mid))) {
      hi = mid;
    } else {
      lo = mid;
    }
    ++iterations;
  }
  return {lo, hi};
}

}  // namespace detail

// The closed form for one unit at multiplier V (the per-unit formula of the file comment).
inline int closed_form_depth(double coef, double weight, double V, Rounding rounding,
                             int max_depth) {
  if (!(coef > 0)) return 0;
  const double b_star = 0.5 * std::log2(2.0 * detail::kLn2 * (coef / weight) / V);
  if (!(b_star > 0)) return 0;
  if (b_star >= max_depth) return max_depth;
  const double whole = std::floor(b_star);
  const double fraction = b_star - whole;
  // 0.4431 = 1/2 log2(8 ln2 / 3): above it the higher integer has the lower Lagrangian cost.
  const bool up = rounding == Rounding::kRateDistortion
                      ? fraction > 0.5 * std::log2(8.0 * detail::kLn2 / 3.0)
                      : fraction >= 0.5;
  return std::min(static_cast<int>(whole) + (up ? 1 : 0), max_depth);
}

// Fast allocation (see the file comment). Writes p.units depths; returns the report.
inline AllocationReport allocate(const AllocationProblem& p, const AllocationTarget& target,
                                 std::uint8_t* depth) {
  detail::check_problem(p);
  RADIO_CHECK(depth != nullptr, "depth output must not be null");
  const bool is_distortion = target.kind == TargetKind::kDistortion;
  detail::RatioHistogram hist;
  const detail::UnitTotals totals = detail::scan_units(p, is_distortion, hist);
  const detail::ResolvedTarget rt = detail::resolve_target(p, target, totals);
  AllocationReport report;

  // Ends of the answer: every unit at 0 or every unit with coef > 0 at max_depth.
  const bool all_zero = totals.positive_units == 0 ||
                        (is_distortion && rt.distortion >= totals.coef_sum);
  const bool all_full = !is_distortion && rt.index_budget >= rt.full_index_bits;
  if (all_zero || all_full) {
    for (std::int64_t u = 0; u < p.units; ++u) {
      depth[u] = static_cast<std::uint8_t>(all_full && p.coef[u] > 0 ? p.max_depth : 0);
    }
    const double d = all_full ? std::ldexp(totals.coef_sum, -2 * p.max_depth) : totals.coef_sum;
    detail::fill_report_rates(p, rt, all_full ? rt.full_index_bits : 0.0, d, report);
    if (totals.positive_units > 0) {
      report.log2_V = detail::log2_v_of_key(
          all_full ? detail::last_taken_key(p, depth) : totals.r_max, p.rounding);
    }
    return report;
  }

  // Bracket t from the histogram. keys lie in [r_min * 4^(1-max_depth), r_max].
  const detail::HistogramBounds bounds{hist, p.max_depth, totals.coef_sum};
  const double x_min = std::log2(totals.r_min_positive) - 2.0 * (p.max_depth - 1) - 1.0;
  const double x_max = std::log2(totals.r_max) + 1.0;
  double x_base, x_low;  // keys > 2^x_base: the base allocation; (2^x_low, 2^x_base]: candidates
  if (!is_distortion) {
    const double budget = rt.index_budget;
    // Smallest t whose rate is surely within budget, largest t whose rate surely exceeds it.
    x_base = detail::bisect_log2(x_min, x_max, [&](double t) {
      return bounds.rate_upper(t) <= budget; }, report.iterations).second;
    x_low = detail::bisect_log2(x_min, x_max, [&](double t) {
      return bounds.rate_lower(t) <= budget; }, report.iterations).first;
  } else {
    const double bound = rt.distortion;
    // Base: t surely above the target distortion; low end: t surely within it.
    x_base = detail::bisect_log2(x_min, x_max, [&](double t) {
      return bounds.distortion_lower(t) > bound; }, report.iterations).second;
    x_low = detail::bisect_log2(x_min, x_max, [&](double t) {
      return bounds.distortion_upper(t) > bound; }, report.iterations).first;
  }
  x_low = std::min(x_low, x_base);

  // Exact pass; the histogram sums are rounded, so check the bracket and widen it if needed.
  detail::ExactPass pass;
  for (;;) {
    const double t_base = std::exp2(x_base);
    const double t_low = std::exp2(x_low);
    pass = detail::dispatch_max_depth(p.max_depth, [&](auto depth_constant) {
      return detail::exact_pass<decltype(depth_constant)::value>(p, t_base, t_low, depth);
    });
    ++report.exact_passes;
    bool base_ok, low_ok;
    if (!is_distortion) {
      base_ok = pass.base_index_bits <= rt.index_budget;
      low_ok = pass.base_index_bits + pass.candidate_weight > rt.index_budget;
    } else {
      CompensatedSum low_distortion = pass.base_distortion;
      low_distortion.add(-pass.candidate_saving.value());
      base_ok = pass.base_distortion.value() > rt.distortion;
      low_ok = low_distortion.value() <= rt.distortion;
    }
    // Past x_max nothing is taken; below x_min everything is: there the checks cannot fail.
    if ((base_ok || x_base > x_max) && (low_ok || x_low < x_min)) break;
    if (!base_ok) x_base += 2.0;
    if (!low_ok) x_low -= 2.0;
  }

  // Walk the sorted candidates: the prefix rule of the file comment.
  std::sort(pass.candidates.begin(), pass.candidates.end(), detail::comes_first);
  report.candidates = static_cast<std::int64_t>(pass.candidates.size());
  double index_bits = pass.base_index_bits;
  CompensatedSum distortion = pass.base_distortion;
  std::size_t taken = 0;
  for (; taken < pass.candidates.size(); ++taken) {
    const detail::Increment& inc = pass.candidates[taken];
    const double w = p.weight[inc.unit];
    if (!is_distortion ? index_bits + w > rt.index_budget : distortion.value() <= rt.distortion) {
      break;
    }
    depth[inc.unit] = static_cast<std::uint8_t>(inc.depth);
    index_bits += w;
    distortion.add(-detail::increment_saving(p.coef[inc.unit], inc.depth));
  }
  report.greedy_steps = static_cast<std::int64_t>(taken);
  const double boundary_key = taken < pass.candidates.size()
                                  ? pass.candidates[taken].key
                                  : detail::first_left_out_key(p, depth);
  report.log2_V = detail::log2_v_of_key(
      boundary_key > 0 ? boundary_key : detail::last_taken_key(p, depth), p.rounding);
  detail::fill_report_rates(p, rt, index_bits, distortion.value(), report);
  return report;
}

// The simple reference twin: validation loop, bisection on log2 V with the per-unit closed form
// (closed_form_depth, one log2 per unit per step), then the same prefix rule on the increments
// between the two ends, and totals recomputed from the depths. O(units * 100) time.
inline AllocationReport allocate_reference(const AllocationProblem& p,
                                           const AllocationTarget& target, std::uint8_t* depth) {
  detail::check_problem(p);
  detail::UnitTotals totals;
  CompensatedSum coef_sum;
  double r_max = 0.0;
  double r_min = std::numeric_limits<double>::infinity();
  for (std::int64_t u = 0; u < p.units; ++u) {
    detail::check_unit(p, u);
    totals.weight_sum += p.weight[u];
    if (p.coef[u] > 0) {
      totals.positive_weight_sum += p.weight[u];
      ++totals.positive_units;
      coef_sum.add(p.coef[u]);
      r_max = std::max(r_max, p.coef[u] / p.weight[u]);
      r_min = std::min(r_min, p.coef[u] / p.weight[u]);
    }
  }
  totals.coef_sum = coef_sum.value();
  const detail::ResolvedTarget rt = detail::resolve_target(p, target, totals);
  const bool is_distortion = target.kind == TargetKind::kDistortion;

  auto depths_at = [&](double log2_v, std::vector<int>& out) {
    const double v = std::exp2(log2_v);
    double bits = 0.0;
    CompensatedSum dist;
    for (std::int64_t u = 0; u < p.units; ++u) {
      out[u] = closed_form_depth(p.coef[u], p.weight[u], v, p.rounding, p.max_depth);
      bits += p.weight[u] * out[u];
      dist.add(detail::distortion_at(p.coef[u], out[u]));
    }
    return std::make_pair(bits, dist.value());
  };
  // "Within the target" at V; it is false for small V (many bits) and true for large V.
  std::vector<int> scratch(static_cast<std::size_t>(p.units));
  auto meets_target = [&](double log2_v) {
    const auto [bits, dist] = depths_at(log2_v, scratch);
    return is_distortion ? dist > rt.distortion : bits <= rt.index_budget;
  };
  // Distortion: the predicate is "above the target", true for large V, and we want its low end.
  AllocationReport report;
  std::vector<int> high(static_cast<std::size_t>(p.units)), low(high.size());
  if (totals.positive_units == 0) {
    std::fill(high.begin(), high.end(), 0);
    std::fill(low.begin(), low.end(), 0);
  } else {
    // Wide enough that every unit is at max_depth at the low end and at 0 at the high end.
    double lo = std::log2(r_min) - 2.0 * p.max_depth - 4.0;
    double hi = std::log2(r_max) + 4.0;
    if (meets_target(lo)) hi = lo;        // the whole range satisfies it: everything
    while (hi - lo > 1e-10 && report.iterations < 10000) {
      const double mid = 0.5 * (lo + hi);
      (meets_target(mid) ? hi : lo) = mid;
      ++report.iterations;
    }
    // Rate: `high` (at hi) is within budget, `low` (at lo) is not. Distortion: `high` is above
    // the target, `low` within it. Either way the answer lies between the two.
    depths_at(hi, high);
    depths_at(lo, low);
  }
  std::vector<detail::Increment> candidates;
  for (std::int64_t u = 0; u < p.units; ++u) {
    depth[u] = static_cast<std::uint8_t>(high[u]);
    for (int b = high[u] + 1; b <= low[u]; ++b) {
      candidates.push_back({detail::increment_key(p.coef[u] / p.weight[u], b), u, b});
    }
  }
  std::sort(candidates.begin(), candidates.end(), detail::comes_first);
  report.candidates = static_cast<std::int64_t>(candidates.size());
  double bits = 0.0;
  CompensatedSum dist;
  for (std::int64_t u = 0; u < p.units; ++u) {
    bits += p.weight[u] * depth[u];
    dist.add(detail::distortion_at(p.coef[u], depth[u]));
  }
  std::size_t taken = 0;
  for (; taken < candidates.size(); ++taken) {
    const detail::Increment& inc = candidates[taken];
    const double w = p.weight[inc.unit];
    if (!is_distortion ? bits + w > rt.index_budget : dist.value() <= rt.distortion) break;
    depth[inc.unit] = static_cast<std::uint8_t>(inc.depth);
    bits += w;
    dist.add(-detail::increment_saving(p.coef[inc.unit], inc.depth));
  }
  report.greedy_steps = static_cast<std::int64_t>(taken);
  // Totals recomputed from scratch, independent of the running sums.
  bits = 0.0;
  CompensatedSum final_dist;
  for (std::int64_t u = 0; u < p.units; ++u) {
    bits += p.weight[u] * depth[u];
    final_dist.add(detail::distortion_at(p.coef[u], depth[u]));
  }
  if (totals.positive_units > 0) {
    const double key = taken < candidates.size() ? candidates[taken].key
                                                 : detail::first_left_out_key(p, depth);
    report.log2_V = detail::log2_v_of_key(key > 0 ? key : detail::last_taken_key(p, depth),
                                          p.rounding);
  }
  detail::fill_report_rates(p, rt, bits, final_dist.value(), report);
  return report;
}

// Convenience overloads on vectors (lengths checked).
inline AllocationReport allocate(const std::vector<double>& coef,
                                 const std::vector<double>& weight, AllocationProblem options,
                                 const AllocationTarget& target, std::vector<std::uint8_t>& depth) {
  RADIO_CHECK(coef.size() == weight.size(), "coef has ", coef.size(), " units but weight has ",
              weight.size());
  options.coef = coef.data();
  options.weight = weight.data();
  options.units = static_cast<std::int64_t>(coef.size());
  depth.assign(coef.size(), 0);
  return allocate(options, target, depth.data());
}
inline AllocationReport allocate_reference(const std::vector<double>& coef,
                                           const std::vector<double>& weight,
                                           AllocationProblem options,
                                           const AllocationTarget& target,
                                           std::vector<std::uint8_t>& depth) {
  RADIO_CHECK(coef.size() == weight.size(), "coef has ", coef.size(), " units but weight has ",
              weight.size());
  options.coef = coef.data();
  options.weight = weight.data();
  options.units = static_cast<std::int64_t>(coef.size());
  depth.assign(coef.size(), 0);
  return allocate_reference(options, target, depth.data());
}

}  // namespace radio
