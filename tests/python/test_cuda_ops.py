"""GPU tests of radio::qlinear and radio._cuda (marked cuda; skipped without a GPU or the kernels).

Oracle: the float64 weight built from the drawn indices (test_ops.random_layer), so the CUDA
paths are checked against the format itself, not against ops.py. Relative-error budgets
(||y - ref|| / ||ref||, ref in float64 from the same x):
- f16 activations: 4e-3 (x*scale and the laplace table rounded to f16, y rounded to f16; the
  one-token half2 kernel also sums each unit's 32 products in f16);
- bf16 activations: 2.5e-2 (the same in bf16: 8-bit mantissas);
- f32 activations: 2e-3 (the tensor-core kernels multiply x*scale in f16; the 1-4 token kernel
  reads the table values of depths 1-3 as f16 pairs).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from test_ops import random_layer, reference_y, rel_err  # noqa: E402

from radio import ops  # noqa: E402
from radio._ext import _cuda  # noqa: E402

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(_cuda is None or not hasattr(_cuda, "qlinear"),
                       reason="radio._cuda kernels not built"),
]

BUDGET = {torch.float16: 4e-3, torch.bfloat16: 2.5e-2, torch.float32: 2e-3}

# (N, K, gs): aligned; K not a multiple of 32 and a ragged last chunk; gs smaller than 256;
# N, K not multiples of 128; one short chunk; a wide layer with few rows; chunks of 512 rows (the
# older tensor-core kernel takes every token count there: gemv and qmma cover chunks <= 256)
SHAPES = [(512, 512, 256), (300, 77, 128), (517, 333, 64), (1000, 1100, 256), (37, 33, 256),
          (256, 4000, 256), (700, 300, 512)]
TOKENS = [1, 3, 8, 9, 16, 17, 33, 64, 65, 130]  # 65+: ops.PREFILL_PATH


def _layer(n, k, gs, quantizer, seed, bias=True, depth=None):
    layer, w64 = random_layer(n, k, gs, quantizer, seed=seed, bias=bias, depth=depth,
                              device="cuda")
    return ops.prepare(**layer), w64


@pytest.mark.parametrize("n,k,gs", SHAPES)
@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_qlinear_matches_float64(n, k, gs, quantizer, dtype):
    layer, w64 = _layer(n, k, gs, quantizer, seed=n * 7 + k + quantizer)
    _check_token_counts(layer, w64, dtype, TOKENS, torch.Generator().manual_seed(n + k))


def _check_token_counts(layer, w64, dtype, token_counts, gen, kernel=None):
    """qlinear against the float64 reference for each token count (on `kernel` when given)."""
    n, k, gs = layer["out_features"], layer["in_features"], layer["rows_per_group"]
    for tokens in token_counts:
        if kernel is not None:
            assert _cuda.config(tokens, n, k, gs)["kernel"] == kernel, tokens
        x = torch.randn(tokens, k, generator=gen).to(dtype).cuda()
        y = ops.qlinear(x, **layer)
        assert y.shape == (tokens, n) and y.dtype == dtype
        assert torch.isfinite(y).all(), (tokens, "non-finite output")
        err = rel_err(y, reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[dtype], (tokens, err)


def test_gemv_and_qmma_when_fmma_is_off():
    """The gemv instances for 2..8 tokens (5..8 only when set_gemv_max_tokens allows them) and
    qmma for 5..64, which the default fmma range (3..32) takes over from."""
    layer, w64 = _layer(1000, 1100, 256, 0, seed=21)
    before = _cuda.fmma_tokens()
    try:
        _cuda.set_fmma_tokens(1, 0, 0)
        _cuda.set_gemv_max_tokens(8)
        for tokens in (2, 5, 8):
            assert _cuda.config(tokens, 1000, 1100, 256)["kernel"] == "gemv"
            x = torch.randn(tokens, 1100, device="cuda").half()
            y = ops.qlinear(x, **layer)
            assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]
        _cuda.set_gemv_max_tokens(4)
        for tokens in (5, 16):
            assert _cuda.config(tokens, 1000, 1100, 256)["kernel"] == "qmma"
            x = torch.randn(tokens, 1100, device="cuda").half()
            y = ops.qlinear(x, **layer)
            assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]
    finally:
        _cuda.set_gemv_max_tokens(4)
        _cuda.set_fmma_tokens(*before)
    assert _cuda.config(8, 1000, 1100, 256)["kernel"] == "fmma"
    for tokens, kernel in ((1, "gemv"), (2, "gemv"), (3, "fmma"), (32, "fmma"), (33, "qmma")):
        assert _cuda.config(tokens, 1000, 1100, 256)["kernel"] == kernel, tokens
    # 25..32 tokens on a layer above 32768 chunk-units (49152x12288: 192 x 384) stay on qmma
    assert _cuda.config(24, 49152, 12288, 256)["kernel"] == "fmma"
    assert _cuda.config(32, 49152, 12288, 256)["kernel"] == "qmma"
    assert _cuda.config(32, 28672, 8192, 256)["kernel"] == "fmma"


def _expected_kernel(tokens: int) -> str:
    """The default routing for chunks of <= 256 rows (cuda/select_config.cu) on layers the stream
    kernel does not take (N not a multiple of 256, or fewer than 4096 chunk-units)."""
    return "gemv" if tokens <= 2 else "fmma" if tokens <= 32 else "qmma"


@pytest.mark.parametrize("depth", list(range(0, 9)))
@pytest.mark.parametrize("quantizer", [0, 1])
def test_every_single_depth(depth, quantizer):
    """All units at one depth (0-bit: y = loc terms + bias only)."""
    layer, w64 = _layer(300, 200, 128, quantizer, seed=depth, depth=depth)
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(depth)).half().cuda()
    err = rel_err(ops.qlinear(x, **layer), reference_y(x, w64, layer["bias"].cpu()))
    assert err < BUDGET[torch.float16], err


def _raw_call(layer, x, y, stream):
    n, k, gs = layer["out_features"], layer["in_features"], layer["rows_per_group"]
    m = x.shape[0]
    ws = torch.empty(_cuda.workspace_bytes(m, n, k, gs), dtype=torch.uint8, device="cuda")
    code = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}[x.dtype]
    _cuda.qlinear(x.data_ptr(), code, m, layer["qweight"].data_ptr(), layer["scale"].data_ptr(),
                  layer["loc"].data_ptr(), layer["depth"].data_ptr(),
                  layer["unit_offset"].data_ptr(), layer["row_perm"].data_ptr(),
                  layer["col_perm"].data_ptr(), layer["bias"].data_ptr(), y.data_ptr(), n, k, gs,
                  layer["quantizer"], ws.data_ptr(), ws.numel(), stream,
                  layer["qweight"].numel())


def _check_poisoned_output(layer_and_w64, tokens, kernel):
    """y poisoned with NaN, one raw call on `kernel`: every element overwritten, y correct.
    Returns the launch configuration."""
    layer, w64 = layer_and_w64
    n, k, gs = layer["out_features"], layer["in_features"], layer["rows_per_group"]
    cfg = _cuda.config(tokens, n, k, gs)
    assert cfg["kernel"] == kernel, cfg
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(3)).half().cuda()
    y = torch.full((tokens, n), float("nan"), dtype=torch.float16, device="cuda")
    _raw_call(layer, x, y, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert not torch.isnan(y).any(), cfg
    assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16], cfg
    return cfg


@pytest.mark.parametrize("n,k,gs", [(1000, 1100, 256), (1000, 32, 256)])
@pytest.mark.parametrize("tokens", [1, 2, 3, 8, 16, 17, 33, 64])
def test_every_output_written_single_and_split(n, k, gs, tokens):
    """Poisoned output (NaN): every element must be overwritten, with and without a K split, on
    the default kernels (gemv for 1..2 tokens, fmma for 3..32, qmma for 33..64)."""
    cfg = _check_poisoned_output(_layer(n, k, gs, 0, seed=tokens), tokens, _expected_kernel(tokens))
    if k <= 32:
        assert cfg["splits"] == 1, cfg  # one unit: one split, the direct-write path
    else:
        assert cfg["splits"] > 1, cfg


def test_repeatable():
    """Same input twice: the K-split atomics may reorder f32 sums, nothing more."""
    layer, _ = _layer(1000, 1100, 256, 0, seed=1)
    x = torch.randn(16, 1100, device="cuda").half()
    a, b = ops.qlinear(x, **layer), ops.qlinear(x, **layer)
    assert (a.float() - b.float()).abs().max().item() <= 2e-3 * a.float().abs().max().item()


@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("n,k,gs", [(517, 333, 64), (300, 1024, 256), (40, 25000, 256)])
def test_dequantize_kernel_matches_reference(quantizer, n, k, gs):
    """Row tiles of 8 and 1 rows (float32 output: 333 and 1024 columns fit 8-row tiles, the
    1024-column rows take 16-byte stores) and a layer too wide for a one-row tile (25000 x 4
    bytes > 96 KB: the scattered-store fallback)."""
    layer, w64 = _layer(n, k, gs, quantizer, seed=5)
    args = {key: layer[key] for key in ("qweight", "scale", "loc", "depth", "row_perm",
                                        "col_perm", "out_features", "in_features",
                                        "rows_per_group", "quantizer")}
    w = torch.ops.radio.dequantize(*args.values())
    assert w.is_cuda and w.dtype == torch.float32
    np.testing.assert_allclose(w.double().cpu().numpy(), w64, rtol=1e-6, atol=1e-7)


def test_cuda_graph_capture_and_replay():
    layer, w64 = _layer(1000, 1100, 256, 0, seed=2)
    outs = {}
    for tokens in (1, 16, 130):
        static_x = torch.randn(tokens, 1100, device="cuda").half()
        ops.qlinear(static_x, **layer)  # warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = ops.qlinear(static_x, **layer)
        for seed in range(3):
            fresh = torch.randn(tokens, 1100, generator=torch.Generator().manual_seed(seed))
            static_x.copy_(fresh.half().cuda())
            graph.replay()
            torch.cuda.synchronize()
            err = rel_err(static_y, reference_y(static_x, w64, layer["bias"].cpu()))
            assert err < BUDGET[torch.float16], (tokens, seed, err)
        outs[tokens] = static_y
    assert len(outs) == 3


def test_opcheck_cuda():
    layer, _ = _layer(300, 77, 128, 0, seed=4)
    for tokens in (4, 100):
        x = torch.randn(tokens, 77, device="cuda").half()
        args = (x, layer["qweight"], layer["scale"], layer["loc"], layer["depth"],
                layer["row_perm"], layer["col_perm"], layer["bias"], 300, 77, 128, 0,
                layer["unit_offset"])
        torch.library.opcheck(torch.ops.radio.qlinear.default, args)


def test_torch_compile_fullgraph():
    layer, w64 = _layer(300, 77, 128, 1, seed=6)

    @torch.compile(fullgraph=True)
    def f(x):
        return torch.relu(ops.qlinear(x, **layer)) * 2

    x = torch.randn(8, 77, device="cuda").half()
    y = f(x)
    ref = 2 * np.maximum(reference_y(x, w64, layer["bias"].cpu()), 0)
    assert rel_err(y, ref) < BUDGET[torch.float16]


def test_sanitize_small():
    """A few small launches of every path (run under compute-sanitizer by the device script)."""
    for quantizer in (0, 1):
        layer, w64 = _layer(300, 77, 128, quantizer, seed=8 + quantizer)
        for tokens, dtype in ((1, torch.float16), (3, torch.bfloat16), (8, torch.float32),
                              (16, torch.bfloat16), (40, torch.float32),
                              (70, torch.float16)):
            x = torch.randn(tokens, 77, device="cuda").to(dtype)
            y = ops.qlinear(x, **layer)
            assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[dtype]
        # K split (workspace, counters, last-block write) on both kernels; two token groups
        layer, w64 = _layer(1000, 1100, 256, quantizer, seed=9 + quantizer)
        for tokens in (1, 8, 16, 40):
            assert _cuda.config(tokens, 1000, 1100, 256)["splits"] > 1
            x = torch.randn(tokens, 1100, device="cuda").half()
            y = ops.qlinear(x, **layer)
            assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]


@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("path", ["dequant", "kernel"])
def test_prefill_paths(quantizer, path, monkeypatch):
    """More than 64 tokens: dequantize + cuBLAS, and the kernel in token groups of 64."""
    layer, w64 = _layer(517, 333, 64, quantizer, seed=9)
    monkeypatch.setattr(ops, "PREFILL_PATH", path)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(150, 333, device="cuda").to(dtype)
        err = rel_err(ops.qlinear(x, **layer), reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[dtype], (dtype, err)


@pytest.fixture
def fmma_on():
    """Every 1..32-token call on the fmma kernel (fmma_kernel.cuh) for the test's duration."""
    before = _cuda.fmma_tokens()
    _cuda.set_fmma_tokens(1, 32, 32)
    try:
        yield
    finally:
        _cuda.set_fmma_tokens(*before)


FMMA_TOKENS = [1, 2, 3, 8, 9, 16, 17, 32]


@pytest.mark.parametrize("n,k,gs", [s for s in SHAPES if s[2] <= 256])
@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fmma_matches_float64(n, k, gs, quantizer, dtype, fmma_on):
    """The fmma kernel on awkward shapes: 4-byte copies where rows are not multiples of 4 (517
    rows, 37 rows), 16-byte copies elsewhere, ragged last chunks, K not a multiple of 32."""
    layer, w64 = _layer(n, k, gs, quantizer, seed=n * 5 + k + quantizer)
    _check_token_counts(layer, w64, dtype, FMMA_TOKENS, torch.Generator().manual_seed(n + k + 1),
                        kernel="fmma")


@pytest.mark.parametrize("depth", list(range(0, 9)))
@pytest.mark.parametrize("quantizer", [0, 1])
def test_fmma_every_single_depth(depth, quantizer, fmma_on):
    """All units at one depth: pair tables (1..4), single tables (5..8), 0-bit (loc only)."""
    layer, w64 = _layer(300, 200, 128, quantizer, seed=depth + 40, depth=depth)
    for tokens in (1, 5, 16):
        x = torch.randn(tokens, 200, generator=torch.Generator().manual_seed(depth)).half().cuda()
        err = rel_err(ops.qlinear(x, **layer), reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[torch.float16], (tokens, err)


@pytest.mark.parametrize("n,k,gs", [(1000, 1100, 256), (1000, 32, 256), (517, 333, 64)])
@pytest.mark.parametrize("tokens", [1, 4, 16, 32])
def test_fmma_every_output_written(n, k, gs, tokens, fmma_on):
    """Poisoned output (NaN) on the fmma kernel, with and without a K split."""
    cfg = _check_poisoned_output(_layer(n, k, gs, 0, seed=tokens + 60), tokens, "fmma")
    assert (cfg["splits"] == 1) == (k <= 32 * cfg["units_per_split"]), cfg


def _check_small_launches(shapes, token_dtypes, seed, *context):
    """qlinear on each (N, K, gs) layer of both quantizers at each (tokens, dtype), against the
    float64 reference (the sanitize_small tests: few, small launches for compute-sanitizer)."""
    for quantizer in (0, 1):
        for (n, k, gs) in shapes:
            layer, w64 = _layer(n, k, gs, quantizer, seed=seed + quantizer)
            for tokens, dtype in token_dtypes:
                x = torch.randn(tokens, k, device="cuda").to(dtype)
                y = ops.qlinear(x, **layer)
                err = rel_err(y, reference_y(x, w64, layer["bias"].cpu()))
                assert err < BUDGET[dtype], (n, k, tokens, dtype, *context, err)


def test_fmma_sanitize_small(fmma_on):
    """Small fmma launches of every copy width, token tile and dtype (run under compute-sanitizer
    by the device script: -k sanitize_small)."""
    _check_small_launches(((300, 77, 128), (1000, 1100, 256), (517, 333, 64)),
                          ((1, torch.float16), (3, torch.bfloat16), (16, torch.float32),
                           (32, torch.float16)), 70)


def _check_graph_replay(layer, w64, token_counts):
    """qlinear captured in a CUDA graph, replayed on new inputs, against the float64 reference."""
    k = layer["in_features"]
    for tokens in token_counts:
        static_x = torch.randn(tokens, k, device="cuda").half()
        ops.qlinear(static_x, **layer)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = ops.qlinear(static_x, **layer)
        for seed in range(2):
            static_x.copy_(torch.randn(tokens, k, generator=torch.Generator().manual_seed(seed))
                           .half().cuda())
            graph.replay()
            torch.cuda.synchronize()
            err = rel_err(static_y, reference_y(static_x, w64, layer["bias"].cpu()))
            assert err < BUDGET[torch.float16], (tokens, seed, err)


def test_fmma_cuda_graph_replay(fmma_on):
    _check_graph_replay(*_layer(1000, 1100, 256, 0, seed=80), (1, 16))


@pytest.fixture
def h2_on():
    """Every f16 one-token call on the half2 kernel (hgemv_kernel.cuh) for the test's duration
    (the stream kernel's half2 consumers, checked first, off)."""
    before, before_stream = _cuda.gemv_h2_min_chunk_units(), _cuda.stream_h2()
    _cuda.set_gemv_h2_min_chunk_units(0)
    _cuda.set_stream_h2(-1)
    try:
        yield
    finally:
        _cuda.set_gemv_h2_min_chunk_units(before)
        _cuda.set_stream_h2(*before_stream)


def _f16_one_token_err(layer, w64, seed):
    x = torch.randn(1, layer["in_features"], generator=torch.Generator().manual_seed(seed))
    x = x.half().cuda()
    y = ops.qlinear(x, **layer)
    assert y.shape == (1, layer["out_features"]) and torch.isfinite(y).all()
    return rel_err(y, reference_y(x, w64, layer["bias"].cpu()))


def _check_bf16_f32_one_token(layer, w64):
    """One bf16 and one f32 token against the float64 reference (the half2 paths take f16 only,
    so these run gemv whatever the knobs say)."""
    n, k = layer["out_features"], layer["in_features"]
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(1, k, generator=torch.Generator().manual_seed(n)).to(dtype).cuda()
        err = rel_err(ops.qlinear(x, **layer), reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[dtype], (dtype, err)


# the SHAPES the gemv paths take (chunks <= 256 rows); a long K (384 units: the f16 sums of many
# units) on a few rows; blocks whose warp groups walk several units each (on an H100: 4 per group
# in full 256-row chunks, the immediate-offset loads; 8 per group at gs = 64, the pointer walk);
# chunks of 96 rows (not a multiple of 64)
H2_SHAPES = [s for s in SHAPES if s[2] <= 256] + [(256, 12288, 256), (4096, 16384, 256),
                                                  (2048, 16384, 64), (500, 700, 96)]


@pytest.mark.parametrize("n,k,gs", H2_SHAPES)
@pytest.mark.parametrize("quantizer", [0, 1])
def test_hgemv_matches_float64(n, k, gs, quantizer, h2_on):
    """The half2 kernel against the float64 reference, and no worse than 2x the f32 gemv kernel's
    error on the same input beyond the f16 output rounding."""
    layer, w64 = _layer(n, k, gs, quantizer, seed=n * 3 + k + quantizer)
    assert _cuda.config(1, n, k, gs)["gemv_h2"]
    err_h2 = _f16_one_token_err(layer, w64, seed=n + k)
    assert err_h2 < BUDGET[torch.float16], err_h2
    _cuda.set_gemv_h2_min_chunk_units(-1)
    assert not _cuda.config(1, n, k, gs)["gemv_h2"]
    err_f32 = _f16_one_token_err(layer, w64, seed=n + k)
    assert err_h2 < 2 * err_f32 + 5e-4, (err_h2, err_f32)
    # other activation types take the gemv kernel whatever the knob says
    _cuda.set_gemv_h2_min_chunk_units(0)
    _check_bf16_f32_one_token(layer, w64)


@pytest.mark.parametrize("depth", list(range(0, 9)))
@pytest.mark.parametrize("quantizer", [0, 1])
def test_hgemv_every_single_depth(depth, quantizer, h2_on):
    """All units at one depth: pair tables (1..4), single tables joined by a byte permute (5..8),
    0-bit (loc only)."""
    layer, w64 = _layer(300, 200, 128, quantizer, seed=depth + 90, depth=depth)
    err = _f16_one_token_err(layer, w64, seed=depth)
    assert err < BUDGET[torch.float16], err


@pytest.mark.parametrize("n,k,gs", [(1000, 1100, 256), (1000, 32, 256), (517, 333, 64),
                                    (37, 33, 256)])
def test_hgemv_every_output_written(n, k, gs, h2_on):
    """Poisoned output (NaN) on the half2 kernel, with and without a K split (one unit: group 1
    has none; 37 rows: one warp per group, row b beyond the chunk)."""
    cfg = _check_poisoned_output(_layer(n, k, gs, 0, seed=n + 7), 1, "gemv")
    assert cfg["gemv_h2"], cfg
    if k <= 32:
        assert cfg["h2_splits"] == 1, cfg  # one unit: one split, the direct-write path
    else:
        assert cfg["h2_splits"] > 1, cfg


def test_hgemv_knob_and_default():
    """The knob's range, and the default routing (cuda/select_config.cu): f16 one-token calls on
    layers of at least 16384 chunk-units (256-row chunks x 32-column units), where the stream
    kernel's half2 consumers do not take them (switched off here)."""
    with pytest.raises(ValueError, match="gemv h2 min chunk-units must be >= -1"):
        _cuda.set_gemv_h2_min_chunk_units(-2)
    with pytest.raises(ValueError, match=r"h2 waves must be in 0..64 \(0: the default rule\), "
                                         "got -1"):
        _cuda.set_gemv_waves(6, -1)
    assert _cuda.gemv_h2_min_chunk_units() == 16384
    before_stream = _cuda.stream_h2()
    _cuda.set_stream_h2(-1)
    try:
        _check_hgemv_default_routing()
    finally:
        _cuda.set_stream_h2(*before_stream)


def _check_hgemv_default_routing():
    for n, k, h2 in ((49152, 12288, True), (8192, 28672, True), (28672, 8192, True),
                     (13824, 5120, False), (4096, 4096, False), (16384, 8192, True),
                     (16384, 8160, False)):  # 64 chunks x 256 units, and x 255
        assert _cuda.config(1, n, k, 256)["gemv_h2"] == h2, (n, k)
    assert not _cuda.config(2, 49152, 12288, 256)["gemv_h2"]
    # chunks of 128 rows (blocks of 2 x 64 threads: not measured) keep gemv by default
    assert not _cuda.config(1, 16384, 8192, 128)["gemv_h2"]
    assert _cuda.config(1, 16384, 8192, 200)["gemv_h2"]  # 200 rows: 2 x 128 threads
    assert not _cuda.config(1, 700, 300, 512)["gemv_h2"]  # chunks of 512 rows: the mma kernel
    layer, w64 = _layer(300, 77, 256, 0, seed=96)
    before = _cuda.gemv_h2_min_chunk_units()
    try:
        _cuda.set_gemv_h2_min_chunk_units(2 * 3)  # 2 chunks x 3 units: taken
        assert _cuda.config(1, 300, 77, 256)["gemv_h2"]
        _cuda.set_gemv_h2_min_chunk_units(2 * 3 + 1)
        assert not _cuda.config(1, 300, 77, 256)["gemv_h2"]
        assert _f16_one_token_err(layer, w64, seed=1) < BUDGET[torch.float16]
    finally:
        _cuda.set_gemv_h2_min_chunk_units(before)


def test_hgemv_cuda_graph_replay(h2_on):
    _check_graph_replay(*_layer(1000, 1100, 256, 0, seed=97), (1,))


def test_hgemv_sanitize_small(h2_on):
    """Small half2 launches (run under compute-sanitizer by the device script)."""
    _check_small_launches(((300, 77, 128), (1000, 1100, 256), (517, 333, 64), (37, 33, 256)),
                          ((1, torch.float16),), 95)


@pytest.mark.parametrize("h2", [True, False])
def test_deferred_output_sanitize_small(h2):
    """Small gemv / hgemv launches with the K split's output deferred to the finalize kernel
    (set_defer_output; run under compute-sanitizer by the device script)."""
    before = (_cuda.defer_output(), _cuda.gemv_h2_min_chunk_units(), _cuda.stream_h2())
    _cuda.set_defer_output(True)
    _cuda.set_gemv_h2_min_chunk_units(0 if h2 else -1)
    _cuda.set_stream_h2(-1)
    try:
        _check_small_launches(((300, 77, 128), (1000, 1100, 256), (517, 333, 64), (37, 33, 256)),
                              ((1, torch.float16), (2, torch.bfloat16), (1, torch.float32)), 97)
    finally:
        _cuda.set_defer_output(before[0])
        _cuda.set_gemv_h2_min_chunk_units(before[1])
        _cuda.set_stream_h2(*before[2])


# last: the error paths of the raw entry point
def test_bad_arguments_raise_value_error():
    layer, _ = _layer(300, 77, 128, 0, seed=7)
    x = torch.randn(2, 77, device="cuda").half()
    y = torch.empty(2, 300, device="cuda").half()
    with pytest.raises(ValueError, match="at least one token, got 0"):
        _cuda.qlinear(x.data_ptr(), 0, 0, *([1] * 8), y.data_ptr(), 300, 77, 128, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="quantizer must be 0 .laplace. or 1 .uniform., got 3"):
        _cuda.qlinear(x.data_ptr(), 0, 2, *([1] * 8), y.data_ptr(), 300, 77, 128, 3, 0, 0, 0)
    # a layer wide enough to be split along K on both kernels needs a workspace (checked before
    # any pointer is used)
    for tokens in (2, 16):
        assert _cuda.workspace_bytes(tokens, 1000, 1100, 256) > 0
        with pytest.raises(ValueError, match="workspace of 0 bytes is too small"):
            _cuda.qlinear(x.data_ptr(), 0, tokens, *([1] * 8), y.data_ptr(), 1000, 1100, 256, 0,
                          0, 0, 0)


@pytest.fixture
def stream_on():
    """Every call that the stream kernel (stream_kernel.cuh, sm_90) can take goes to it for the
    test's duration."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90 (TMA)")
    before = _cuda.stream_tokens()
    _cuda.set_stream_tokens(1, 16, 0)
    try:
        yield
    finally:
        _cuda.set_stream_tokens(*before)


# (N, K): N a multiple of 256 (the kernel's requirement, gs = 256). One chunk with 3 units (fewer
# blocks than SMs), K not a multiple of 32, a block per unit (256x4000), blocks across chunk
# boundaries (2048x1024), units of 33 columns. With 3 blocks (set_stream_max_blocks) each block
# walks several pieces and chunks and wraps the ring of stages.
STREAM_SHAPES = [(256, 77), (512, 512), (1024, 1100), (256, 4000), (2048, 1024), (768, 33)]
STREAM_TOKENS = [1, 2, 3, 5, 8, 9, 16]


@pytest.fixture
def stream_setting():
    """Restores the stream kernel's groups, block limit, stagers and ranges after a test that
    changes them."""
    yield
    _cuda.set_stream_groups(2)
    _cuda.set_stream_max_blocks(0)
    _cuda.set_stream_stagers(2)
    _cuda.set_stream_quantiles(True)


@pytest.mark.parametrize("groups,blocks,stagers", [(2, 0, 2), (1, 3, 1), (2, 3, 2)])
@pytest.mark.parametrize("n,k", STREAM_SHAPES)
@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_stream_matches_float64(n, k, quantizer, dtype, groups, blocks, stagers, stream_on,
                                stream_setting):
    """The stream kernel against the float64 reference; depths uniform in 0..8."""
    _cuda.set_stream_groups(groups)
    _cuda.set_stream_max_blocks(blocks)
    _cuda.set_stream_stagers(stagers)
    layer, w64 = _layer(n, k, 256, quantizer, seed=n * 3 + k + quantizer)
    _check_token_counts(layer, w64, dtype, STREAM_TOKENS,
                        torch.Generator().manual_seed(n + k + 2), kernel="stream")


def test_stream_not_taken_where_it_does_not_apply(stream_on):
    """Chunks other than 256 rows, N not a multiple of 256, more than 16 tokens: other kernels."""
    assert _cuda.config(1, 512, 512, 256)["kernel"] == "stream"
    assert _cuda.config(1, 512, 512, 128)["kernel"] != "stream"
    assert _cuda.config(1, 1000, 512, 256)["kernel"] != "stream"
    assert _cuda.config(16, 512, 512, 256)["kernel"] == "stream"
    assert _cuda.config(17, 512, 512, 256)["kernel"] != "stream"


def test_stream_default_routing():
    """The default (cuda/select_config.cu): the stream kernel takes 4..16 tokens on layers of at
    least 4096 chunks x units (sm_90); 1..3 tokens and smaller layers keep gemv / fmma."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90 (TMA)")
    assert _cuda.stream_tokens() == (4, 16, 4096)
    for tokens, n, k, kernel in ((16, 49152, 12288, "stream"), (4, 4096, 11008, "stream"),
                                 (12, 11008, 4096, "stream"), (16, 4096, 4096, "fmma"),
                                 (3, 49152, 12288, "fmma"), (17, 49152, 12288, "fmma"),
                                 (1, 49152, 12288, "gemv"), (16, 4000, 11008, "fmma")):
        assert _cuda.config(tokens, n, k, 256)["kernel"] == kernel, (tokens, n, k)
    assert _cuda.config(16, 49152, 12288, 128)["kernel"] == "fmma"  # 128-row chunks


def test_stream_min_chunk_units(stream_on):
    """Layers below the chunk-units floor keep the other kernels (512x512: 2 chunks x 16 units)."""
    _cuda.set_stream_tokens(1, 16, 33)
    assert _cuda.config(1, 512, 512, 256)["kernel"] != "stream"
    assert _cuda.config(1, 512, 1056, 256)["kernel"] == "stream"  # 2 x 33
    _cuda.set_stream_tokens(1, 16, 32)
    assert _cuda.config(1, 512, 512, 256)["kernel"] == "stream"


@pytest.mark.parametrize("depth", list(range(0, 9)))
@pytest.mark.parametrize("quantizer", [0, 1])
def test_stream_every_single_depth(depth, quantizer, stream_on):
    """All units at one depth: pair tables (1..4), single tables (5..8), 0-bit (no words)."""
    layer, w64 = _layer(512, 640, 256, quantizer, seed=depth + 90, depth=depth)
    for tokens in (1, 4, 8, 16):
        x = torch.randn(tokens, 640, generator=torch.Generator().manual_seed(depth)).half().cuda()
        err = rel_err(ops.qlinear(x, **layer), reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[torch.float16], (tokens, err)


def _uneven_depths(n: int, k: int, kind: str, seed: int) -> torch.Tensor:
    """uint8 [C, U] depths whose words are spread unevenly over the units: "sorted", random
    depths sorted deepest first in every chunk (the order radio.quantize writes) with the last
    quarter of each chunk's units at 0 bits; "first", all words in the first chunk (8 bits),
    0 bits everywhere else."""
    chunks, units = math.ceil(n / 256), math.ceil(k / 32)
    if kind == "first":
        depth = torch.zeros(chunks, units, dtype=torch.int64)
        depth[0] = 8
        return depth.to(torch.uint8)
    g = torch.Generator().manual_seed(seed)
    depth = torch.randint(1, 9, (chunks, units), generator=g).sort(dim=1, descending=True).values
    depth[:, units - units // 4:] = 0
    return depth.to(torch.uint8)


@pytest.mark.parametrize("kind", ["sorted", "first"])
@pytest.mark.parametrize("n,k", [(2048, 1024), (1024, 4000), (768, 1056)])
@pytest.mark.parametrize("blocks", [0, 3, 7])
@pytest.mark.parametrize("quantiles", [True, False])
def test_stream_ranges_on_uneven_layers(kind, n, k, blocks, quantiles, stream_on,
                                        stream_setting):
    """The blocks' ranges cut at the layer's work quantiles (stream_layout.cuh block_range, the
    table from prepare()) and, with set_stream_quantiles(False), at equal unit counts: layers
    whose words are spread unevenly (_uneven_depths: 0-bit units at and after cuts; "first": every
    word in chunk 0, so most blocks cover 0-bit units only) against the float64 reference at 1, 8
    and 16 tokens, and every output row written."""
    _cuda.set_stream_max_blocks(blocks)
    _cuda.set_stream_quantiles(quantiles, 0)  # (these small layers' blocks take a few units)
    assert _cuda.config(16, n, k, 256)["stream_quantiles"] == quantiles
    depth = _uneven_depths(n, k, kind, seed=n + k)
    layer, w64 = _layer(n, k, 256, 1, seed=n + k + blocks, depth=depth)
    q = layer["work_quantiles"].cpu().long()
    assert q[0] == 0 and q[-1] == depth.numel() and bool((q[1:] >= q[:-1]).all())
    _check_token_counts(layer, w64, torch.float16, (1, 8, 16),
                        torch.Generator().manual_seed(n + blocks), kernel="stream")
    _check_poisoned_output((layer, w64), 16, "stream")


def test_stream_quantiles_rule(stream_setting):
    """The table is used where a stream block gets at least 128 flattened units (8192x28672: 217
    on 132 SMs), not on the 7B up/down shapes (42), where it measured slower (select_config.cu
    g_stream_quantile_min_units); set_stream_quantiles' bounds and off switch."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90 (TMA)")
    grid = _cuda.config(16, 4096, 11008, 256)["grid"][0]
    if not 44 <= grid <= 224:
        pytest.skip(f"the rule's two shapes fall on either side of it for 44..224 SMs, got {grid}")
    assert _cuda.config(16, 8192, 28672, 256)["stream_quantiles"]
    assert not _cuda.config(16, 4096, 11008, 256)["stream_quantiles"]
    assert _cuda.stream_quantiles() == (True, 128)
    _cuda.set_stream_quantiles(True, 0)
    assert _cuda.config(16, 4096, 11008, 256)["stream_quantiles"]
    _cuda.set_stream_quantiles(False)
    assert not _cuda.config(16, 8192, 28672, 256)["stream_quantiles"]
    with pytest.raises(ValueError, match="min_block_units must be >= 0.*got -1"):
        _cuda.set_stream_quantiles(True, -1)


@pytest.mark.parametrize("steps", [1, 2, 5, 1024, 5000])
def test_stream_any_quantile_count(steps, stream_on, stream_setting):
    """The kernel interpolates any table length (1 step: equal work shares of the whole layer,
    more steps than blocks or units) to the same correct sums, at 3 and at all SMs' blocks."""
    depth = _uneven_depths(2048, 1024, "sorted", seed=3)
    layer, w64 = _layer(2048, 1024, 256, 0, seed=steps, depth=depth)
    layer["work_quantiles"] = ops.work_quantiles(layer["depth"], steps=steps)
    _cuda.set_stream_quantiles(True, 0)
    for blocks in (3, 0):
        _cuda.set_stream_max_blocks(blocks)
        _check_token_counts(layer, w64, torch.float16, (1, 16),
                            torch.Generator().manual_seed(steps), kernel="stream")


def test_stream_foreign_quantiles_sanitize_small(stream_on, stream_setting):
    """A table that is not the layer's (cuts beyond its units, falling or negative entries)
    passes the per-call checks on CUDA (no host sync per call); the kernel clamps its cuts into
    the layer, so the call reads and writes nothing outside its tensors (the sums are then wrong:
    compute-sanitizer runs this test, -k sanitize_small). The layer's own table afterwards gives
    the right sums again."""
    layer, w64 = _layer(1024, 1100, 256, 0, seed=4)
    _cuda.set_stream_quantiles(True, 0)
    assert _cuda.config(16, 1024, 1100, 256)["stream_quantiles"]
    own = layer["work_quantiles"]
    total = layer["depth"].numel()
    x = torch.randn(16, 1100, device="cuda").half()
    for table in ([0, 10 * total], [0, total // 2, total // 3, total], [5 * total, -7, 3]):
        layer["work_quantiles"] = torch.tensor(table, dtype=torch.int32, device="cuda")
        ops.qlinear(x, **layer)
        torch.cuda.synchronize()
    layer["work_quantiles"] = own
    _check_token_counts(layer, w64, torch.float16, (16,), torch.Generator().manual_seed(4),
                        kernel="stream")


@pytest.mark.parametrize("n,k", [(1024, 1100), (256, 77), (2048, 1024)])
@pytest.mark.parametrize("tokens", [1, 8, 16])
@pytest.mark.parametrize("blocks", [0, 3])
def test_stream_every_output_written(n, k, tokens, blocks, stream_on, stream_setting):
    """Poisoned output (NaN): every row written by the block that completes its chunk."""
    _cuda.set_stream_max_blocks(blocks)
    _check_poisoned_output(_layer(n, k, 256, 0, seed=tokens + 95), tokens, "stream")


def test_stream_sanitize_small(stream_on, stream_setting):
    """Small stream launches of every dtype, group count and a block limit (run under
    compute-sanitizer by the device script: -k sanitize_small)."""
    for groups, blocks, stagers in ((1, 0, 2), (2, 0, 2), (2, 3, 1), (1, 3, 1)):
        _cuda.set_stream_groups(groups)
        _cuda.set_stream_max_blocks(blocks)
        _cuda.set_stream_stagers(stagers)
        _check_small_launches(((256, 77, 256), (1024, 1100, 256)),
                              ((1, torch.float16), (3, torch.bfloat16), (8, torch.float32),
                               (13, torch.float16)), 97, groups, blocks, stagers)


def test_stream_cuda_graph_replay(stream_on):
    _check_graph_replay(*_layer(1024, 1100, 256, 0, seed=99), (1, 8, 16))


def test_stream_knob_checks():
    with pytest.raises(ValueError, match="stream token limits"):
        _cuda.set_stream_tokens(0, 8)
    with pytest.raises(ValueError, match="stream token limits"):
        _cuda.set_stream_tokens(1, 17)
    with pytest.raises(ValueError, match="min_chunk_units must be >= 0"):
        _cuda.set_stream_tokens(1, 16, -1)
    with pytest.raises(ValueError, match="groups must be 1 or 2"):
        _cuda.set_stream_groups(3)
    with pytest.raises(ValueError, match="max blocks must be >= 0"):
        _cuda.set_stream_max_blocks(-1)
    with pytest.raises(ValueError, match="stagers per buffer must be 1 or 2"):
        _cuda.set_stream_stagers(0)


@pytest.fixture
def stream_h2_on():
    """Every f16 one-token call that the stream kernel's half2 consumers (stream_h2.cuh, sm_90)
    can take goes to them for the test's duration; groups, block limit and stagers restored."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90 (TMA)")
    before = _cuda.stream_h2()
    _cuda.set_stream_h2(0)
    try:
        yield
    finally:
        _cuda.set_stream_h2(*before)
        _cuda.set_stream_max_blocks(0)
        _cuda.set_stream_stagers(2)


@pytest.mark.parametrize("groups,blocks,stagers", [(2, 0, 2), (1, 3, 1), (2, 3, 2)])
@pytest.mark.parametrize("n,k", STREAM_SHAPES + [(512, 12288)])
@pytest.mark.parametrize("quantizer", [0, 1])
def test_stream_h2_matches_float64(n, k, quantizer, groups, blocks, stagers, stream_h2_on):
    """The half2 consumers against the float64 reference (depths uniform in 0..8; with 3 blocks
    each block walks several pieces and chunks and wraps the ring, units across its end), no
    worse than 2x the f32 gemv kernel's error on the same input beyond the f16 output rounding;
    bf16 and f32 activations keep gemv."""
    _cuda.set_stream_h2(0, groups)
    _cuda.set_stream_max_blocks(blocks)
    _cuda.set_stream_stagers(stagers)
    layer, w64 = _layer(n, k, 256, quantizer, seed=n * 5 + k + quantizer)
    cfg = _cuda.config(1, n, k, 256)
    assert cfg["kernel"] == "gemv" and cfg["stream_h2"] and not cfg["gemv_h2"], cfg
    assert cfg["h2_groups"] == groups, cfg
    err_h2 = _f16_one_token_err(layer, w64, seed=n + k)
    assert err_h2 < BUDGET[torch.float16], err_h2
    _cuda.set_stream_h2(-1)
    before = _cuda.gemv_h2_min_chunk_units()
    _cuda.set_gemv_h2_min_chunk_units(-1)
    try:
        assert not _cuda.config(1, n, k, 256)["stream_h2"]
        err_f32 = _f16_one_token_err(layer, w64, seed=n + k)
    finally:
        _cuda.set_gemv_h2_min_chunk_units(before)
    assert err_h2 < 2 * err_f32 + 5e-4, (err_h2, err_f32)
    _cuda.set_stream_h2(0, groups)
    _check_bf16_f32_one_token(layer, w64)


@pytest.mark.parametrize("depth", list(range(0, 9)))
@pytest.mark.parametrize("quantizer", [0, 1])
def test_stream_h2_every_single_depth(depth, quantizer, stream_h2_on):
    """All units at one depth: pair tables (1..4), single tables (5..8; 5 and 7 do not divide the
    ring's 96 word rows, so units wrap around its end), 0-bit (no words)."""
    _cuda.set_stream_max_blocks(2)
    layer, w64 = _layer(512, 2000, 256, quantizer, seed=depth + 190, depth=depth)
    assert _cuda.config(1, 512, 2000, 256)["stream_h2"]
    err = _f16_one_token_err(layer, w64, seed=depth)
    assert err < BUDGET[torch.float16], err


@pytest.mark.parametrize("n,k", [(1024, 1100), (256, 77), (2048, 1024), (256, 32)])
@pytest.mark.parametrize("blocks", [0, 3])
def test_stream_h2_every_output_written(n, k, blocks, stream_h2_on):
    """Poisoned output (NaN): every row written by the block that completes its chunk."""
    _cuda.set_stream_max_blocks(blocks)
    cfg = _check_poisoned_output(_layer(n, k, 256, 0, seed=n + k + blocks), 1, "gemv")
    assert cfg["stream_h2"], cfg


def test_stream_h2_cuda_graph_replay(stream_h2_on):
    _check_graph_replay(*_layer(1024, 1100, 256, 0, seed=199), (1,))


def test_stream_h2_sanitize_small(stream_h2_on):
    """Small half2 stream launches, both group counts, a block limit (run under compute-sanitizer
    by the device script: -k sanitize_small)."""
    for groups, blocks, stagers in ((2, 0, 2), (1, 3, 1), (2, 3, 2)):
        _cuda.set_stream_h2(0, groups)
        _cuda.set_stream_max_blocks(blocks)
        _cuda.set_stream_stagers(stagers)
        _check_small_launches(((256, 77, 256), (1024, 1100, 256)), ((1, torch.float16),), 197,
                              groups, blocks, stagers)


def test_stream_h2_knob_and_routing():
    """The knob's checks and the routing: off by default (slower than hgemv, select_config.cu);
    with a threshold, f16 one-token calls on sm_90 layers of 256-row chunks, N a multiple of 256,
    at least the threshold's chunk-units; otherwise hgemv or gemv; more tokens never."""
    with pytest.raises(ValueError, match="stream h2 min chunk-units must be >= -1"):
        _cuda.set_stream_h2(-2)
    with pytest.raises(ValueError, match="stream h2 consumer groups must be 1 or 2, got 3"):
        _cuda.set_stream_h2(0, 3)
    assert _cuda.stream_h2() == (-1, 2)
    assert not _cuda.config(1, 49152, 12288, 256)["stream_h2"]
    if torch.cuda.get_device_capability()[0] < 9:
        return
    before = _cuda.stream_h2()
    try:
        _cuda.set_stream_h2(16384)
        for n, k, gs, tokens, taken in (
                (49152, 12288, 256, 1, True), (8192, 28672, 256, 1, True),
                (28672, 8192, 256, 1, True), (16384, 8192, 256, 1, True),
                (16384, 8160, 256, 1, False), (4096, 4096, 256, 1, False),
                (49152, 12288, 128, 1, False), (49000, 12288, 256, 1, False),
                (49152, 12288, 256, 2, False)):
            cfg = _cuda.config(tokens, n, k, gs)
            assert cfg["stream_h2"] == taken, (n, k, gs, tokens)
            if taken:
                assert not cfg["gemv_h2"] and cfg["h2_blocks"] == torch.cuda.get_device_properties(
                    0).multi_processor_count
        _cuda.set_stream_h2(2 * 3)  # 2 chunks x 3 units: taken
        assert _cuda.config(1, 512, 77, 256)["stream_h2"]
        _cuda.set_stream_h2(2 * 3 + 1)
        assert not _cuda.config(1, 512, 77, 256)["stream_h2"]
    finally:
        _cuda.set_stream_h2(*before)
