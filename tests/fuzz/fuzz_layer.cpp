// libFuzzer target: QuantizedLayer::validate() and the unpacker on layers decoded from arbitrary
// bytes (layer_codec.hpp).
//
// Contract under test: on any layer, validate() and unpack_layer() either succeed or throw
// radio::Error; anything else (a crash, a sanitizer report, another exception type) is a bug.
// On a layer validate() accepts, the fast paths must agree with their reference twins:
// unpack_layer == unpack_layer_ref, pack_layer(unpack_layer(q)) == q (every bit of a unit row is
// used, so the round trip is exact), and dequantize() gives finite weights.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "layer_codec.hpp"
#include "radio/dequant.hpp"
#include "radio/layer.hpp"
#include "radio/pack.hpp"

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_layer: %s\n", what);
  std::abort();
}

// dequantize() allocates N*K floats; keep each run small so the fuzzer stays fast.
constexpr std::int64_t kMaxDequantWeights = 1 << 16;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  radio::QuantizedLayer layer;
  if (!radio::fuzz::decode_layer(data, size, layer)) return 0;
  const radio::LayerGeometry& g = layer.geometry;

  bool valid = true;
  try {
    layer.validate();
  } catch (const radio::Error&) {
    valid = false;
  }
  if (!valid) {
    // The unpacker alone on unchecked depths and qweight: it must check what it relies on.
    try {
      (void)radio::unpack_layer(g, layer.depth.data(), layer.qweight.data(),
                                static_cast<std::int64_t>(layer.qweight.size()));
    } catch (const radio::Error&) {
    }
    return 0;
  }

  const std::vector<std::uint8_t> indices =
      radio::unpack_layer(g, layer.depth.data(), layer.qweight.data(),
                          static_cast<std::int64_t>(layer.qweight.size()));
  if (indices != radio::unpack_layer_ref(g, layer.depth.data(), layer.qweight))
    fail("unpack_layer differs from unpack_layer_ref");
  if (radio::pack_layer(g, layer.depth.data(), indices.data()) != layer.qweight)
    fail("pack_layer(unpack_layer(qweight)) != qweight");
  if (layer.bytes() != g.side_bytes(layer.has_bias) + 4 * static_cast<std::int64_t>(layer.qweight.size()))
    fail("bytes() disagrees with the size formula");
  if (g.weights() <= kMaxDequantWeights) {
    const radio::RowMatrixF w = radio::dequantize(layer);
    if (!w.allFinite()) fail("dequantize produced a non-finite weight from a valid layer");
  }
  return 0;
}
