// radio._cuda placeholder: reports the CUDA runtime version until the kernels land.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
PYBIND11_MODULE(_cuda, m) {
  m.def("runtime_version", [] { int v = 0; cudaRuntimeGetVersion(&v); return v; });
}
