// libFuzzer target: radio::load on arbitrary bytes.
//
// Contract under test: load() of any file either returns layers that pass validate() or throws
// radio::Error; it never crashes, trips a sanitizer, throws anything else, or allocates beyond
// what the file holds (run with -malloc_limit_mb: one oversized allocation is reported as a
// crash). The loaded tensors can never hold more bytes than the file.
//
// The bytes go through one memfd (a regular in-memory file) that load() opens by its
// /proc/self/fd path, so the real loader runs unchanged and nothing touches the disk.
//
// Most mutations of a valid file break its CRC-32, which load() checks before validating the
// layers. So an input that load() refuses for its CRC runs a second time with the header's
// "crc32" value rewritten to the data section's real CRC, which lets mutations of tensor bytes
// reach the permutation, depth, qweight-length and f16 checks.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "radio/dequant.hpp"
#include "radio/pack.hpp"
#include "radio/serialize.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_load: %s\n", what);
  std::abort();
}

constexpr std::int64_t kMaxDequantWeights = 1 << 16;  // keep per-input work small

class MemFile {
 public:
  MemFile() {
    fd_ = ::memfd_create("radio-fuzz-load", MFD_CLOEXEC);
    if (fd_ < 0) fail("memfd_create failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) fail("ftruncate failed");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) fail("pwrite failed");
      done += static_cast<std::size_t>(n);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

// What a successful load promises, checked on its result.
void check_loaded(const radio::RadioFile& file, std::size_t file_size) {
  std::int64_t total = 0;
  for (const auto& [name, layer] : file.layers) {
    layer.validate();  // load() already did; must still hold
    total += layer.bytes();
    const radio::LayerGeometry& g = layer.geometry;
    const auto idx = radio::unpack_layer(g, layer.depth.data(), layer.qweight.data(),
                                         static_cast<std::int64_t>(layer.qweight.size()));
    if (idx != radio::unpack_layer_ref(g, layer.depth.data(), layer.qweight))
      fail("unpack_layer differs from unpack_layer_ref on a loaded layer");
    if (g.weights() <= kMaxDequantWeights && !radio::dequantize(layer).allFinite())
      fail("a loaded layer dequantizes to non-finite weights");
  }
  // row_perm/col_perm may widen from u16 to i32 in memory, but bytes() counts file bytes.
  if (total > static_cast<std::int64_t>(file_size)) fail("loaded layers hold more than the file");
  for (const char* key : {"format", "format_version", "layers", "crc32"})
    if (file.metadata.count(key)) fail("a format key leaked into the caller's metadata");
}

// Loads the bytes; true when load() refused them because of their CRC.
bool load_once(MemFile& mem, const std::uint8_t* data, std::size_t size) {
  const std::string& path = mem.write(data, size);
  radio::RadioFile file;
  try {
    file = radio::load(path);
  } catch (const radio::Error& e) {
    // Rejected with a message: the expected outcome for almost every input.
    return std::strstr(e.what(), "CRC-32") != nullptr;
  }
  check_loaded(file, size);
  return false;
}

// A copy of the input with the header's crc32 set to the data section's CRC; empty when the
// input has no well-formed header or crc32 field, or when the CRC is already right.
std::vector<std::uint8_t> with_fixed_crc(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return {};
  std::uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<std::uint64_t>(data[i]) << (8 * i);
  if (header_len > size - 8) return {};
  const std::string header(reinterpret_cast<const char*>(data) + 8, static_cast<std::size_t>(header_len));
  static const std::string key = "\"crc32\":\"";
  const std::size_t at = header.find(key);
  if (at == std::string::npos || at + key.size() + 9 > header.size() ||
      header[at + key.size() + 8] != '"')
    return {};
  const std::size_t data_start = 8 + static_cast<std::size_t>(header_len);
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", radio::crc32(data + data_start, size - data_start));
  std::vector<std::uint8_t> out(data, data + size);
  std::uint8_t* value = out.data() + 8 + at + key.size();
  if (std::memcmp(value, hex, 8) == 0) return {};
  std::memcpy(value, hex, 8);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static MemFile mem;
  if (!load_once(mem, data, size)) return 0;
  const std::vector<std::uint8_t> fixed = with_fixed_crc(data, size);
  if (!fixed.empty()) load_once(mem, fixed.data(), fixed.size());
  return 0;
}
