// numpy argument checks shared by the bind_*.cpp files: one helper per check, each raising
// radio::Error (-> ValueError) with a message naming the function, the argument, the value seen
// and the value expected. Arrays are taken as they are (no silent dtype conversion or copy).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "radio/config.hpp"

namespace radio::bind {

namespace py = pybind11;

// Dimension placeholder for require_shape: any extent is accepted.
inline constexpr std::int64_t kAnyExtent = -1;

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, double>) return "float64";
  if constexpr (std::is_same_v<T, std::uint8_t>) return "uint8";
  if constexpr (std::is_same_v<T, std::uint16_t>) return "uint16";
  if constexpr (std::is_same_v<T, std::int32_t>) return "int32";
  if constexpr (std::is_same_v<T, std::uint32_t>) return "uint32";
  if constexpr (std::is_same_v<T, std::int64_t>) return "int64";
  return "?";
}

inline std::string shape_string(const py::array& a) {
  std::ostringstream out;
  out << "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) out << (d ? ", " : "") << a.shape(d);
  out << (a.ndim() == 1 ? ",)" : ")");
  return out.str();
}

inline std::string shape_string(std::initializer_list<std::int64_t> shape) {
  std::ostringstream out;
  out << "(";
  std::size_t i = 0;
  for (std::int64_t e : shape) {
    out << (i++ ? ", " : "");
    if (e == kAnyExtent) out << "*"; else out << e;
  }
  out << (shape.size() == 1 ? ",)" : ")");
  return out.str();
}

// `obj` must be a numpy array of exactly dtype T (no conversion): returns it as py::array_t<T>.
template <typename T>
py::array_t<T> require_dtype(const char* fn, const char* arg, const py::handle& obj) {
  RADIO_CHECK(py::isinstance<py::array>(obj), fn, ": ", arg, " must be a numpy ", dtype_name<T>(),
              " array, got ", std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  RADIO_CHECK(a.dtype().is(py::dtype::of<T>()) || a.dtype().equal(py::dtype::of<T>()), fn, ": ",
              arg, " must have dtype ", dtype_name<T>(), ", got ",
              std::string(py::str(a.dtype())));
  return py::reinterpret_borrow<py::array_t<T>>(obj);
}

inline void require_c_contiguous(const char* fn, const char* arg, const py::array& a) {
  RADIO_CHECK(a.flags() & py::array::c_style, fn, ": ", arg,
              " must be C-contiguous (use numpy.ascontiguousarray), got strides that are not");
}

// Checks ndim and every extent given (kAnyExtent matches anything).
inline void require_shape(const char* fn, const char* arg, const py::array& a,
                          std::initializer_list<std::int64_t> shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  if (ok) {
    py::ssize_t d = 0;
    for (std::int64_t e : shape) {
      if (e != kAnyExtent && a.shape(d) != e) ok = false;
      ++d;
    }
  }
  RADIO_CHECK(ok, fn, ": ", arg, " must have shape ", shape_string(shape), ", got ",
              shape_string(a));
}

// The common case: dtype T, C-contiguous, given shape. Returns the typed array (no copy).
template <typename T>
py::array_t<T> require_array(const char* fn, const char* arg, const py::handle& obj,
                             std::initializer_list<std::int64_t> shape) {
  auto a = require_dtype<T>(fn, arg, obj);
  require_shape(fn, arg, a, shape);
  require_c_contiguous(fn, arg, a);
  return a;
}

// Copies a checked 1-D/N-D array into a std::vector (flattened, C order).
template <typename T>
std::vector<T> to_vector(const py::array_t<T>& a) {
  const T* p = a.data();
  return std::vector<T>(p, p + a.size());
}

// A new C-contiguous numpy array of the given shape holding a copy of `data`.
template <typename T>
py::array_t<T> to_numpy(const std::vector<T>& data, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  RADIO_CHECK(static_cast<std::size_t>(out.size()) == data.size(), "internal: array of ",
              out.size(), " elements for ", data.size(), " values");
  std::copy(data.begin(), data.end(), out.mutable_data());
  return out;
}

// Integer argument that must lie in [lo, hi].
inline std::int64_t require_range(const char* fn, const char* arg, std::int64_t value,
                                  std::int64_t lo, std::int64_t hi) {
  RADIO_CHECK(value >= lo && value <= hi, fn, ": ", arg, " must be in [", lo, ", ", hi, "], got ",
              value);
  return value;
}

}  // namespace radio::bind
