// Placeholder until the stats bindings land.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_stats(py::module_& m) { (void)m; }
