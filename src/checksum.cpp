// CRC-32 of the file's data section, through zlib (the same value as Python's zlib.crc32).
#include <zlib.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "radio/serialize.hpp"

namespace radio {

std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t prior) {
  // zlib takes uInt lengths; feed files larger than 4 GiB in pieces.
  const auto* p = static_cast<const Bytef*>(data);
  uLong crc = prior;
  constexpr std::size_t kPiece = std::size_t{1} << 30;
  while (size > 0) {
    const std::size_t n = std::min(size, kPiece);
    crc = ::crc32(crc, p, static_cast<uInt>(n));
    p += n;
    size -= n;
  }
  return static_cast<std::uint32_t>(crc);
}

}  // namespace radio
