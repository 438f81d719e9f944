// radio files: safetensors with the layout of docs/format.md "File".
//
// A safetensors file is: u64 little-endian header length n, n bytes of JSON, then the data
// section. The JSON maps tensor names to {dtype, shape, data_offsets: [begin, end)} (offsets
// relative to the data section) and holds string metadata under "__metadata__".
//
// load() trusts nothing: it checks the header length against the file size and every tensor's
// dtype, shape and byte range against the layer attributes before any tensor memory exists, so a
// hostile header cannot make it allocate more than the file holds.
#include "radio/serialize.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "radio/format.hpp"
#include "radio/tables.hpp"

namespace radio {
namespace {

using Json = nlohmann::ordered_json;  // keeps the writer's order of layers and tensors

// Header lengths above this are refused outright (safetensors uses the same 100 MB limit).
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// The format's own metadata keys.
const char* const kReservedKeys[] = {"format", "format_version", "layers", "crc32"};
// Tensor names of one layer, in the order save() writes them.
const char* const kTensorNames[] = {"row_perm", "col_perm", "depth", "scale",
                                    "loc",      "qweight",  "bias"};

bool little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

std::string errno_text() { return std::strerror(errno); }

std::int64_t dtype_size(const std::string& dtype) {
  if (dtype == "U8") return 1;
  if (dtype == "U16" || dtype == "F16") return 2;
  if (dtype == "I32") return 4;
  return 0;
}

// The permutation dtype for an axis of length n (docs/format.md).
const char* perm_dtype(std::int64_t n) { return index_bytes(n) == 2 ? "U16" : "I32"; }

std::string crc_hex(std::uint32_t crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

// One tensor to write: its bytes live either in a layer's vector or in `owned` (narrowed perms).
struct OutTensor {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::vector<std::uint16_t> owned;
};

template <typename T>
void set_data(OutTensor& t, const std::vector<T>& v) {
  t.data = v.data();
  t.bytes = v.size() * sizeof(T);
}

void add_perm(std::vector<OutTensor>& out, const std::string& name,
              const std::vector<std::int32_t>& perm, std::int64_t axis,
              std::vector<std::int64_t> shape) {
  OutTensor t;
  t.name = name;
  t.dtype = perm_dtype(axis);
  t.shape = std::move(shape);
  if (t.dtype == "U16") {
    t.owned.assign(perm.begin(), perm.end());  // validate() bounded every entry by axis <= 65535
    set_data(t, t.owned);
  } else {
    set_data(t, perm);
  }
  out.push_back(std::move(t));
}

std::vector<OutTensor> layer_tensors(const std::string& layer_name, const QuantizedLayer& layer) {
  const LayerGeometry& g = layer.geometry;
  const std::int64_t chunks = g.chunks(), kp = g.padded_in();
  std::vector<OutTensor> out;
  out.reserve(7);
  add_perm(out, layer_name + ".row_perm", layer.row_perm, g.out_features, {g.out_features});
  add_perm(out, layer_name + ".col_perm", layer.col_perm, g.in_features, {chunks, kp});
  auto add = [&](const char* tensor, const char* dtype, std::vector<std::int64_t> shape,
                 const auto& vec) {
    OutTensor t;
    t.name = layer_name + "." + tensor;
    t.dtype = dtype;
    t.shape = std::move(shape);
    set_data(t, vec);
    out.push_back(std::move(t));
  };
  add("depth", "U8", {chunks, g.units()}, layer.depth);
  add("scale", "F16", {chunks, kp}, layer.scale);
  add("loc", "F16", {chunks, kp}, layer.loc);
  add("qweight", "I32", {static_cast<std::int64_t>(layer.qweight.size())}, layer.qweight);
  if (layer.has_bias) add("bias", "F16", {g.out_features}, layer.bias);
  return out;
}

// Writes all of buf or throws.
void write_all(int fd, const void* buf, std::size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<std::size_t>(size, std::size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    RADIO_CHECK(n > 0, "writing '", path, "' failed: ", errno_text());
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    RADIO_CHECK(fd_ >= 0, "cannot open '", path, "': ", errno_text());
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      detail::fail("'", path, "' is not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~InputFile() { ::close(fd_); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  std::uint64_t size() const { return size_; }

  // Reads exactly `size` bytes at `offset` (the caller has checked the range against size()).
  void read(std::uint64_t offset, void* buf, std::size_t size) const {
    char* p = static_cast<char*>(buf);
    while (size > 0) {
      const ssize_t n = ::pread(fd_, p, std::min<std::size_t>(size, std::size_t{1} << 30),
                                static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      RADIO_CHECK(n > 0, "reading '", path_, "' at byte ", offset, " failed: ",
                  n == 0 ? std::string("unexpected end of file") : errno_text());
      p += n;
      offset += static_cast<std::uint64_t>(n);
      size -= static_cast<std::size_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// A JSON integer that must be >= lo (rejects floats, bools, strings and negatives).
std::int64_t json_int(const Json& v, const std::string& what, std::int64_t lo) {
  RADIO_CHECK(v.is_number_integer(), what, " must be an integer, got ", v.dump());
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    RADIO_CHECK(u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()), what,
                " is too large: ", u);
    const auto s = static_cast<std::int64_t>(u);
    RADIO_CHECK(s >= lo, what, " must be >= ", lo, ", got ", s);
    return s;
  }
  const auto s = v.get<std::int64_t>();
  RADIO_CHECK(s >= lo, what, " must be >= ", lo, ", got ", s);
  return s;
}

struct LayerAttributes {
  LayerGeometry geometry;
  Quantizer quantizer = Quantizer::kLaplace;
  bool has_bias = false;
};

LayerAttributes parse_attributes(const std::string& name, const Json& a) {
  const std::string where = "layer '" + name + "': ";
  RADIO_CHECK(a.is_object(), where, "attributes must be a JSON object, got ", a.dump());
  for (const char* key : {"out_features", "in_features", "rows_per_group", "quantizer", "has_bias"})
    RADIO_CHECK(a.contains(key), where, "attribute \"", key, "\" is missing");
  LayerAttributes out;
  const std::int64_t n = json_int(a["out_features"], where + "out_features", 1);
  const std::int64_t k = json_int(a["in_features"], where + "in_features", 1);
  const std::int64_t gs = json_int(a["rows_per_group"], where + "rows_per_group", 1);
  out.geometry = LayerGeometry(n, k, gs);
  RADIO_CHECK(a["quantizer"].is_string(), where, "quantizer must be a string, got ",
              a["quantizer"].dump());
  out.quantizer = parse_quantizer(a["quantizer"].get<std::string>());
  RADIO_CHECK(a["has_bias"].is_boolean(), where, "has_bias must be true or false, got ",
              a["has_bias"].dump());
  out.has_bias = a["has_bias"].get<bool>();
  return out;
}

// One tensor entry of the header, checked against what its layer expects.
struct InTensor {
  std::size_t layer = 0;  // index into the layer list
  std::string tensor;     // "row_perm", ...
  std::string dtype;
  std::uint64_t begin = 0, end = 0;  // within the data section
  std::int64_t elements = 0;
};

// Expected dtype and shape of `tensor` for a layer (qweight's length is checked later against
// the depths; here only its upper bound, 8 bits for every weight of every padded row).
InTensor check_tensor(const std::string& full_name, const std::string& tensor,
                      const LayerAttributes& attr, const Json& entry, std::uint64_t data_size) {
  const LayerGeometry& g = attr.geometry;
  const std::string where = "tensor '" + full_name + "': ";
  RADIO_CHECK(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                  entry.contains("data_offsets"),
              where, "entry must be an object with dtype, shape and data_offsets, got ",
              entry.dump());
  InTensor t;
  t.tensor = tensor;
  RADIO_CHECK(entry["dtype"].is_string(), where, "dtype must be a string");
  t.dtype = entry["dtype"].get<std::string>();

  std::string expected_dtype;
  std::vector<std::int64_t> expected_shape;
  const std::int64_t chunks = g.chunks(), kp = g.padded_in();
  if (tensor == "row_perm") {
    expected_dtype = perm_dtype(g.out_features);
    expected_shape = {g.out_features};
  } else if (tensor == "col_perm") {
    expected_dtype = perm_dtype(g.in_features);
    expected_shape = {chunks, kp};
  } else if (tensor == "depth") {
    expected_dtype = "U8";
    expected_shape = {chunks, g.units()};
  } else if (tensor == "scale" || tensor == "loc") {
    expected_dtype = "F16";
    expected_shape = {chunks, kp};
  } else if (tensor == "bias") {
    RADIO_CHECK(attr.has_bias, where, "present but the layer says has_bias=false");
    expected_dtype = "F16";
    expected_shape = {g.out_features};
  } else {  // qweight
    expected_dtype = "I32";
  }
  RADIO_CHECK(t.dtype == expected_dtype, where, "dtype must be ", expected_dtype, ", got ",
              t.dtype);

  const Json& shape = entry["shape"];
  RADIO_CHECK(shape.is_array(), where, "shape must be an array, got ", shape.dump());
  std::vector<std::int64_t> dims;
  for (std::size_t i = 0; i < shape.size(); ++i)
    dims.push_back(json_int(shape[i], where + "shape[" + std::to_string(i) + "]", 0));
  if (tensor == "qweight") {
    const std::int64_t max_words = g.out_features * g.units() * kMaxDepth;
    RADIO_CHECK(dims.size() == 1 && dims[0] <= max_words, where,
                "shape must be [W] with W <= ", max_words, " (8 bits everywhere), got ",
                shape.dump());
    t.elements = dims[0];
  } else {
    RADIO_CHECK(dims == expected_shape, where, "shape must be ", Json(expected_shape).dump(),
                " for a [", g.out_features, ", ", g.in_features, "] layer with rows_per_group ",
                g.rows_per_group, ", got ", shape.dump());
    t.elements = 1;
    for (std::int64_t d : dims) t.elements *= d;  // bounded: N, Kp < 2^32, C*Kp < 2^63
  }

  const Json& offsets = entry["data_offsets"];
  RADIO_CHECK(offsets.is_array() && offsets.size() == 2, where,
              "data_offsets must be [begin, end], got ", offsets.dump());
  t.begin = static_cast<std::uint64_t>(json_int(offsets[0], where + "data_offsets[0]", 0));
  t.end = static_cast<std::uint64_t>(json_int(offsets[1], where + "data_offsets[1]", 0));
  RADIO_CHECK(t.begin <= t.end && t.end <= data_size, where, "data_offsets [", t.begin, ", ",
              t.end, "] are not within the data section of ", data_size, " bytes");
  const auto bytes = static_cast<std::uint64_t>(t.elements) *
                     static_cast<std::uint64_t>(dtype_size(t.dtype));
  RADIO_CHECK(t.end - t.begin == bytes, where, "data_offsets [", t.begin, ", ", t.end, "] span ",
              t.end - t.begin, " bytes but dtype ", t.dtype, " and shape ", shape.dump(),
              " need ", bytes);
  return t;
}

template <typename T>
void* sized(std::vector<T>& v, std::int64_t elements) {
  v.resize(static_cast<std::size_t>(elements));
  return v.data();
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void save(const std::string& path, const NamedLayers& layers, const Metadata& metadata) {
  RADIO_CHECK(little_endian(), "radio files are little-endian; this host is not supported");
  for (const char* key : kReservedKeys)
    RADIO_CHECK(metadata.count(key) == 0, "metadata key \"", key,
                "\" is reserved for the format; use another name");

  Json attributes = Json::object();
  std::vector<OutTensor> tensors;
  std::set<std::string> names;
  for (const auto& [name, layer] : layers) {
    RADIO_CHECK(!name.empty() && name != "__metadata__", "layer name \"", name, "\" is not allowed");
    RADIO_CHECK(names.insert(name).second, "layer name \"", name, "\" appears twice");
    try {
      layer.validate();
    } catch (const Error& e) {
      detail::fail("layer '", name, "': ", e.what());
    }
    const LayerGeometry& g = layer.geometry;
    attributes[name] = {{"out_features", g.out_features},
                        {"in_features", g.in_features},
                        {"rows_per_group", g.rows_per_group},
                        {"quantizer", quantizer_name(layer.quantizer)},
                        {"has_bias", layer.has_bias}};
    for (auto& t : layer_tensors(name, layer)) tensors.push_back(std::move(t));
  }

  // Header: tensors in data order, contiguous from offset 0; then the metadata with the CRC.
  Json header = Json::object();
  std::uint64_t offset = 0;
  std::uint32_t crc = 0;
  for (const OutTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
    crc = crc32(t.data, t.bytes, crc);
  }
  Json meta = Json::object();
  meta["format"] = "radio";
  meta["format_version"] = std::to_string(kFormatVersion);
  meta["layers"] = attributes.dump();
  meta["crc32"] = crc_hex(crc);
  for (const auto& [key, value] : metadata) meta[key] = value;
  header["__metadata__"] = meta;
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (as safetensors itself does).
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::uint64_t header_len = text.size();

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  RADIO_CHECK(fd >= 0, "cannot create '", tmp, "': ", errno_text());
  try {
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(header_len >> (8 * i));
    write_all(fd, len_bytes, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const OutTensor& t : tensors) write_all(fd, t.data, t.bytes, tmp);
    RADIO_CHECK(::fsync(fd) == 0, "fsync of '", tmp, "' failed: ", errno_text());
    const int closed = ::close(fd);
    RADIO_CHECK(closed == 0, "closing '", tmp, "' failed: ", errno_text());
  } catch (...) {
    ::close(fd);  // may already be closed; harmless EBADF
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    detail::fail("cannot move '", tmp, "' to '", path, "': ", why);
  }
  // Make the rename itself durable (best effort: some file systems refuse fsync on directories).
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

namespace {
RadioFile load_checked(const std::string& path) {
  RADIO_CHECK(little_endian(), "radio files are little-endian; this host is not supported");
  const InputFile file(path);
  const std::string where = "'" + path + "': ";
  RADIO_CHECK(file.size() >= 8, where, "file is ", file.size(),
              " bytes, too short for a safetensors header");
  unsigned char len_bytes[8];
  file.read(0, len_bytes, 8);
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(len_bytes[i]) << (8 * i);
  RADIO_CHECK(header_len <= file.size() - 8, where, "header length ", header_len,
              " runs past the end of the file (", file.size(), " bytes); the file is truncated or "
              "not a safetensors file");
  RADIO_CHECK(header_len <= kMaxHeaderBytes, where, "header length ", header_len,
              " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  const std::uint64_t data_start = 8 + header_len, data_size = file.size() - data_start;

  std::string text(static_cast<std::size_t>(header_len), '\0');
  file.read(8, text.data(), text.size());
  Json header;
  try {
    header = Json::parse(text);
  } catch (const Json::exception& e) {
    detail::fail(where, "header is not valid JSON: ", e.what());
  }
  RADIO_CHECK(header.is_object(), where, "header must be a JSON object");
  RADIO_CHECK(header.contains("__metadata__") && header["__metadata__"].is_object(), where,
              "no __metadata__: not a radio file");

  // Metadata: all values strings (safetensors' rule); the format's keys are checked and removed.
  RadioFile result;
  Metadata meta;
  for (const auto& [key, value] : header["__metadata__"].items()) {
    RADIO_CHECK(value.is_string(), where, "metadata \"", key, "\" must be a string, got ",
                value.dump());
    meta[key] = value.get<std::string>();
  }
  RADIO_CHECK(meta.count("format") && meta["format"] == "radio", where,
              "metadata \"format\" must be \"radio\", got ",
              meta.count("format") ? "\"" + meta["format"] + "\"" : std::string("nothing"));
  RADIO_CHECK(meta.count("format_version"), where, "metadata \"format_version\" is missing");
  const std::string& version = meta["format_version"];
  RADIO_CHECK(!version.empty() && version.size() <= 9 &&
                  std::all_of(version.begin(), version.end(), [](char ch) { return ch >= '0' && ch <= '9'; }),
              where, "format_version must be a decimal integer, got \"", version, "\"");
  const int file_version = std::stoi(version);
  RADIO_CHECK(file_version <= kFormatVersion, where, "format_version ", file_version,
              " is newer than this radio understands (", kFormatVersion,
              "); upgrade radio to read it");
  RADIO_CHECK(file_version >= 1, where, "format_version ", file_version, " is not valid");
  RADIO_CHECK(meta.count("crc32"), where, "metadata \"crc32\" is missing");
  const std::string& crc_text = meta["crc32"];
  RADIO_CHECK(crc_text.size() == 8 && std::all_of(crc_text.begin(), crc_text.end(), [](char ch) {
                return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f');
              }),
              where, "crc32 must be 8 lower-case hex digits, got \"", crc_text, "\"");
  RADIO_CHECK(meta.count("layers"), where, "metadata \"layers\" is missing");
  Json layer_json;
  try {
    layer_json = Json::parse(meta["layers"]);
  } catch (const Json::exception& e) {
    detail::fail(where, "metadata \"layers\" is not valid JSON: ", e.what());
  }
  RADIO_CHECK(layer_json.is_object(), where, "metadata \"layers\" must be a JSON object");

  std::vector<std::string> layer_names;
  std::vector<LayerAttributes> attrs;
  for (const auto& [name, a] : layer_json.items()) {
    try {
      attrs.push_back(parse_attributes(name, a));
    } catch (const Error& e) {
      detail::fail(where, e.what());
    }
    layer_names.push_back(name);
  }

  // Every tensor: known layer and tensor name, dtype, shape, byte range. Nothing allocated yet.
  std::vector<InTensor> tensors;
  std::vector<std::set<std::string>> present(layer_names.size());
  for (const auto& [full_name, entry] : header.items()) {
    if (full_name == "__metadata__") continue;
    const std::size_t dot = full_name.find_last_of('.');
    RADIO_CHECK(dot != std::string::npos && dot > 0, where, "tensor '", full_name,
                "' is not named <layer>.<tensor>");
    const std::string layer = full_name.substr(0, dot), tensor = full_name.substr(dot + 1);
    const auto it = std::find(layer_names.begin(), layer_names.end(), layer);
    RADIO_CHECK(it != layer_names.end(), where, "tensor '", full_name, "' belongs to no layer "
                "listed in metadata \"layers\"");
    RADIO_CHECK(std::find(std::begin(kTensorNames), std::end(kTensorNames), tensor) !=
                    std::end(kTensorNames),
                where, "tensor '", full_name, "' is not a tensor of the format");
    const auto index = static_cast<std::size_t>(it - layer_names.begin());
    try {
      InTensor t = check_tensor(full_name, tensor, attrs[index], entry, data_size);
      t.layer = index;
      tensors.push_back(std::move(t));
    } catch (const Error& e) {
      detail::fail(where, e.what());
    }
    present[index].insert(tensor);
  }
  for (std::size_t i = 0; i < layer_names.size(); ++i)
    for (const char* tensor : kTensorNames) {
      const bool needed = std::string(tensor) != "bias" || attrs[i].has_bias;
      RADIO_CHECK(!needed || present[i].count(tensor), where, "layer '", layer_names[i],
                  "' has no tensor '", tensor, "'");
    }
  std::sort(tensors.begin(), tensors.end(),
            [](const InTensor& a, const InTensor& b) { return a.begin < b.begin; });
  const InTensor* previous = nullptr;  // the non-empty tensor that ends last so far
  for (const InTensor& b : tensors) {
    if (b.begin == b.end) continue;  // an empty tensor overlaps nothing
    if (previous) {
      const InTensor& a = *previous;
      RADIO_CHECK(b.begin >= a.end, where, "tensor '", layer_names[b.layer], ".", b.tensor,
                  "' at [", b.begin, ", ", b.end, ") overlaps '", layer_names[a.layer], ".",
                  a.tensor, "' at [", a.begin, ", ", a.end, ")");
    }
    previous = &b;
  }

  // Allocation is now bounded by the file size. Read every tensor into its layer in file order,
  // running the CRC over the whole data section (gaps included).
  result.layers.resize(layer_names.size());
  for (std::size_t i = 0; i < layer_names.size(); ++i) {
    result.layers[i].first = layer_names[i];
    QuantizedLayer& layer = result.layers[i].second;
    layer.geometry = attrs[i].geometry;
    layer.quantizer = attrs[i].quantizer;
    layer.has_bias = attrs[i].has_bias;
  }
  std::uint32_t crc = 0;
  std::uint64_t pos = 0;
  std::vector<unsigned char> gap;
  std::vector<std::uint16_t> narrow;
  auto read_crc = [&](std::uint64_t offset, void* buf, std::size_t bytes) {
    file.read(data_start + offset, buf, bytes);
    crc = crc32(buf, bytes, crc);
  };
  for (const InTensor& t : tensors) {
    if (t.end == t.begin) continue;
    if (t.begin > pos) {
      gap.resize(static_cast<std::size_t>(t.begin - pos));
      read_crc(pos, gap.data(), gap.size());
    }
    QuantizedLayer& layer = result.layers[t.layer].second;
    const auto bytes = static_cast<std::size_t>(t.end - t.begin);
    if (t.tensor == "row_perm" || t.tensor == "col_perm") {
      std::vector<std::int32_t>& perm = t.tensor == "row_perm" ? layer.row_perm : layer.col_perm;
      if (t.dtype == "U16") {
        read_crc(t.begin, sized(narrow, t.elements), bytes);
        perm.assign(narrow.begin(), narrow.end());
      } else {
        read_crc(t.begin, sized(perm, t.elements), bytes);
      }
    } else if (t.tensor == "depth") {
      read_crc(t.begin, sized(layer.depth, t.elements), bytes);
    } else if (t.tensor == "scale") {
      read_crc(t.begin, sized(layer.scale, t.elements), bytes);
    } else if (t.tensor == "loc") {
      read_crc(t.begin, sized(layer.loc, t.elements), bytes);
    } else if (t.tensor == "qweight") {
      read_crc(t.begin, sized(layer.qweight, t.elements), bytes);
    } else {
      read_crc(t.begin, sized(layer.bias, t.elements), bytes);
    }
    pos = t.end;
  }
  if (data_size > pos) {
    gap.resize(static_cast<std::size_t>(data_size - pos));
    read_crc(pos, gap.data(), gap.size());
  }
  RADIO_CHECK(crc_hex(crc) == crc_text, where, "CRC-32 of the data section is ", crc_hex(crc),
              " but the header says ", crc_text, ": the file is corrupted");

  for (auto& [name, layer] : result.layers) {
    try {
      layer.validate();
    } catch (const Error& e) {
      detail::fail(where, "layer '", name, "': ", e.what());
    }
  }
  for (const char* key : kReservedKeys) meta.erase(key);
  result.metadata = std::move(meta);
  return result;
}
}  // namespace

RadioFile load(const std::string& path) {
  try {
    return load_checked(path);
  } catch (const Json::exception& e) {  // a JSON shape the checks above did not foresee
    detail::fail("'", path, "': malformed header: ", e.what());
  }
}

}  // namespace radio
