// radio._core bit allocation (docs/design.md, "Allocation"): allocate() and its reference twin
// allocate_reference(), numpy in, (depth, report dict) out. The GIL is released while solving.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "array_checks.hpp"
#include "radio/solver.hpp"

namespace py = pybind11;
using radio::bind::kAnyExtent;
using radio::bind::require_array;

namespace {

// An optional real number (None -> absent); bool and arrays are refused.
bool optional_number(const char* fn, const char* arg, const py::handle& obj, double& out) {
  if (obj.is_none()) return false;
  RADIO_CHECK(!py::isinstance<py::bool_>(obj) && !py::isinstance<py::array>(obj) &&
                  py::hasattr(obj, "__float__"),
              fn, ": ", arg, " must be a number or None, got ", std::string(py::repr(obj)));
  out = obj.attr("__float__")().cast<double>();
  return true;
}

const char* rounding_name(radio::Rounding r) {
  return r == radio::Rounding::kRateDistortion ? "rd" : "nearest";
}

py::dict report_dict(const radio::AllocationReport& r, const radio::AllocationTarget& target,
                     const radio::AllocationProblem& p) {
  py::dict d;
  d["log2_V"] = r.log2_V;
  d["iterations"] = r.iterations;
  d["exact_passes"] = r.exact_passes;
  d["candidates"] = r.candidates;
  d["greedy_steps"] = r.greedy_steps;
  d["index_bits"] = r.index_bits;
  d["total_bits"] = r.total_bits;
  d["bits_per_weight"] = r.bits_per_weight;
  d["index_bits_per_weight"] = r.index_bits_per_weight;
  d["distortion"] = r.distortion;
  d["reachable"] = py::make_tuple(r.reachable_min, r.reachable_max);
  d["target"] = py::make_tuple(radio::target_name(target.kind), target.value);
  d["rounding"] = rounding_name(p.rounding);
  d["max_depth"] = p.max_depth;
  return d;
}

template <bool kReference>
py::tuple allocate_py(const py::handle& coef, const py::handle& weight,
                      const py::handle& target_bits, const py::handle& target_index_bits,
                      const py::handle& target_distortion, const py::handle& target_bytes,
                      double side_bits, const py::handle& total_weights,
                      const std::string& rounding, int max_depth) {
  const char* fn = kReference ? "allocate_reference" : "allocate";
  const auto c = require_array<double>(fn, "coef", coef, {kAnyExtent});
  const auto w = require_array<double>(fn, "weight", weight, {kAnyExtent});
  RADIO_CHECK(w.shape(0) == c.shape(0), fn, ": weight has ", w.shape(0),
              " units, expected ", c.shape(0), " (the length of coef)");

  // Exactly one target.
  std::vector<std::pair<radio::TargetKind, double>> given;
  const std::pair<radio::TargetKind, const py::handle*> options[] = {
      {radio::TargetKind::kBitsPerWeight, &target_bits},
      {radio::TargetKind::kIndexBitsPerWeight, &target_index_bits},
      {radio::TargetKind::kDistortion, &target_distortion},
      {radio::TargetKind::kTotalBytes, &target_bytes}};
  std::string names;
  for (const auto& [kind, obj] : options) {
    double value = 0;
    if (optional_number(fn, radio::target_name(kind), *obj, value)) {
      given.emplace_back(kind, value);
      names += std::string(names.empty() ? "" : ", ") + radio::target_name(kind);
    }
  }
  RADIO_CHECK(given.size() == 1, fn, ": give exactly one of target_bits, target_index_bits, "
              "target_distortion, target_bytes; got ", given.size(),
              given.empty() ? "" : " (", names, given.empty() ? "" : ")");
  const radio::AllocationTarget target{given[0].first, given[0].second};

  radio::AllocationProblem problem;
  problem.coef = c.data();
  problem.weight = w.data();
  problem.units = c.shape(0);
  problem.side_bits = side_bits;
  double tw = 0;
  if (optional_number(fn, "total_weights", total_weights, tw)) {
    RADIO_CHECK(tw > 0 && std::isfinite(tw), fn, ": total_weights must be finite and > 0, got ",
                tw);
  }
  problem.total_weights = tw;
  problem.max_depth = static_cast<int>(
      radio::bind::require_range(fn, "max_depth", max_depth, 1, radio::kMaxDepth));
  problem.rounding = radio::parse_rounding(rounding);

  py::array_t<std::uint8_t> depth(std::vector<py::ssize_t>{problem.units});
  std::uint8_t* out = depth.mutable_data();
  radio::AllocationReport report;
  {
    py::gil_scoped_release release;
    report = kReference ? radio::allocate_reference(problem, target, out)
                        : radio::allocate(problem, target, out);
  }
  return py::make_tuple(depth, report_dict(report, target, problem));
}

constexpr const char* kAllocateDoc = R"doc(Global bit allocation over all units of all layers.

coef float64[n_units]: unit u's modelled distortion is coef[u] * 2**(-2 B) (>= 0; 0 gets 0 bits);
weight float64[n_units]: index bits per bit of depth (rows_c * 32 in the packed format).
Exactly one target (keyword-only):
  target_bits        all-in bits per weight: (index bits + side_bits) / total_weights
  target_index_bits  index bits per weight: index bits / total_weights
  target_bytes       total bytes: (index bits + side_bits) / 8
  target_distortion  modelled distortion sum_u coef[u] 2**(-2 B_u)
side_bits: side information in bits (scale, loc, permutations, depth, bias);
total_weights: sum of N*K over layers (default: sum of weight); rounding: "rd" (round up iff the
fraction of the closed form exceeds 0.4431) or "nearest" -- for a target both give the same depths
and differ only in the reported log2_V; max_depth in 1..8.

Rate targets give the most bits not above the target (short of it by less than one unit's
weight); a distortion target gives the least rate whose distortion is within it. An unreachable
target raises ValueError with the reachable range.
Returns (depth uint8[n_units], report dict: log2_V, iterations, exact_passes, candidates,
greedy_steps, index_bits, total_bits, bits_per_weight, index_bits_per_weight, distortion,
reachable (min, max) in the target's unit, target (name, value), rounding, max_depth).)doc";

}  // namespace

void bind_solver(py::module_& m) {
  const auto bind = [&](const char* name, auto fn, const char* doc) {
    m.def(name, fn, py::arg("coef"), py::arg("weight"), py::kw_only(),
          py::arg("target_bits") = py::none(), py::arg("target_index_bits") = py::none(),
          py::arg("target_distortion") = py::none(), py::arg("target_bytes") = py::none(),
          py::arg("side_bits") = 0.0, py::arg("total_weights") = py::none(),
          py::arg("rounding") = "rd", py::arg("max_depth") = radio::kMaxDepth, doc);
  };
  bind("allocate", &allocate_py<false>, kAllocateDoc);
  bind("allocate_reference", &allocate_py<true>,
       "The simple reference twin of allocate() (bisection with the per-unit closed form): "
       "same arguments, same result; slow, for tests.");
}
