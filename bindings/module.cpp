// radio._core: the pybind11 layer over the C++ core. Each bind_*.cpp binds one area.
#include <pybind11/pybind11.h>

#include "radio/config.hpp"
#include "radio/format.hpp"

namespace py = pybind11;

void bind_format(py::module_& m);
void bind_stats(py::module_& m);
void bind_solver(py::module_& m);

PYBIND11_MODULE(_core, m) {
  m.doc() = "radio core: packed format, quantizers, statistics and bit allocation";
  m.attr("__version__") = "0.1.0";
  m.attr("FORMAT_VERSION") = radio::kFormatVersion;
  m.attr("UNIT") = radio::kUnit;
  m.attr("MAX_DEPTH") = radio::kMaxDepth;
  // radio::Error derives from std::invalid_argument, which pybind11 maps to ValueError.
  bind_format(m);
  bind_stats(m);
  bind_solver(m);
}
