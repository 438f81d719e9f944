// radio._core format functions (docs/design.md, "Format"): numpy in, numpy out. Every argument is
// checked here (dtype, shape, contiguity) before the core sees a pointer; the core then checks
// values (permutations, depths, finiteness). Long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "array_checks.hpp"
#include "radio/dequant.hpp"
#include "radio/format.hpp"
#include "radio/layer.hpp"
#include "radio/pack.hpp"
#include "radio/quantizer.hpp"
#include "radio/serialize.hpp"
#include "radio/tables.hpp"

namespace py = pybind11;
using radio::bind::kAnyExtent;
using radio::bind::require_array;

namespace {

// A positive Python/numpy integer (bool and float are refused).
std::int64_t positive_int(const char* fn, const char* arg, const py::handle& obj) {
  RADIO_CHECK(!py::isinstance<py::bool_>(obj) && py::hasattr(obj, "__index__"), fn, ": ", arg,
              " must be an integer, got ", std::string(py::repr(obj)));
  const auto value = py::int_(obj.attr("__index__")()).cast<long long>();
  RADIO_CHECK(value > 0, fn, ": ", arg, " must be positive, got ", value);
  return value;
}

std::string path_string(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

// ---- layer dict <-> QuantizedLayer ----------------------------------------------------------

py::object dict_item(const char* fn, const py::dict& d, const char* key) {
  RADIO_CHECK(d.contains(key), fn, ": layer dict has no \"", key, "\"");
  return d[key];
}

radio::QuantizedLayer layer_from_dict(const char* fn, const py::handle& obj) {
  RADIO_CHECK(py::isinstance<py::dict>(obj), fn, ": layer must be a dict, got ",
              std::string(py::str(py::type::of(obj).attr("__name__"))));
  const auto d = py::reinterpret_borrow<py::dict>(obj);
  radio::QuantizedLayer layer;
  const std::int64_t n = positive_int(fn, "out_features", dict_item(fn, d, "out_features"));
  const std::int64_t k = positive_int(fn, "in_features", dict_item(fn, d, "in_features"));
  const std::int64_t gs = positive_int(fn, "rows_per_group", dict_item(fn, d, "rows_per_group"));
  layer.geometry = radio::LayerGeometry(n, k, gs);
  const py::object quantizer = dict_item(fn, d, "quantizer");
  RADIO_CHECK(py::isinstance<py::str>(quantizer), fn, ": quantizer must be a str, got ",
              std::string(py::repr(quantizer)));
  layer.quantizer = radio::parse_quantizer(quantizer.cast<std::string>());

  const radio::LayerGeometry& g = layer.geometry;
  const std::int64_t c = g.chunks(), kp = g.padded_in(), u = g.units();
  layer.row_perm = radio::bind::to_vector(
      require_array<std::int32_t>(fn, "row_perm", dict_item(fn, d, "row_perm"), {n}));
  layer.col_perm = radio::bind::to_vector(
      require_array<std::int32_t>(fn, "col_perm", dict_item(fn, d, "col_perm"), {c, kp}));
  layer.depth = radio::bind::to_vector(
      require_array<std::uint8_t>(fn, "depth", dict_item(fn, d, "depth"), {c, u}));
  layer.scale = radio::bind::to_vector(
      require_array<std::uint16_t>(fn, "scale (float16 bits)", dict_item(fn, d, "scale"), {c, kp}));
  layer.loc = radio::bind::to_vector(
      require_array<std::uint16_t>(fn, "loc (float16 bits)", dict_item(fn, d, "loc"), {c, kp}));
  layer.qweight = [&] {
    const auto a = require_array<std::int32_t>(fn, "qweight", dict_item(fn, d, "qweight"),
                                               {kAnyExtent});
    const auto* p = reinterpret_cast<const std::uint32_t*>(a.data());
    return std::vector<std::uint32_t>(p, p + a.size());
  }();
  const bool bias_given = d.contains("bias") && !d["bias"].is_none();
  if (bias_given)
    layer.bias = radio::bind::to_vector(
        require_array<std::uint16_t>(fn, "bias (float16 bits)", d["bias"], {n}));
  layer.has_bias = bias_given;
  if (d.contains("has_bias")) {
    const py::object flag = d["has_bias"];
    RADIO_CHECK(py::isinstance<py::bool_>(flag), fn, ": has_bias must be a bool, got ",
                std::string(py::repr(flag)));
    RADIO_CHECK(flag.cast<bool>() == bias_given, fn, ": has_bias is ",
                flag.cast<bool>() ? "True" : "False", " but bias is ",
                bias_given ? "given" : "missing");
  }
  return layer;
}

py::dict layer_to_dict(const radio::QuantizedLayer& layer) {
  using radio::bind::to_numpy;
  const radio::LayerGeometry& g = layer.geometry;
  const py::ssize_t c = g.chunks(), kp = g.padded_in(), u = g.units();
  py::dict d;
  d["out_features"] = g.out_features;
  d["in_features"] = g.in_features;
  d["rows_per_group"] = g.rows_per_group;
  d["quantizer"] = radio::quantizer_name(layer.quantizer);
  d["has_bias"] = layer.has_bias;
  d["row_perm"] = to_numpy(layer.row_perm, {static_cast<py::ssize_t>(g.out_features)});
  d["col_perm"] = to_numpy(layer.col_perm, {c, kp});
  d["depth"] = to_numpy(layer.depth, {c, u});
  d["scale"] = to_numpy(layer.scale, {c, kp});
  d["loc"] = to_numpy(layer.loc, {c, kp});
  py::array_t<std::int32_t> qweight(static_cast<py::ssize_t>(layer.qweight.size()));
  std::memcpy(qweight.mutable_data(), layer.qweight.data(), layer.qweight.size() * 4);
  d["qweight"] = qweight;
  if (layer.has_bias)
    d["bias"] = to_numpy(layer.bias, {static_cast<py::ssize_t>(g.out_features)});
  return d;
}

py::array_t<float> matrix_to_numpy(const radio::RowMatrixF& m) {
  py::array_t<float> out({static_cast<py::ssize_t>(m.rows()), static_cast<py::ssize_t>(m.cols())});
  std::memcpy(out.mutable_data(), m.data(), static_cast<std::size_t>(m.size()) * sizeof(float));
  return out;
}

// ---- the bound functions --------------------------------------------------------------------

py::array_t<float> table(const std::string& quantizer, int depth) {
  radio::bind::require_range("table", "depth", depth, 0, radio::kMaxDepth);
  const float* t = radio::quantizer_table(radio::parse_quantizer(quantizer), depth);
  py::array_t<float> out(py::ssize_t{1} << depth);
  std::copy(t, t + (1 << depth), out.mutable_data());
  return out;
}

py::array_t<std::int32_t> pack(const py::handle& indices_obj, const py::handle& depth_obj,
                               const py::handle& gs_obj) {
  const char* fn = "pack";
  const std::int64_t gs = positive_int(fn, "rows_per_group", gs_obj);
  const auto depth = require_array<std::uint8_t>(fn, "depth", depth_obj, {kAnyExtent, kAnyExtent});
  const auto indices = require_array<std::uint8_t>(fn, "indices", indices_obj,
                                                   {kAnyExtent, depth.shape(1) * radio::kUnit});
  RADIO_CHECK(indices.shape(0) > 0 && depth.shape(1) > 0, fn, ": indices must not be empty, got shape ",
              radio::bind::shape_string(indices));
  // Packing needs only the padded width, so in_features is taken as Kp.
  const radio::LayerGeometry g(indices.shape(0), depth.shape(1) * radio::kUnit, gs);
  RADIO_CHECK(depth.shape(0) == g.chunks(), fn, ": depth must have shape (", g.chunks(), ", ",
              g.units(), ") for ", g.out_features, " rows and rows_per_group ", gs, ", got ",
              radio::bind::shape_string(depth));
  const radio::WordLayout layout(g, depth.data());
  py::array_t<std::int32_t> out(static_cast<py::ssize_t>(layout.words));
  auto* words = reinterpret_cast<std::uint32_t*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    radio::pack_layer(g, depth.data(), indices.data(), words, layout);
  }
  return out;
}

py::array_t<std::uint8_t> unpack(const py::handle& qweight_obj, const py::handle& depth_obj,
                                 const py::handle& n_obj, const py::handle& gs_obj) {
  const char* fn = "unpack";
  const std::int64_t n = positive_int(fn, "out_features", n_obj);
  const std::int64_t gs = positive_int(fn, "rows_per_group", gs_obj);
  const auto depth = require_array<std::uint8_t>(fn, "depth", depth_obj, {kAnyExtent, kAnyExtent});
  const auto qweight = require_array<std::int32_t>(fn, "qweight", qweight_obj, {kAnyExtent});
  RADIO_CHECK(depth.shape(1) > 0, fn, ": depth must have at least one unit, got shape ",
              radio::bind::shape_string(depth));
  const radio::LayerGeometry g(n, depth.shape(1) * radio::kUnit, gs);
  RADIO_CHECK(depth.shape(0) == g.chunks(), fn, ": depth must have shape (", g.chunks(), ", *) for ",
              n, " rows and rows_per_group ", gs, ", got ", radio::bind::shape_string(depth));
  const radio::WordLayout layout(g, depth.data());
  RADIO_CHECK(qweight.shape(0) == layout.words, fn, ": qweight has ", qweight.shape(0),
              " words but the depths need ", layout.words);
  py::array_t<std::uint8_t> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(g.padded_in())});
  std::uint8_t* dst = out.mutable_data();
  const auto* words = reinterpret_cast<const std::uint32_t*>(qweight.data());
  {
    py::gil_scoped_release release;
    radio::unpack_layer(g, depth.data(), words, dst, layout);
  }
  return out;
}

py::dict quantize_layer(const py::handle& weight_obj, const py::handle& row_perm_obj,
                        const py::handle& col_perm_obj, const py::handle& depth_obj,
                        const py::handle& gs_obj, const std::string& quantizer, bool refine,
                        bool symmetric) {
  const char* fn = "quantize_layer";
  const std::int64_t gs = positive_int(fn, "rows_per_group", gs_obj);
  const auto weight = require_array<float>(fn, "weight", weight_obj, {kAnyExtent, kAnyExtent});
  RADIO_CHECK(weight.shape(0) > 0 && weight.shape(1) > 0, fn, ": weight must not be empty, got shape ",
              radio::bind::shape_string(weight));
  const radio::LayerGeometry g(weight.shape(0), weight.shape(1), gs);
  const auto row_perm = require_array<std::int32_t>(fn, "row_perm", row_perm_obj, {g.out_features});
  const auto col_perm =
      require_array<std::int32_t>(fn, "col_perm", col_perm_obj, {g.chunks(), g.padded_in()});
  const auto depth = require_array<std::uint8_t>(fn, "depth", depth_obj, {g.chunks(), g.units()});
  radio::QuantizerOptions opt;
  opt.quantizer = radio::parse_quantizer(quantizer);
  opt.refine = refine;
  opt.symmetric = symmetric;
  radio::QuantizedLayer layer;
  {
    py::gil_scoped_release release;
    layer = radio::quantize_layer(weight.data(), g, row_perm.data(), col_perm.data(), depth.data(), opt);
  }
  const py::dict full = layer_to_dict(layer);
  py::dict out;
  out["scale"] = full["scale"];
  out["loc"] = full["loc"];
  out["qweight"] = full["qweight"];
  return out;
}

py::array_t<float> dequantize(const py::handle& layer_obj) {
  const radio::QuantizedLayer layer = layer_from_dict("dequantize", layer_obj);
  radio::RowMatrixF w;
  {
    py::gil_scoped_release release;
    w = radio::dequantize(layer);
  }
  return matrix_to_numpy(w);
}

py::array_t<float> dequant_matmul(const py::handle& layer_obj, const py::handle& x_obj) {
  const char* fn = "dequant_matmul";
  const radio::QuantizedLayer layer = layer_from_dict(fn, layer_obj);
  const auto x = require_array<float>(fn, "x", x_obj, {kAnyExtent, layer.geometry.in_features});
  radio::RowMatrixF y;
  {
    py::gil_scoped_release release;
    const float* p = x.data();
    const std::int64_t k = layer.geometry.in_features;
    for (std::int64_t i = 0; i < x.shape(0) * k; ++i)
      RADIO_CHECK(std::isfinite(p[i]), fn, ": x[", i / k, ", ", i % k, "] = ", p[i],
                  " is not finite");
    y = radio::dequant_matmul(layer, p, x.shape(0));
  }
  return matrix_to_numpy(y);
}

void validate_layer(const py::handle& layer_obj) {
  const radio::QuantizedLayer layer = layer_from_dict("validate_layer", layer_obj);
  py::gil_scoped_release release;
  layer.validate();
}

std::int64_t layer_bytes(const py::handle& layer_obj) {
  const radio::QuantizedLayer layer = layer_from_dict("layer_bytes", layer_obj);
  layer.validate();
  return layer.bytes();
}

void save(const py::object& path_obj, const py::handle& layers_obj, const py::handle& meta_obj) {
  const char* fn = "save";
  const std::string path = path_string(path_obj);
  RADIO_CHECK(py::isinstance<py::dict>(layers_obj), fn, ": layers must be a dict of name -> layer "
              "dict, got ", std::string(py::str(py::type::of(layers_obj).attr("__name__"))));
  radio::NamedLayers layers;
  for (const auto& [name, layer] : py::reinterpret_borrow<py::dict>(layers_obj)) {
    RADIO_CHECK(py::isinstance<py::str>(name), fn, ": layer names must be str, got ",
                std::string(py::repr(name)));
    const std::string key = name.cast<std::string>();
    try {
      layers.emplace_back(key, layer_from_dict(fn, layer));
    } catch (const radio::Error& e) {
      radio::detail::fail("layer '", key, "': ", e.what());
    }
  }
  radio::Metadata meta;
  if (!meta_obj.is_none()) {
    RADIO_CHECK(py::isinstance<py::dict>(meta_obj), fn, ": metadata must be a dict of str -> str");
    for (const auto& [key, value] : py::reinterpret_borrow<py::dict>(meta_obj)) {
      RADIO_CHECK(py::isinstance<py::str>(key) && py::isinstance<py::str>(value), fn,
                  ": metadata must map str to str, got ", std::string(py::repr(key)), ": ",
                  std::string(py::repr(value)));
      meta[key.cast<std::string>()] = value.cast<std::string>();
    }
  }
  py::gil_scoped_release release;
  radio::save(path, layers, meta);
}

py::tuple load(const py::object& path_obj) {
  const std::string path = path_string(path_obj);
  radio::RadioFile file;
  {
    py::gil_scoped_release release;
    file = radio::load(path);
  }
  py::dict layers;
  for (const auto& [name, layer] : file.layers) layers[py::str(name)] = layer_to_dict(layer);
  py::dict meta;
  for (const auto& [key, value] : file.metadata) meta[py::str(key)] = value;
  return py::make_tuple(layers, meta);
}

}  // namespace

void bind_format(py::module_& m) {
  m.def("table", &table, py::arg("quantizer"), py::arg("depth"),
        "T_B of docs/format.md: float32[2**depth] reconstruction levels of a unit-scale group.");
  m.def("pack", &pack, py::arg("indices"), py::arg("depth"), py::arg("rows_per_group"),
        "Pack uint8 indices [N, Kp] (permuted rows, chunk-position order) into int32 qweight [W] "
        "with the word layout of docs/format.md.");
  m.def("unpack", &unpack, py::arg("qweight"), py::arg("depth"), py::arg("out_features"),
        py::arg("rows_per_group"), "Inverse of pack: int32 qweight [W] -> uint8 indices [N, Kp].");
  m.def("quantize_layer", &quantize_layer, py::arg("weight"), py::arg("row_perm"),
        py::arg("col_perm"), py::arg("depth"), py::arg("rows_per_group"),
        py::arg("quantizer") = "laplace", py::arg("refine") = true, py::arg("symmetric") = false,
        "Quantize float32 weight [N, K] group by group (docs/format.md \"Encoding\"). Returns "
        "dict(scale=uint16[C,Kp], loc=uint16[C,Kp], qweight=int32[W]) (f16 as uint16 bits).");
  m.def("dequantize", &dequantize, py::arg("layer"),
        "float32 [N, K] weight of a packed layer dict, in original row/column order.");
  m.def("dequant_matmul", &dequant_matmul, py::arg("layer"), py::arg("x"),
        "float32 [M, N] = x [M, K] @ W.T (+ bias): the CPU reference of the CUDA kernels.");
  m.def("validate_layer", &validate_layer, py::arg("layer"),
        "Every check of docs/format.md on a layer dict; raises ValueError naming the violation.");
  m.def("layer_bytes", &layer_bytes, py::arg("layer"),
        "Exact stored bytes of a layer's tensors (docs/format.md \"Size\").");
  m.def("save", &save, py::arg("path"), py::arg("layers"), py::arg("metadata") = py::dict(),
        "Write layers {name: layer dict} and str metadata to a radio safetensors file, "
        "atomically (temp file, fsync, rename).");
  m.def("load", &load, py::arg("path"),
        "Read a radio file: (layers {name: layer dict}, metadata {str: str}). Every check runs "
        "before tensor memory is allocated.");
}
