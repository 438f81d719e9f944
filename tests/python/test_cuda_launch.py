"""GPU tests of how radio::qlinear launches its kernels (marked cuda; skipped without a GPU):

- the layer's kept workspace (ops.prepare's ``workspace``): one-token calls skip the memset and
  must leave it zero, on every kernel a one-token call can take (gemv, hgemv, stream_h2, and the
  older tensor-core kernel for chunks of more than 256 rows, which radio._cuda zeroes after);
- programmatic dependent launch (cuda/pdl.cuh, sm_90, on by default: _cuda.set_pdl): results
  equal with it on and off, eagerly and in CUDA graphs of several layers back to back, also
  right after a copy into the layer's own weights (the kernel may only prefetch them before the
  previous one ends);
- the K split's end (one fence per block, by the counting thread: block_units.cuh
  count_block_done): many calls back to back on layers of many blocks per chunk stay exact, and
  the benchmark's A/B knob set_fence_all (the fences before session 15) stays correct;
- the K split's output deferred to a kernel after the grid (set_defer_output,
  finalize_kernel.cuh): correct, every output written, the kept workspace zero again, with PDL on
  and off and in CUDA graphs of layers back to back.

Oracle: the float64 weight of test_ops.random_layer, budgets of test_cuda_ops.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# (pytestmark: test_cuda_ops's marks and skips, without a GPU or the kernels)
from test_cuda_ops import BUDGET, _check_poisoned_output, _layer, pytestmark  # noqa: E402,F401
from test_ops import reference_y, rel_err  # noqa: E402

from radio import ops  # noqa: E402
from radio._ext import _cuda  # noqa: E402


@pytest.fixture
def knobs():
    """Restores every routing and launch knob these tests set."""
    h2, stream_h2, pdl = _cuda.gemv_h2_min_chunk_units(), _cuda.stream_h2(), _cuda.pdl()
    stream, fence_all = _cuda.stream_tokens(), _cuda.fence_all()
    defer = _cuda.defer_output()
    try:
        yield
    finally:
        _cuda.set_defer_output(defer)
        _cuda.set_fence_all(fence_all)
        _cuda.set_gemv_h2_min_chunk_units(h2)
        _cuda.set_stream_h2(*stream_h2)
        _cuda.set_pdl(pdl)
        _cuda.set_stream_tokens(*stream)


def _route(kernel: str) -> None:
    """One-token f16 calls to `kernel`: gemv (f32 sums), gemv_h2 (hgemv) or stream_h2."""
    _cuda.set_stream_h2(0 if kernel == "stream_h2" else -1)
    _cuda.set_gemv_h2_min_chunk_units(0 if kernel == "gemv_h2" else -1)


def _one_token_kernel(layer) -> str:
    cfg = _cuda.config(1, layer["out_features"], layer["in_features"], layer["rows_per_group"])
    if cfg["kernel"] != "gemv":
        return cfg["kernel"]
    return "stream_h2" if cfg["stream_h2"] else "gemv_h2" if cfg["gemv_h2"] else "gemv"


@pytest.mark.parametrize("kernel,n,k,gs", [("gemv", 1000, 1100, 256), ("gemv", 517, 333, 64),
                                           ("gemv_h2", 1024, 4000, 256),
                                           ("stream_h2", 1024, 4000, 256)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kept_workspace_stays_zero(kernel, n, k, gs, dtype, knobs):
    """Three one-token calls in a row on the layer's kept workspace: each correct, the workspace
    zero after each (a partial left behind would add to the next call's rows)."""
    if kernel == "stream_h2" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90")
    _route(kernel)
    layer, w64 = _layer(n, k, gs, 0, seed=n + k)
    ws = layer["workspace"]
    assert ws.numel() == ops.decode_workspace_bytes(n, gs) and ws.is_cuda
    assert int(ws.count_nonzero()) == 0
    assert _one_token_kernel(layer) == kernel
    cfg = _cuda.config(1, n, k, gs)
    assert max(cfg["splits"], cfg["h2_splits"]) > 1 or cfg["stream_h2"], cfg  # a K split
    gen = torch.Generator().manual_seed(n)
    for call in range(3):
        x = torch.randn(1, k, generator=gen).to(dtype).cuda()
        y = ops.qlinear(x, **layer)
        torch.cuda.synchronize()
        assert int(ws.count_nonzero()) == 0, (call, "workspace not zero after the call")
        err = rel_err(y, reference_y(x, w64, layer["bias"].cpu()))
        assert err < BUDGET[dtype], (call, err)


def test_kept_workspace_is_used_without_memset(knobs):
    """The one-token call really runs on the kept workspace with no memset: poisoned partials
    (1.0 in every row) show up in y; zeroed again, y is right."""
    _route("gemv_h2")
    layer, w64 = _layer(1024, 4000, 256, 0, seed=12)
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(2)).half().cuda()
    ref = reference_y(x, w64, layer["bias"].cpu())
    ws = layer["workspace"]
    ws.view(torch.float32)[:1024].fill_(1.0)  # the partial sum of every (permuted) row
    poisoned = ops.qlinear(x, **layer).float().cpu().numpy()
    assert abs(float((poisoned - ref).mean()) - 1.0) < 0.05  # every row off by the poison
    assert int(ws.count_nonzero()) == 0  # and the call zeroed it
    assert rel_err(ops.qlinear(x, **layer), ref) < BUDGET[torch.float16]


def test_older_kernel_zeroes_a_kept_workspace_after_it():
    """Chunks of 512 rows run the older tensor-core kernel at one token, whose last blocks do not
    zero what they read: radio._cuda zeroes a kept (workspace_zeroed) workspace after it."""
    layer, w64 = _layer(700, 300, 512, 0, seed=13)
    cfg = _cuda.config(1, 700, 300, 512)
    assert cfg["kernel"] == "mma" and cfg["splits"] > 1, cfg
    ws = torch.zeros(_cuda.workspace_bytes(1, 700, 300, 512), dtype=torch.uint8, device="cuda")
    for seed in range(2):
        x = torch.randn(1, 300, generator=torch.Generator().manual_seed(seed)).half().cuda()
        y = torch.empty(1, 700, dtype=torch.float16, device="cuda")
        _cuda.qlinear(x.data_ptr(), 0, 1, layer["qweight"].data_ptr(), layer["scale"].data_ptr(),
                      layer["loc"].data_ptr(), layer["depth"].data_ptr(),
                      layer["unit_offset"].data_ptr(), layer["row_perm"].data_ptr(),
                      layer["col_perm"].data_ptr(), layer["bias"].data_ptr(), y.data_ptr(), 700,
                      300, 512, 0, ws.data_ptr(), ws.numel(),
                      torch.cuda.current_stream().cuda_stream, layer["qweight"].numel(),
                      workspace_zeroed=True)
        torch.cuda.synchronize()
        assert int(ws.count_nonzero()) == 0, seed
        assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]


def test_decode_workspace_bytes_covers_every_one_token_config(knobs):
    """ops.decode_workspace_bytes (computed without radio._cuda, for layers built on the CPU)
    against the configuration's own figure on every kernel a one-token call can take."""
    for kernel in ("gemv", "gemv_h2", "stream_h2"):
        _route(kernel)
        for n, k, gs in [(1000, 1100, 256), (517, 333, 64), (4096, 11008, 256),
                         (49152, 12288, 256), (37, 33, 256), (300, 77, 128)]:
            need = _cuda.workspace_bytes(1, n, k, gs)
            assert need <= ops.decode_workspace_bytes(n, gs), (kernel, n, k, gs, need)


def _one_and_sixteen_token_layer(kernel: str, quantizer: int, seed: int):
    """A 1024x4096 layer whose one-token f16 calls run on `kernel` and whose 16-token calls run on
    the stream kernel (its layer threshold lowered; sm_90)."""
    _route(kernel)
    _cuda.set_stream_tokens(4, 16, 0)
    layer, w64 = _layer(1024, 4096, 256, quantizer, seed=seed)
    assert _cuda.config(16, 1024, 4096, 256)["kernel"] == "stream"
    assert _one_token_kernel(layer) == kernel
    return layer, w64


@pytest.mark.parametrize("kernel", ["gemv", "gemv_h2", "stream_h2"])
def test_pdl_on_and_off_agree(kernel, knobs):
    """The same calls with programmatic dependent launch on and off (1 token on `kernel`, 16 on the
    stream kernel, its layer threshold lowered), against the float64 reference."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    layer, w64 = _one_and_sixteen_token_layer(kernel, quantizer=1, seed=11)
    ref_bias = layer["bias"].cpu()
    for tokens in (1, 16):
        x = torch.randn(tokens, 4096, generator=torch.Generator().manual_seed(tokens)).half()
        x = x.cuda()
        outs = []
        for pdl in (True, False):
            _cuda.set_pdl(pdl)
            assert _cuda.config(tokens, 1024, 4096, 256)["pdl"] == pdl
            outs.append(ops.qlinear(x, **layer))
        for y in outs:
            assert rel_err(y, reference_y(x, w64, ref_bias)) < BUDGET[torch.float16], tokens
        scale = outs[1].float().abs().max().item()
        assert (outs[0].float() - outs[1].float()).abs().max().item() <= 2e-3 * scale


def _graph_and_eager(chain, static_x, knob):
    """`chain` (a function of one-token x returning its outputs) captured in a CUDA graph after
    a warm-up, replayed on two fresh inputs; yields (seed, x0, the graph's outputs, the same
    chain computed eagerly with knob(False)), the knob set back to True after each."""
    chain(static_x)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outs = chain(static_x)
    for seed in range(2):
        x0 = torch.randn(1, static_x.shape[1], generator=torch.Generator().manual_seed(seed))
        x0 = x0.half().cuda()
        static_x.copy_(x0)
        graph.replay()
        torch.cuda.synchronize()
        knob(False)
        eager = chain(x0)
        knob(True)
        yield seed, x0, static_outs, eager


@pytest.mark.parametrize("kernel", ["gemv", "gemv_h2", "stream_h2"])
def test_graph_of_layers_back_to_back(kernel, knobs):
    """A CUDA graph of 6 one-token calls on 3 layers, each call's x the previous call's y (every
    kernel's x is written by the kernel before it: what the wait in pdl.cuh guards), replayed
    with fresh inputs: equal to the same chain computed eagerly without PDL, and the float64
    reference of each step."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    _route(kernel)
    _cuda.set_pdl(True)  # (the default; set so that the test holds if it changes)
    layers = [_layer(1024, 1024, 256, q, seed=30 + i) for i, q in enumerate((0, 1, 0))]
    static_x = torch.zeros(1, 1024, dtype=torch.float16, device="cuda")

    def chain(x):
        outs = []
        for step in range(6):
            layer = layers[step % 3][0]
            x = ops.qlinear(x, **layer)  # (the layers keep the values' scale: ~1)
            outs.append(x)
        return outs

    for seed, x0, static_outs, eager in _graph_and_eager(chain, static_x, _cuda.set_pdl):
        x = x0
        for step, (got, want) in enumerate(zip(static_outs, eager)):
            layer, w64 = layers[step % 3]
            ref = reference_y(x, w64, layer["bias"].cpu())
            assert rel_err(got, ref) < 2 * BUDGET[torch.float16], (seed, step)
            assert rel_err(got, want.float().cpu().numpy()) < 2 * BUDGET[torch.float16]
            x = want
        for layer, _ in layers:
            assert int(layer["workspace"].count_nonzero()) == 0


def test_weights_written_just_before_the_call(knobs):
    """Every layer tensor overwritten by copies right before the call on the same stream (a
    weight load): with PDL the kernel may start before the copies end, so it must not read them
    before its wait (cuda/pdl.cuh); the result is the new layer's."""
    _route("gemv_h2")
    _cuda.set_pdl(True)  # (the default; set so that the test holds if it changes)
    old, _ = _layer(1024, 4000, 256, 0, seed=40, depth=4)  # equal depths: equal tensor sizes
    new, w64_new = _layer(1024, 4000, 256, 0, seed=41, depth=4)
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(5)).half().cuda()
    torch.cuda.synchronize()
    for name in ("qweight", "scale", "loc", "depth", "unit_offset", "row_perm", "col_perm",
                 "bias"):
        old[name].copy_(new[name])
    y = ops.qlinear(x, **old)  # no synchronisation between the copies and the call
    err = rel_err(y, reference_y(x, w64_new, new["bias"].cpu()))
    assert err < BUDGET[torch.float16], err


def test_opcheck_with_kept_workspace():
    """torch.library.opcheck with the workspace argument: the op leaves it as it found it (the
    schema declares no mutation), fake and real outputs agree."""
    layer, _ = _layer(1000, 1100, 256, 0, seed=4)
    for tokens in (1, 4):
        x = torch.randn(tokens, 1100, device="cuda").half()
        args = (x, layer["qweight"], layer["scale"], layer["loc"], layer["depth"],
                layer["row_perm"], layer["col_perm"], layer["bias"], 1000, 1100, 256, 0,
                layer["unit_offset"], layer["workspace"])
        torch.library.opcheck(torch.ops.radio.qlinear.default, args)


@pytest.mark.parametrize("kernel,n,k", [("gemv", 4096, 11008), ("gemv_h2", 8192, 8192),
                                        ("stream_h2", 4096, 4096)])
def test_k_split_counts_many_calls(kernel, n, k, knobs):
    """200 one-token calls back to back on a layer split along K into many blocks per chunk: the
    chunk's last block must see every other block's partial sums (one fence per block, by the
    counting thread after the block's barrier: block_units.cuh count_block_done). A partial it
    missed would be left in the kept workspace and add to the next call, so every call is
    checked against the first (the order of the f32 atomics may differ: a few ulps) and the
    workspace must be zero at the end."""
    if kernel == "stream_h2" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90")
    _route(kernel)
    layer, w64 = _layer(n, k, 256, 0, seed=n + 3)
    assert _one_token_kernel(layer) == kernel
    cfg = _cuda.config(1, n, k, 256)
    assert max(cfg["splits"], cfg["h2_splits"]) > 2 or cfg["stream_h2"], cfg
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(7)).half().cuda()
    first = ops.qlinear(x, **layer)
    assert rel_err(first, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]
    ys = torch.stack([ops.qlinear(x, **layer) for _ in range(200)]).float()
    worst = (ys - first.float()).abs().amax(dim=(1, 2))
    assert worst.max().item() <= 4e-3 * first.float().abs().max().item(), worst.argmax().item()
    assert int(layer["workspace"].count_nonzero()) == 0


@pytest.mark.parametrize("kernel", ["gemv", "gemv_h2", "stream_h2"])
def test_fence_all_agrees(kernel, knobs):
    """The benchmark's A/B knob set_fence_all (every thread fencing at the K split's end, as
    before session 15) times a correct kernel: 1 token on `kernel` and 16 on the stream kernel
    against the float64 reference."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream kernel needs sm_90")
    layer, w64 = _one_and_sixteen_token_layer(kernel, quantizer=0, seed=21)
    _cuda.set_fence_all(True)
    assert _cuda.config(1, 1024, 4096, 256)["fence_all"]
    for tokens in (1, 16):
        x = torch.randn(tokens, 4096, generator=torch.Generator().manual_seed(tokens)).half()
        x = x.cuda()
        y = ops.qlinear(x, **layer)
        assert rel_err(y, reference_y(x, w64, layer["bias"].cpu())) < BUDGET[torch.float16]
    assert int(layer["workspace"].count_nonzero()) == 0


def test_hgemv_waves_rule():
    """The half2 one-token kernel aims at 4 waves where 4 waves still leave every block at least
    32 units (49152x12288: 192 chunks x 384 units; 2112 blocks of 35 units on 132 SMs), at 2
    elsewhere (8192x28672, 28672x8192: 14 units at 4 waves) (select_config.cu hgemv_waves);
    set_gemv_waves' second argument fixes the waves."""
    shapes = ((49152, 12288), (8192, 28672), (28672, 8192))
    fields = ("gemv_h2", "h2_splits", "h2_units_per_split")
    default = [_cuda.config(1, n, k, 256) for n, k in shapes]
    try:
        _cuda.set_gemv_waves(6, 2, 1)
        two = [_cuda.config(1, n, k, 256) for n, k in shapes]
        _cuda.set_gemv_waves(6, 4, 1)
        four = [_cuda.config(1, n, k, 256) for n, k in shapes]
    finally:
        _cuda.set_gemv_waves(6, 0, 1)
    for cfg, cfg2, cfg4 in zip(default, two, four):
        assert cfg["gemv_h2"] and cfg2["gemv_h2"] and cfg4["gemv_h2"]
        want = cfg4 if cfg4["h2_units_per_split"] >= 32 else cfg2
        assert [cfg[f] for f in fields] == [want[f] for f in fields], (cfg, cfg2, cfg4)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if sms == 132:  # an H100 or H200 SXM: the splits the session 16 sweep timed
        assert [c["h2_splits"] for c in default] == [11, 32, 10], default


def test_one_token_waves_rule():
    """gemv at one token aims at about one wave on layers below 16384 chunk-units
    (select_config.cu g_gemv_one_token_waves), six at more tokens and on larger layers; the
    sweep's knob checks its third argument."""
    with pytest.raises(ValueError, match="one-token waves must be in 1..64, got 0"):
        _cuda.set_gemv_waves(6, 0, 0)
    mid = _cuda.config(1, 11008, 4096, 256)  # 43 chunks x 128 units
    two = _cuda.config(2, 11008, 4096, 256)
    big = _cuda.config(1, 49152, 12288, 256)  # 192 x 384: above the rule's limit
    assert mid["kernel"] == "gemv" and two["kernel"] == "gemv"
    try:
        _cuda.set_gemv_waves(6, 0, 6)  # the one-token rule as before session 15
        old_mid, old_two = _cuda.config(1, 11008, 4096, 256), _cuda.config(2, 11008, 4096, 256)
        old_big = _cuda.config(1, 49152, 12288, 256)
    finally:
        _cuda.set_gemv_waves(6, 0, 1)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert mid["splits"] < old_mid["splits"], (mid, old_mid)
    assert mid["splits"] * 43 <= 2 * sms * 8, mid  # about one wave of 8 blocks per SM
    assert two["splits"] == old_two["splits"]  # more tokens: unchanged
    assert big["splits"] == old_big["splits"]  # larger layers: unchanged


@pytest.mark.parametrize("kernel,n,k,gs", [("gemv", 1000, 1100, 256), ("gemv", 517, 333, 64),
                                           ("gemv_h2", 1024, 4000, 256),
                                           ("gemv_h2", 4096, 11008, 256)])
@pytest.mark.parametrize("pdl", [True, False])
def test_deferred_output(kernel, n, k, gs, pdl, knobs):
    """set_defer_output: the K-split blocks of gemv / hgemv only add their partials and a second
    kernel writes y after the grid. Three one-token calls on the kept workspace (f16, and bf16
    on gemv): each correct, equal to the last-block output within the f32 atomics' order, the
    workspace zero after each; then two tokens (gemv, a fresh workspace) with y poisoned."""
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    _route(kernel)
    _cuda.set_pdl(pdl)
    layer, w64 = _layer(n, k, gs, 1, seed=n + k + 5)
    assert _one_token_kernel(layer) == kernel
    ws, bias = layer["workspace"], layer["bias"].cpu()
    gen = torch.Generator().manual_seed(n)
    for dtype in ((torch.float16, torch.bfloat16) if kernel == "gemv" else (torch.float16,)):
        for call in range(3):
            x = torch.randn(1, k, generator=gen).to(dtype).cuda()
            _cuda.set_defer_output(False)
            want = ops.qlinear(x, **layer)
            _cuda.set_defer_output(True)
            cfg = _cuda.config(1, n, k, gs)
            assert cfg["defer_output"] and max(cfg["splits"], cfg["h2_splits"]) > 1, cfg
            y = ops.qlinear(x, **layer)
            torch.cuda.synchronize()
            assert int(ws.count_nonzero()) == 0, (dtype, call, "workspace not zero")
            assert rel_err(y, reference_y(x, w64, bias)) < BUDGET[dtype], (dtype, call)
            scale = want.float().abs().max().item()
            assert (y.float() - want.float()).abs().max().item() <= 4e-3 * scale, (dtype, call)
    if kernel == "gemv":  # two tokens (workspace stride 2), every element of a NaN y written
        assert _check_poisoned_output((layer, w64), 2, "gemv")["defer_output"]


def test_deferred_output_in_a_graph_of_layers(knobs):
    """The deferred output in a CUDA graph of 6 one-token hgemv calls on 3 layers, each call's x
    the previous call's y (the finalize kernel's y is the next decode kernel's x: PDL's wait
    must cover it), replayed on fresh inputs against the eager chain without it."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90")
    _route("gemv_h2")
    _cuda.set_pdl(True)
    layers = [_layer(1024, 4096, 256, q, seed=60 + i) for i, q in enumerate((0, 1, 0))]
    static_x = torch.zeros(1, 4096, dtype=torch.float16, device="cuda")
    widen = torch.randn(1024, 4096, generator=torch.Generator().manual_seed(1)).cuda()

    def chain(x):
        outs = []
        for step in range(6):
            y = ops.qlinear(x, **layers[step % 3][0])
            outs.append(y)
            # Back to 4096 inputs at unit RMS: without the normalisation the values grew by the
            # layers' gain at each step and were inf / NaN in f16 by the fifth (device, session 19).
            wide = y.float() @ widen
            x = (wide * torch.rsqrt(wide.square().mean() + 1e-12)).half()
        return outs

    _cuda.set_defer_output(True)
    for seed, _, static_outs, eager in _graph_and_eager(chain, static_x,
                                                         _cuda.set_defer_output):
        for step, (got, want) in enumerate(zip(static_outs, eager)):
            scale = want.float().abs().max().item()
            assert (got.float() - want.float()).abs().max().item() <= 8e-3 * scale, (seed, step)
        for layer, _ in layers:
            assert int(layer["workspace"].count_nonzero()) == 0


def test_defer_output_rule(knobs):
    """set_defer_output(None), the default: the K split's output after the grid where it measured
    faster end to end (select_config.cu defer_output_pays): gemv and hgemv at one and two tokens;
    not at 4..8 tokens or on other kernels. True / False force it on every gemv / hgemv call or
    none; anything else is refused."""
    _cuda.set_defer_output(None)
    assert _cuda.defer_output() is None
    gs = 256
    deferred = [(1, 4096, 4096), (1, 576, 1536), (1, 4096, 11008), (1, 11008, 4096),
                (1, 8192, 8192), (1, 49152, 12288), (2, 11008, 4096), (2, 576, 576)]
    for tokens, n, k in deferred:
        cfg = _cuda.config(tokens, n, k, gs)
        assert cfg["kernel"] == "gemv" and cfg["gemv_tokens"] == tokens, (tokens, n, k, cfg)
        assert cfg["defer_output"], (tokens, n, k, cfg)
    for tokens in (4, 8, 16):  # not measured on gemv, and the stream / fmma kernels never
        assert not _cuda.config(tokens, 4096, 4096, gs)["defer_output"], tokens
    _cuda.set_defer_output(True)
    assert _cuda.defer_output() is True
    assert _cuda.config(1, 11008, 4096, gs)["defer_output"]
    four = _cuda.config(4, 4096, 11008, gs)
    assert four["kernel"] != "gemv" and not four["defer_output"]  # not a gemv kernel
    assert not _cuda.config(16, 8192, 28672, gs)["defer_output"]  # not a gemv kernel
    _cuda.set_defer_output(False)
    assert _cuda.defer_output() is False
    assert not _cuda.config(1, 4096, 4096, gs)["defer_output"]
    for bad in (1, "yes", 0.5):
        with pytest.raises(TypeError, match="set_defer_output takes None"):
            _cuda.set_defer_output(bad)
    assert _cuda.defer_output() is False  # a refused value changes nothing
