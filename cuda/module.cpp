// radio._cuda: pybind11 bindings of the pointer-level kernels (no libtorch). python/radio/ops.py
// passes torch tensors' data_ptr() values, sizes and the current stream's handle as integers.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "ops.hpp"
#include "radio/config.hpp"

namespace py = pybind11;
using radio::cuda::LayerPtrs;

// All argument checks live here, in host-compiled code: they raise radio::Error (ValueError).
// The nvcc-built entry points throw nothing and return CUDA errors as messages.
namespace {

LayerPtrs layer_ptrs(std::uintptr_t qweight, std::uintptr_t scale, std::uintptr_t loc,
                     std::uintptr_t depth, std::uintptr_t unit_offset, std::uintptr_t row_perm,
                     std::uintptr_t col_perm, std::uintptr_t bias, int n, int k, int gs,
                     int quantizer) {
  RADIO_CHECK(n > 0 && k > 0 && gs > 0, "layer sizes must be positive, got out_features=", n,
              " in_features=", k, " rows_per_group=", gs);
  RADIO_CHECK(quantizer == 0 || quantizer == 1,
              "quantizer must be 0 (laplace) or 1 (uniform), got ", quantizer);
  // qweight may be null: a layer whose units are all 0-bit has no words
  RADIO_CHECK(scale && loc && depth && unit_offset && row_perm && col_perm,
              "a layer tensor pointer is null (scale, loc, depth, unit_offset, row_perm, "
              "col_perm must all be set)");
  LayerPtrs l;
  l.qweight = qweight;
  l.scale = scale;
  l.loc = loc;
  l.depth = depth;
  l.unit_offset = unit_offset;
  l.row_perm = row_perm;
  l.col_perm = col_perm;
  l.bias = bias;
  l.n = n;
  l.k = k;
  l.gs = gs;
  l.quantizer = quantizer;
  return l;
}

void check_dtype(int dtype) {
  RADIO_CHECK(dtype >= 0 && dtype <= 2, "dtype code must be 0 (f16), 1 (bf16) or 2 (f32), got ",
              dtype);
}

int sm_count() {
  const int count = radio::cuda::device_sm_count();
  if (count <= 0) throw std::runtime_error("radio._cuda: no CUDA device is usable");
  return count;
}

radio::cuda::QlinearConfig qlinear_config(int m, int n, int k, int gs) {
  RADIO_CHECK(m >= 1, "qlinear needs at least one token, got ", m);
  RADIO_CHECK(n > 0 && k > 0 && gs > 0, "sizes must be positive, got out_features=", n,
              " in_features=", k, " rows_per_group=", gs);
  RADIO_CHECK(m <= radio::cuda::kMaxKernelTokens || (k + 31) / 32 <= radio::cuda::kMaxBlockUnits,
              "more than ", radio::cuda::kMaxKernelTokens, " tokens need in_features <= ",
              32 * radio::cuda::kMaxBlockUnits, " on the kernel path, got ", k,
              " (use_dequant_gemm() says which path to take)");
  return radio::cuda::select_qlinear_config(m, n, k, gs, sm_count());
}

void raise_if(const std::string& error) {
  if (!error.empty()) throw std::runtime_error(error);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "radio CUDA kernels for the packed format v1 (pointer-level; see python/radio/ops.py)";
  m.attr("MAX_KERNEL_TOKENS") = radio::cuda::kMaxKernelTokens;
  m.attr("MAX_BLOCK_UNITS") = radio::cuda::kMaxBlockUnits;
  m.def("runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def(
      "qlinear",
      [](std::uintptr_t x, int dtype, int tokens, std::uintptr_t qweight, std::uintptr_t scale,
         std::uintptr_t loc, std::uintptr_t depth, std::uintptr_t unit_offset,
         std::uintptr_t row_perm, std::uintptr_t col_perm, std::uintptr_t bias, std::uintptr_t y,
         int n, int k, int gs, int quantizer, std::uintptr_t workspace,
         std::int64_t workspace_bytes, std::uintptr_t stream, std::int64_t qweight_words,
         bool workspace_zeroed, std::uintptr_t work_quantiles, int work_quantile_count) {
        LayerPtrs layer = layer_ptrs(qweight, scale, loc, depth, unit_offset, row_perm,
                                     col_perm, bias, n, k, gs, quantizer);
        RADIO_CHECK(qweight_words >= -1, "qweight_words must be the length of qweight (or -1: "
                    "unknown), got ", qweight_words);
        layer.qweight_words = qweight_words;
        RADIO_CHECK(work_quantile_count == 0 || (work_quantile_count >= 2 && work_quantiles),
                    "work_quantiles must be a device pointer to at least 2 int32 entries (or "
                    "count 0: none), got count ", work_quantile_count);
        layer.work_quantiles = work_quantiles;
        layer.work_quantile_count = work_quantile_count;
        check_dtype(dtype);
        RADIO_CHECK(x && y, "x and y must be non-null device pointers");
        const auto c = qlinear_config(tokens, n, k, gs);
        RADIO_CHECK(workspace_bytes >= c.workspace_bytes, "workspace of ", workspace_bytes,
                    " bytes is too small: this launch needs ", c.workspace_bytes);
        RADIO_CHECK(c.workspace_bytes == 0 || workspace, "workspace pointer is null but ",
                    c.workspace_bytes, " bytes are needed");
        RADIO_CHECK(!(c.stream || c.stream_h2) || qweight_words >= 0,
                    "this launch takes the stream kernel, which needs qweight_words (the length "
                    "of qweight in words), got ", qweight_words);
        raise_if(radio::cuda::qlinear(x, dtype, tokens, layer, y, workspace, c, stream,
                                      workspace_zeroed));
      },
      py::arg("x"), py::arg("dtype"), py::arg("tokens"), py::arg("qweight"), py::arg("scale"),
      py::arg("loc"), py::arg("depth"), py::arg("unit_offset"), py::arg("row_perm"),
      py::arg("col_perm"), py::arg("bias"), py::arg("y"), py::arg("out_features"),
      py::arg("in_features"), py::arg("rows_per_group"), py::arg("quantizer"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::arg("qweight_words") = -1, py::arg("workspace_zeroed") = false,
      py::arg("work_quantiles") = 0, py::arg("work_quantile_count") = 0,
      "y[tokens, N] = x[tokens, K] @ W.T + bias (1..8 tokens: CUDA-core decode path; up to 64 "
      "per block: tensor cores; config() says which). workspace_zeroed: the workspace is a "
      "zeroed buffer kept across calls (no memset; zero again after the call). work_quantiles: "
      "the layer's int32 work quantiles (radio.ops.work_quantiles; the stream kernel cuts its "
      "blocks' ranges there), count entries; 0: equal unit counts. Not for two calls at once "
      "on different streams.");
  m.def(
      "dequantize",
      [](std::uintptr_t qweight, std::uintptr_t scale, std::uintptr_t loc, std::uintptr_t depth,
         std::uintptr_t unit_offset, std::uintptr_t row_perm, std::uintptr_t col_perm,
         std::uintptr_t out, int dtype, int n, int k, int gs, int quantizer,
         std::uintptr_t stream) {
        const LayerPtrs layer = layer_ptrs(qweight, scale, loc, depth, unit_offset, row_perm,
                                           col_perm, 0, n, k, gs, quantizer);
        check_dtype(dtype);
        RADIO_CHECK(out, "out must be a non-null device pointer");
        raise_if(radio::cuda::dequantize(layer, out, dtype, stream));
      },
      py::arg("qweight"), py::arg("scale"), py::arg("loc"), py::arg("depth"),
      py::arg("unit_offset"), py::arg("row_perm"), py::arg("col_perm"), py::arg("out"),
      py::arg("dtype"), py::arg("out_features"), py::arg("in_features"),
      py::arg("rows_per_group"), py::arg("quantizer"), py::arg("stream"),
      "out[N, K] = the layer's weight in original order, in dtype (0 f16, 1 bf16, 2 f32).");
  m.def(
      "workspace_bytes",
      [](int tokens, int n, int k, int gs) { return qlinear_config(tokens, n, k, gs).workspace_bytes; },
      py::arg("tokens"),
        py::arg("out_features"), py::arg("in_features"), py::arg("rows_per_group"),
        "Workspace bytes qlinear needs (0 when it writes y directly).");
  m.def(
      "set_gemv_waves",
      [](int waves, int h2_waves, int one_token_waves) {
        RADIO_CHECK(waves >= 1 && waves <= 64, "waves must be in 1..64, got ", waves);
        RADIO_CHECK(h2_waves >= 0 && h2_waves <= 64,
                    "h2 waves must be in 0..64 (0: the default rule), got ", h2_waves);
        RADIO_CHECK(one_token_waves >= 1 && one_token_waves <= 64,
                    "one-token waves must be in 1..64, got ", one_token_waves);
        radio::cuda::set_gemv_waves(waves, h2_waves, one_token_waves);
      },
      py::arg("waves"), py::arg("h2_waves") = 0, py::arg("one_token_waves") = 1,
      "Benchmark tuning: waves of blocks the decode path's K split aims at (gemv, fmma and qmma; "
      "the half2 one-token kernel: h2_waves, 0 for its default rule of 2 waves, 4 on the "
      "largest layers; gemv at one token on layers below 16384 chunk-units: one_token_waves; "
      "both reset to their defaults, 0 and 1, when not given).");
  m.def(
      "set_gemv_h2_min_chunk_units",
      [](std::int64_t min_chunk_units) {
        RADIO_CHECK(min_chunk_units >= -1, "gemv h2 min chunk-units must be >= -1 (-1: never), "
                    "got ", min_chunk_units);
        radio::cuda::set_gemv_h2_min_chunk_units(min_chunk_units);
      },
      py::arg("min_chunk_units"),
      "Benchmark tuning: f16 one-token calls on layers of at least this many chunks x units "
      "(chunks of 193..256 rows) take the half2 kernel (-1: never; 0: every layer, any chunk "
      "size).");
  m.def("gemv_h2_min_chunk_units", &radio::cuda::gemv_h2_min_chunk_units,
        "The current set_gemv_h2_min_chunk_units value.");
  m.def(
      "set_gemv_max_tokens",
      [](int tokens) {
        RADIO_CHECK(tokens >= 0 && tokens <= radio::cuda::kGemvMaxTokens,
                    "gemv max tokens must be in 0..", radio::cuda::kGemvMaxTokens, ", got ", tokens);
        radio::cuda::set_gemv_max_tokens(tokens);
      },
      py::arg("tokens"), "Benchmark tuning: token counts up to this take the gemv path.");
  m.def(
      "set_fmma_tokens",
      [](int min_tokens, int max_tokens, int large_max_tokens) {
        const int most = radio::cuda::kFmmaMaxTokens;
        RADIO_CHECK(min_tokens >= 1 && max_tokens >= 0 && max_tokens <= most &&
                        large_max_tokens >= 0 && large_max_tokens <= most,
                    "fmma token limits must be min >= 1 and max, large_max in 0..", most, ", got ",
                    min_tokens, ", ", max_tokens, ", ", large_max_tokens);
        radio::cuda::set_fmma_tokens(min_tokens, max_tokens, large_max_tokens);
      },
      py::arg("min_tokens"), py::arg("max_tokens"), py::arg("large_max_tokens"),
      "Benchmark tuning: token counts min..max take the fmma path (min > max: never), at most "
      "large_max of them on layers above 32768 chunk-units.");
  m.def(
      "fmma_tokens",
      [] {
        const auto t = radio::cuda::fmma_tokens();
        return py::make_tuple(t[0], t[1], t[2]);
      },
      "The fmma path's token limits (min, max, large_max).");
  m.def(
      "set_stream_tokens",
      [](int min_tokens, int max_tokens, std::int64_t min_chunk_units) {
        const int most = radio::cuda::kStreamMaxTokens;
        RADIO_CHECK(min_tokens >= 1 && max_tokens >= 0 && max_tokens <= most,
                    "stream token limits must be min >= 1 and max in 0..", most, ", got ",
                    min_tokens, ", ", max_tokens);
        RADIO_CHECK(min_chunk_units >= 0, "stream min_chunk_units must be >= 0, got ",
                    min_chunk_units);
        radio::cuda::set_stream_tokens(min_tokens, max_tokens, min_chunk_units);
      },
      py::arg("min_tokens"), py::arg("max_tokens"), py::arg("min_chunk_units") = 0,
      "Benchmark tuning: token counts min..max take the stream path on sm_90 where it applies, "
      "on layers of at least min_chunk_units 256-row chunks x 32-column units (min > max: "
      "never).");
  m.def(
      "stream_tokens",
      [] {
        const auto t = radio::cuda::stream_tokens();
        return py::make_tuple(t[0], t[1], t[2]);
      },
      "The stream path's limits (min tokens, max tokens, min chunk-units).");
  m.def(
      "set_stream_groups",
      [](int groups) {
        RADIO_CHECK(groups == 1 || groups == 2, "stream consumer groups must be 1 or 2, got ",
                    groups);
        radio::cuda::set_stream_groups(groups);
      },
      py::arg("groups"), "Benchmark tuning: 8 or 16 consumer warps per stream block.");
  m.def(
      "set_stream_stagers",
      [](int buf_stagers) {
        RADIO_CHECK(buf_stagers == 1 || buf_stagers == 2,
                    "stream stagers per buffer must be 1 or 2, got ", buf_stagers);
        radio::cuda::set_stream_stagers(buf_stagers);
      },
      py::arg("buf_stagers"),
      "Benchmark tuning: 4 or 8 warps staging x * scale per stream block (1 or 2 per buffer).");
  m.def(
      "set_stream_max_blocks",
      [](int blocks) {
        RADIO_CHECK(blocks >= 0, "stream max blocks must be >= 0 (0: one per SM), got ", blocks);
        radio::cuda::set_stream_max_blocks(blocks);
      },
      py::arg("blocks"), "Testing: at most this many stream blocks (0: one per SM).");
  m.def(
      "set_stream_h2",
      [](std::int64_t min_chunk_units, int groups) {
        RADIO_CHECK(min_chunk_units >= -1, "stream h2 min chunk-units must be >= -1 (-1: never), "
                    "got ", min_chunk_units);
        RADIO_CHECK(groups == 1 || groups == 2, "stream h2 consumer groups must be 1 or 2, got ",
                    groups);
        radio::cuda::set_stream_h2(min_chunk_units, groups);
      },
      py::arg("min_chunk_units"), py::arg("groups") = 2,
      "One token, f16 activations, sm_90, 256-row chunks: the stream kernel with half2 consumers "
      "on layers of at least min_chunk_units chunks x units (-1: never; 0: every such layer), "
      "with groups x 8 consumer warps (groups reset to 2 when not given). Checked before hgemv.");
  m.def(
      "stream_h2",
      [] {
        const auto v = radio::cuda::stream_h2();
        return py::make_tuple(v[0], v[1]);
      },
      "The current set_stream_h2 values (min chunk-units, groups).");
  m.def("set_pdl", &radio::cuda::set_pdl, py::arg("on"),
        "Benchmark A/B: launch the gemv, hgemv and stream kernels with programmatic dependent "
        "launch on sm_90, so that each may start while the kernel before it drains (default "
        "True: faster on every measured one-token layer, bench/RESULTS.md session 15).");
  m.def("pdl", &radio::cuda::pdl_enabled, "The current set_pdl value.");
  m.def("set_fence_all", &radio::cuda::set_fence_all, py::arg("on"),
        "Benchmark A/B: end the decode kernels' K split as before session 15, every thread "
        "fencing before the block's count (default False: one fence, by the counting thread).");
  m.def("fence_all", &radio::cuda::fence_all, "The current set_fence_all value.");
  m.def(
      "set_defer_output",
      [](const py::object& on) {
        if (on.is_none()) {
          radio::cuda::set_defer_output(-1);
        } else if (py::isinstance<py::bool_>(on)) {
          radio::cuda::set_defer_output(on.cast<bool>() ? 1 : 0);
        } else {
          throw py::type_error("set_defer_output takes None (where it measured faster), True or "
                               "False, got " + py::repr(on).cast<std::string>());
        }
      },
      py::arg("on"),
      "Where gemv and hgemv calls with a K split end their blocks at the partial sums' atomics "
      "and write y by a second kernel after the grid (finalize_kernel.cuh) instead of a counter "
      "per chunk and its last block. None (the default): where it measured faster end to end "
      "(select_config.cu defer_output_pays: every gemv / hgemv call of one or two tokens); "
      "True / False: on every such call of any token count or on none (benchmark A/B and "
      "tests).");
  m.def(
      "defer_output",
      []() -> py::object {
        const int mode = radio::cuda::defer_output();
        return mode < 0 ? py::object(py::none()) : py::object(py::bool_(mode > 0));
      },
      "The current set_defer_output value (None: the measured rule).");
  m.def(
      "set_stream_quantiles",
      [](bool on, std::int64_t min_block_units) {
        RADIO_CHECK(min_block_units >= 0, "min_block_units must be >= 0 (flattened units per "
                    "stream block), got ", min_block_units);
        radio::cuda::set_stream_quantiles(on, min_block_units);
      },
      py::arg("on"), py::arg("min_block_units") = 128,
      "Benchmark A/B and tests: cut the stream kernel's block ranges at the layer's work "
      "quantiles when qlinear is given them, on layers whose blocks get at least "
      "min_block_units units each (default True, 128; 0: every layer); False: equal unit "
      "counts per block, as before session 17. config()['stream_quantiles'] says whether a "
      "layer's call uses them.");
  m.def("stream_quantiles", &radio::cuda::stream_quantiles,
        "The current set_stream_quantiles values (on, min_block_units).");
  m.def("use_dequant_gemm", &radio::cuda::use_dequant_gemm, py::arg("tokens"),
        py::arg("out_features"), py::arg("in_features"),
        "True when this many tokens take the dequantize + cuBLAS path.");
  m.def(
      "config",
      [](int tokens, int n, int k, int gs) {
        const auto c = qlinear_config(tokens, n, k, gs);
        py::dict d;
        d["kernel"] = c.stream ? "stream"
                      : c.fmma ? "fmma"
                      : c.gemv ? "gemv"
                      : c.qmma ? "qmma"
                               : "mma";
        d["gemv_tokens"] = c.gemv_tokens;
        // f16 activations at one token run the half2 kernel (hgemv) with its own split
        d["gemv_h2"] = c.gemv_h2;
        d["h2_splits"] = c.h2_splits;
        d["h2_units_per_split"] = c.h2_units_per_split;
        // ... or, where stream_h2, the stream kernel with half2 consumers (h2_blocks blocks)
        d["stream_h2"] = c.stream_h2;
        d["h2_blocks"] = c.h2_blocks;
        d["h2_groups"] = c.h2_groups;
        d["threads"] = c.threads;
        d["tok_tiles"] = c.tok_tiles;
        d["warps"] = c.warps;
        d["rows_per_block"] = c.rows_per_block;
        d["slice_units"] = c.slice_units;
        d["units_per_split"] = c.units_per_split;
        d["splits"] = c.splits;
        d["tok_groups"] = c.tok_groups;
        d["grid"] = py::make_tuple(c.grid_x, c.grid_y, c.grid_z);
        d["smem_bytes"] = c.smem_bytes;
        d["workspace_bytes"] = c.workspace_bytes;
        d["pdl"] = c.pdl;
        d["fence_all"] = c.fence_all;
        d["defer_output"] = c.defer_output;
        d["stream_quantiles"] = c.stream_quantiles;
        return d;
      },
      py::arg("tokens"), py::arg("out_features"), py::arg("in_features"),
      py::arg("rows_per_group"), "The launch configuration qlinear picks (for notes and tests).");
}
