// radio._core statistics (docs/design.md, "Statistics"): GroupStats (mean squared gradient per
// group), InputMean (running input mean per feature) and group_spread (location and S^2 per
// group). Arguments are checked here; values (finiteness, permutations) in the core. The objects
// are not thread-safe: calls that release the GIL must not share an object between threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "array_checks.hpp"
#include "radio/accumulator.hpp"
#include "radio/format.hpp"

namespace py = pybind11;
using radio::bind::kAnyExtent;
using radio::bind::require_array;

namespace {

// A Python int (bool refused) as int64, checked to be positive.
std::int64_t positive_count(const char* fn, const char* arg, const py::handle& obj) {
  RADIO_CHECK(!py::isinstance<py::bool_>(obj) && py::hasattr(obj, "__index__"), fn, ": ", arg,
              " must be an integer, got ", std::string(py::repr(obj)));
  const auto value = py::int_(obj.attr("__index__")()).cast<long long>();
  RADIO_CHECK(value > 0, fn, ": ", arg, " must be positive, got ", value);
  return value;
}

// A real number: Python int/float or a numpy scalar (bool refused).
double real_number(const char* fn, const char* arg, const py::handle& obj) {
  RADIO_CHECK(!py::isinstance<py::bool_>(obj) && !py::isinstance<py::array>(obj) &&
                  py::hasattr(obj, "__float__"),
              fn, ": ", arg, " must be a number, got ", std::string(py::repr(obj)));
  return obj.attr("__float__")().cast<double>();
}

py::array_t<double> to_array(const std::vector<double>& v) {
  return radio::bind::to_numpy(v, {static_cast<py::ssize_t>(v.size())});
}

void add_group_stats(radio::GroupStats& stats, const py::handle& sum_sq_grad,
                     const py::handle& count) {
  const char* fn = "GroupStats.add";
  const std::int64_t n = stats.size();
  const auto sums = require_array<double>(fn, "sum_sq_grad", sum_sq_grad, {n});
  if (py::isinstance<py::array>(count)) {
    const auto counts = require_array<double>(fn, "count", count, {n});
    stats.add(sums.data(), n, counts.data());
  } else {
    stats.add(sums.data(), n, real_number(fn, "count", count));
  }
}

}  // namespace

void bind_stats(py::module_& m) {
  py::class_<radio::GroupStats>(m, "GroupStats", R"doc(
Per-group running sums of squared gradients and sample counts, in compensated float64.

mean_sq_grad()[g] = (sum of everything added for group g) / (its count): the G^2 of the
distortion model. merge() of two accumulators equals one accumulator fed all the data.
)doc")
      .def(py::init([](const py::handle& n_groups) {
             return radio::GroupStats(positive_count("GroupStats", "n_groups", n_groups));
           }),
           py::arg("n_groups"))
      .def("add", &add_group_stats, py::arg("sum_sq_grad"), py::arg("count"),
           R"doc(Adds one batch: sum_sq_grad float64[n_groups] (the batch's sum of squared
gradients per group) and count (samples in the batch: a number for every group, or float64[n_groups]).)doc")
      .def("merge", &radio::GroupStats::merge, py::arg("other"),
           "Adds another accumulator of the same size into this one.")
      .def(
          "mean_sq_grad",
          [](const radio::GroupStats& s) { return to_array(s.mean_sq_grad()); },
          "float64[n_groups]: G^2 per group; raises if a group has no samples.")
      .def(
          "state",
          [](const radio::GroupStats& s) {
            return radio::bind::to_numpy(
                s.state(), {radio::GroupStats::kStateRows, static_cast<py::ssize_t>(s.size())});
          },
          R"doc(float64[4, n_groups]: rows sum, sum compensation, count, count compensation.
Elementwise sums of states (an all-reduce) are states of the merged data; see from_state.)doc")
      .def_static(
          "from_state",
          [](const py::handle& state) {
            const auto a = require_array<double>("GroupStats.from_state", "state", state,
                                                 {radio::GroupStats::kStateRows, kAnyExtent});
            RADIO_CHECK(a.shape(1) > 0, "GroupStats.from_state: state must have at least one "
                        "group, got shape (4, 0)");
            return radio::GroupStats::from_state(a.data(), a.shape(1));
          },
          py::arg("state"), "Rebuilds an accumulator from state().")
      .def_property_readonly("n_groups", &radio::GroupStats::size)
      .def("__len__", &radio::GroupStats::size);

  py::class_<radio::InputMean>(m, "InputMean", R"doc(
Running mean of a layer's input per input feature (compensated float64), for bias correction.
)doc")
      .def(py::init([](const py::handle& k) {
             return radio::InputMean(positive_count("InputMean", "in_features", k));
           }),
           py::arg("in_features"))
      .def(
          "add",
          [](radio::InputMean& self, const py::handle& x) {
            const auto a = require_array<float>("InputMean.add", "x", x,
                                                {kAnyExtent, self.features()});
            py::gil_scoped_release release;
            self.add(a.data(), a.shape(0), a.shape(1));
          },
          py::arg("x"), "Adds x: float32[tokens, in_features].")
      .def("merge", &radio::InputMean::merge, py::arg("other"))
      .def(
          "mean", [](const radio::InputMean& self) { return to_array(self.mean()); },
          "float64[in_features]: the mean of every row added so far.")
      .def_property_readonly("count", &radio::InputMean::count)
      .def_property_readonly("in_features", &radio::InputMean::features);

  m.def(
      "group_spread",
      [](const py::handle& weight, const py::handle& row_perm, const py::handle& rows_per_group,
         const std::string& location) {
        const char* fn = "group_spread";
        const auto w = require_array<float>(fn, "weight", weight, {kAnyExtent, kAnyExtent});
        const std::int64_t n = w.shape(0), k = w.shape(1);
        RADIO_CHECK(n > 0 && k > 0, fn, ": weight must not be empty, got shape (", n, ", ", k,
                    ")");
        const auto perm = require_array<std::int32_t>(fn, "row_perm", row_perm, {n});
        const std::int64_t gs = positive_count(fn, "rows_per_group", rows_per_group);
        const radio::Location loc_kind = radio::parse_location(location);
        const radio::LayerGeometry geom(n, k, gs);
        py::array_t<float> loc({static_cast<py::ssize_t>(geom.chunks()),
                                static_cast<py::ssize_t>(k)});
        py::array_t<float> s2({static_cast<py::ssize_t>(geom.chunks()),
                               static_cast<py::ssize_t>(k)});
        float* loc_out = loc.mutable_data();
        float* s2_out = s2.mutable_data();
        {
          py::gil_scoped_release release;
          radio::group_spread(w.data(), n, k, perm.data(), gs, loc_kind, loc_out, s2_out);
        }
        return py::make_tuple(loc, s2);
      },
      py::arg("weight"), py::arg("row_perm"), py::arg("rows_per_group"),
      py::arg("location") = "median",
      R"doc(Location and spread of every group of a layer.

weight float32[N, K]; row_perm int32[N] (permuted row p holds original row row_perm[p]);
rows_per_group gs. A group is one column of one chunk of gs permuted rows (docs/format.md).
Returns (loc float32[C, K], S2 float32[C, K]): loc is the lower median ("median") or the mean
("mean"); S2 = mean((w - loc)^2). NaN/Inf weights raise naming the position.)doc");
}
