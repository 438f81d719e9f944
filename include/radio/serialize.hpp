// Reading and writing radio files: safetensors files laid out as docs/format.md "File" says.
// save() is atomic (temp file, fsync, rename); load() checks the header, every tensor's dtype,
// shape and byte range before it allocates tensor memory, then the CRC-32 of the data section,
// then validate() on every layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "radio/layer.hpp"

namespace radio {

// Layers in file order, by name (a single-tensor file uses the name "weight").
using NamedLayers = std::vector<std::pair<std::string, QuantizedLayer>>;
// Free-form string metadata (model config, reports). The keys "format", "format_version",
// "layers" and "crc32" are the format's own and may not be set by callers.
using Metadata = std::map<std::string, std::string>;

struct RadioFile {
  NamedLayers layers;
  Metadata metadata;  // the caller's keys only (the format's own keys are consumed by load)
};

void save(const std::string& path, const NamedLayers& layers, const Metadata& metadata = {});
RadioFile load(const std::string& path);

// CRC-32 with the zlib polynomial (the value zlib.crc32 gives), over any length. Pass the CRC of
// the preceding bytes as `crc` to continue a running checksum.
std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc = 0);

}  // namespace radio
