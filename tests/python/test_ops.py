"""CPU tests of the torch op radio::qlinear (python/radio/ops.py).

The oracle is independent of ops.py: random indices are drawn first, packed by ``pack_indices``
(written here straight from docs/format.md "qweight layout"), and the float64 weight is built from
the drawn indices, not from qweight. ``random_layer`` is also used by test_cuda_ops.py and
bench/bench_gemm.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radio import ops
from radio.format import UNIT


def table64(quantizer: int, depth: int) -> np.ndarray:
    """T_B in float64, written from the formula in docs/format.md."""
    out = []
    for q in range(2 ** depth):
        if quantizer == 0:
            v = (q + 0.5) / 2 ** depth - 0.5
            out.append(-math.copysign(1.0, v) * math.log(1.0 - 2.0 * abs(v)))
        else:
            out.append(q - (2 ** depth - 1) / 2.0)
    return np.array(out, dtype=np.float64)


def pack_indices(q: torch.Tensor, depth: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """int32 qweight from indices q[N, Kp] (permuted rows, chunk positions) on q's device."""
    n, kp = q.shape
    chunks, units = depth.shape
    dev = q.device
    pieces = []
    for c in range(chunks):
        rows = min(rows_per_group, n - c * rows_per_group)
        qc = q[c * rows_per_group: c * rows_per_group + rows].to(torch.int64).view(rows, units, UNIT)
        dc = depth[c].to(torch.int64)
        total = int(dc.sum())
        words = torch.zeros(total, rows, dtype=torch.int64, device=dev)
        off = torch.cumsum(dc, 0) - dc
        for b in range(1, 9):
            sel = (dc == b).nonzero().flatten()
            if sel.numel() == 0:
                continue
            sub = qc[:, sel, :]  # [rows, nu, 32]
            acc = torch.zeros(rows, sel.numel(), b, dtype=torch.int64, device=dev)
            for j in range(UNIT):
                bit = j * b
                w, s = bit // 32, bit % 32
                acc[:, :, w] |= (sub[:, :, j] << s) & 0xFFFFFFFF
                if s + b > 32:
                    acc[:, :, w + 1] |= sub[:, :, j] >> (32 - s)
            dest = off[sel][:, None] + torch.arange(b, device=dev)[None, :]  # [nu, b]
            words[dest.flatten()] = acc.permute(1, 2, 0).reshape(-1, rows)
        pieces.append(words.flatten())
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64, device=dev)
    # keep the u32 bit pattern in an int32 tensor
    flat = torch.where(flat >= 2 ** 31, flat - 2 ** 32, flat)
    return flat.to(torch.int32)


def random_layer(n: int, k: int, gs: int = 256, quantizer: int = 0, *, seed: int = 0,
                 depth=None, bias: bool = True, device="cpu"):
    """A random packed layer (dict of ops.qlinear keyword arguments) and its float64 weight.

    ``depth`` may be None (uniform in 0..8, with 0 and 8 forced to appear), an int (all units),
    or a uint8 tensor [C, U].
    """
    g = torch.Generator().manual_seed(seed)
    chunks, units = math.ceil(n / gs), math.ceil(k / UNIT)
    kp = units * UNIT
    if depth is None:
        depth = torch.randint(0, 9, (chunks, units), generator=g, dtype=torch.int64)
        depth.view(-1)[0] = 0
        depth.view(-1)[-1] = 8
        if depth.numel() > 2:
            depth.view(-1)[1] = 8
    elif isinstance(depth, int):
        depth = torch.full((chunks, units), depth, dtype=torch.int64)
    depth = depth.to(torch.uint8)
    row_perm = torch.randperm(n, generator=g).to(torch.int32)
    col_perm = torch.full((chunks, kp), k, dtype=torch.int32)
    for c in range(chunks):
        col_perm[c, :k] = torch.randperm(k, generator=g).to(torch.int32)
    pos_depth = depth.to(torch.int64).repeat_interleave(UNIT, dim=1)  # [C, Kp]
    pad = col_perm == k
    scale = (torch.rand(chunks, kp, generator=g) * 0.05 + 0.005).to(torch.float16)
    loc = (torch.randn(chunks, kp, generator=g) * 0.02).to(torch.float16)
    scale[pad | (pos_depth == 0)] = 0
    loc[pad] = 0
    # indices: q[permuted row, position] < 2^B, 0 on padding
    hi = (2 ** pos_depth).repeat_interleave(gs, dim=0)[:n]
    q = (torch.rand(n, kp, generator=g) * hi).floor().to(torch.int64)
    q[pad.repeat_interleave(gs, dim=0)[:n]] = 0
    qweight = pack_indices(q, depth, gs)
    b = (torch.randn(n, generator=g) * 0.1).to(torch.float16) if bias else None

    # float64 weight straight from the drawn indices
    w = np.zeros((n, k + 1), dtype=np.float64)
    s64, l64 = scale.double().numpy(), loc.double().numpy()
    qn, dn = q.numpy(), pos_depth.numpy()
    tables = [table64(quantizer, bb) if bb > 0 else np.zeros(1) for bb in range(9)]
    for c in range(chunks):
        rows = min(gs, n - c * gs)
        for bb in range(9):
            cols = np.nonzero(dn[c] == bb)[0]
            if cols.size == 0:
                continue
            qq = qn[c * gs: c * gs + rows][:, cols]
            vals = l64[c, cols][None, :] + s64[c, cols][None, :] * tables[bb][qq]
            w[np.asarray(row_perm[c * gs: c * gs + rows])[:, None], col_perm[c, cols].numpy()[None, :]] = vals
    w = w[:, :k]
    layer = dict(qweight=qweight, scale=scale, loc=loc, depth=depth, row_perm=row_perm,
                 col_perm=col_perm, bias=b, out_features=n, in_features=k, rows_per_group=gs,
                 quantizer=quantizer)
    layer = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in layer.items()}
    return layer, w


def reference_y(x: torch.Tensor, w64: np.ndarray, bias) -> np.ndarray:
    y = x.double().reshape(-1, w64.shape[1]).cpu().numpy() @ w64.T
    if bias is not None:
        y = y + bias.double().cpu().numpy()
    return y


def rel_err(y: torch.Tensor, ref: np.ndarray) -> float:
    y64 = y.double().reshape(ref.shape).cpu().numpy()
    return float(np.linalg.norm(y64 - ref) / np.linalg.norm(ref))


# (N, K, gs): aligned; K not a multiple of 32; ragged last chunk; one short chunk only
SHAPES = [(256, 256, 128), (200, 100, 64), (300, 77, 128), (37, 33, 256)]


@pytest.mark.parametrize("n,k,gs", SHAPES)
@pytest.mark.parametrize("quantizer", [0, 1])
def test_dequantize_matches_drawn_indices(n, k, gs, quantizer):
    layer, w64 = random_layer(n, k, gs, quantizer, seed=n + k)
    args = {key: layer[key] for key in ("qweight", "scale", "loc", "depth", "row_perm",
                                        "col_perm", "out_features", "in_features",
                                        "rows_per_group", "quantizer")}
    w = ops.dequantize(**args)
    assert w.shape == (n, k) and w.dtype == torch.float32
    # float32 rounding of loc + scale * T only
    np.testing.assert_allclose(w.double().numpy(), w64, rtol=1e-6, atol=1e-7)


def test_table_endpoints_match_format_doc():
    t1 = ops.quantizer_table(0, 1)
    t2 = ops.quantizer_table(0, 2)
    assert torch.allclose(t1, torch.tensor([-0.6931, 0.6931]), atol=1e-4)
    assert torch.allclose(t2, torch.tensor([-1.3863, -0.2877, 0.2877, 1.3863]), atol=1e-4)
    assert torch.equal(ops.quantizer_table(1, 2), torch.tensor([-1.5, -0.5, 0.5, 1.5]))


@pytest.mark.parametrize("n,k,gs", SHAPES)
@pytest.mark.parametrize("dtype,budget", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                          (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("quantizer", [0, 1])
@pytest.mark.parametrize("with_bias", [True, False])
def test_qlinear_cpu_matches_float64(n, k, gs, dtype, budget, quantizer, with_bias):
    layer, w64 = random_layer(n, k, gs, quantizer, seed=7 * n + k, bias=with_bias)
    x = torch.randn(2, 3, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = ops.qlinear(x, **layer)
    assert y.shape == (2, 3, n) and y.dtype == dtype
    # the budget covers rounding the output to x's dtype (x itself is the same in both)
    assert rel_err(y, reference_y(x, w64, layer["bias"])) < budget


def test_prepare_and_unit_offsets():
    layer, w64 = random_layer(300, 77, 128, 0, seed=3)
    prepared = ops.prepare(**layer)
    uoff = prepared["unit_offset"]
    depth = layer["depth"].to(torch.int64)
    rows = [128, 128, 44]
    # hand computation of docs/format.md "qweight layout"
    base = 0
    for c in range(3):
        off = 0
        for u in range(depth.shape[1]):
            assert int(uoff[c, u]) == base + off * rows[c]
            off += int(depth[c, u])
        base += rows[c] * off
    assert base == layer["qweight"].numel()
    x = torch.randn(5, 77)
    assert torch.allclose(ops.qlinear(x, **prepared), ops.qlinear(x, **layer))
    assert ops.qlinear(x, **prepared).shape == (5, 300)


def test_work_quantiles_by_hand():
    """Entry j of work_quantiles is the first flattened unit at which unit_weight x units + depths
    before it reach j / steps of the layer's total (a hand loop over every unit)."""
    g = torch.Generator().manual_seed(11)
    depth = torch.randint(0, 9, (3, 17), generator=g).to(torch.uint8)
    depth[1, 5:] = 0  # 0-bit units still count their unit weight
    flat = [int(d) for d in depth.reshape(-1)]
    for steps, weight in ((1, 4), (7, 4), (64, 1), (200, 9)):
        q = ops.work_quantiles(depth, steps=steps, unit_weight=weight)
        assert q.dtype == torch.int32 and q.shape == (steps + 1,)
        work = [0]
        for d in flat:
            work.append(work[-1] + d + weight)
        for j in range(steps + 1):
            # first u with work[u] >= total * j / steps (integers: work[u] * steps >= total * j)
            expect = next(u for u in range(len(work)) if work[u] * steps >= work[-1] * j)
            assert int(q[j]) == expect, (steps, weight, j)
    assert int(q[0]) == 0 and int(q[-1]) == depth.numel()


def test_work_quantiles_in_prepare_and_its_checks():
    """prepare() adds the layer's table; qlinear takes it (on the CPU the kernels' cut is not
    used, the output is the same) and names what is wrong with a table that is not one."""
    layer, _ = random_layer(300, 77, 128, 0, seed=3)
    prepared = ops.prepare(**layer)
    q = prepared["work_quantiles"]
    assert torch.equal(q, ops.work_quantiles(layer["depth"]))
    assert q.numel() == ops.WORK_QUANTILES + 1
    x = torch.randn(2, 77)
    assert torch.allclose(ops.qlinear(x, **prepared), ops.qlinear(x, **layer))
    total = layer["depth"].numel()
    bad = {
        "must be a contiguous 1-D int32": q.long(),
        "must be a contiguous 1-D int32 tensor of at least 2": q[:1],
        "rise from 0 to the layer's 9 units.*got 0 .. 8": torch.tensor([0, 4, 8], dtype=torch.int32),
        "not non-decreasing": torch.tensor([0, 5, 3, total], dtype=torch.int32),
    }
    assert total == 9
    for match, table in bad.items():
        with pytest.raises(ValueError, match=match):
            ops.qlinear(x, **{**prepared, "work_quantiles": table})
    with pytest.raises(TypeError, match="work_quantiles must be a torch.Tensor.*list"):
        ops.qlinear(x, **{**prepared, "work_quantiles": [0, total]})
    with pytest.raises(ValueError, match="unit_weight must be a positive int.*got 0"):
        ops.work_quantiles(layer["depth"], unit_weight=0)
    with pytest.raises(ValueError, match="steps must be a positive int.*got 0"):
        ops.work_quantiles(layer["depth"], steps=0)
    with pytest.raises(ValueError, match="depth must be 2-D"):
        ops.work_quantiles(layer["depth"].reshape(-1))


def test_prepare_adds_a_zeroed_workspace():
    """prepare() keeps one zeroed workspace per layer for the one-token CUDA kernels, sized by
    decode_workspace_bytes (a row's f32 partial and a chunk's counter, 256-byte aligned)."""
    layer, _ = random_layer(300, 77, 128, 0, seed=3)
    ws = ops.prepare(**layer)["workspace"]
    assert ws.dtype == torch.uint8 and ws.dim() == 1 and int(ws.count_nonzero()) == 0
    assert ws.numel() == ops.decode_workspace_bytes(300, 128) == 1280 + 4 * 3
    assert ops.decode_workspace_bytes(49152, 256) == 4 * 49152 + 4 * 192


def test_bad_workspace_is_refused():
    layer, _ = random_layer(300, 77, 128, 0, seed=3)
    x = torch.randn(1, 77)
    with pytest.raises(ValueError, match=r"workspace has 100 bytes, this layer needs 1292"):
        ops.qlinear(x, **layer, workspace=torch.zeros(100, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"1-D uint8 tensor .* got dtype torch.float32"):
        ops.qlinear(x, **layer, workspace=torch.zeros(400))
    with pytest.raises(TypeError, match="workspace must be a torch.Tensor"):
        ops.qlinear(x, **layer, workspace=b"\0" * 2000)
    # the reference path (CPU) takes a right one and ignores it
    ws = torch.zeros(ops.decode_workspace_bytes(300, 128), dtype=torch.uint8)
    assert torch.equal(ops.qlinear(x, **layer, workspace=ws), ops.qlinear(x, **layer))


def test_string_quantizer_accepted():
    layer, _ = random_layer(64, 64, 32, 1, seed=5)
    x = torch.randn(4, 64)
    y_code = ops.qlinear(x, **layer)
    layer["quantizer"] = "uniform"
    assert torch.equal(ops.qlinear(x, **layer), y_code)


def test_matches_core_dequant_matmul():
    from radio import _core
    if not hasattr(_core, "dequant_matmul"):
        pytest.skip("radio._core.dequant_matmul not built yet")
    from radio.format import PackedLayer

    layer, _ = random_layer(300, 77, 128, 0, seed=11)
    packed = PackedLayer(quantizer="laplace", **{k: v for k, v in layer.items()
                                                 if k not in ("quantizer",)})
    x = torch.randn(6, 77, generator=torch.Generator().manual_seed(2))
    core = _core.dequant_matmul(packed.to_numpy_dict(), x.numpy())
    ours = ops.qlinear(x, **layer)
    np.testing.assert_allclose(ours.numpy(), core, rtol=1e-5, atol=1e-5)


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer, _ = random_layer(200, 100, 64, 0, seed=4)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {key: (mode.from_tensor(v) if isinstance(v, torch.Tensor) else v)
                for key, v in layer.items()}
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            x = torch.empty(3, 7, 100, dtype=dtype)
            y = ops.qlinear(x, **fake)
            assert y.shape == (3, 7, 200) and y.dtype == dtype


def test_opcheck_cpu():
    layer, _ = random_layer(200, 100, 64, 0, seed=6)
    prepared = ops.prepare(**layer)
    x = torch.randn(4, 100)
    args = (x, prepared["qweight"], prepared["scale"], prepared["loc"], prepared["depth"],
            prepared["row_perm"], prepared["col_perm"], prepared["bias"], 200, 100, 64, 0,
            prepared["unit_offset"], prepared["workspace"], prepared["work_quantiles"])
    torch.library.opcheck(torch.ops.radio.qlinear.default, args)
    xg = x.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.radio.qlinear.default, (xg,) + args[1:])


def test_backward_is_w():
    layer, w64 = random_layer(40, 70, 16, 1, seed=8, bias=False)
    x = torch.randn(3, 70, dtype=torch.float64).float().requires_grad_(True)
    ops.qlinear(x, **layer).sum().backward()
    expect = np.ones((3, 40)) @ w64
    np.testing.assert_allclose(x.grad.double().numpy(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("scale", torch.zeros(2, 64, dtype=torch.float32), "scale must be torch.float16"),
    ("depth", torch.zeros(3, 2, dtype=torch.uint8), r"depth must have shape \(2, 2\)"),
    ("quantizer", 2, "quantizer must be 0"),
    ("quantizer", "gauss", "quantizer must be one of"),
    ("row_perm", torch.zeros(64, dtype=torch.int64), "row_perm must be torch.int32"),
])
def test_bad_input_names_the_value(key, value, match):
    layer, _ = random_layer(64, 64, 32, 0, seed=9)
    layer[key] = value
    with pytest.raises(ValueError, match=match):
        ops.qlinear(torch.randn(2, 64), **layer)


def test_bad_x():
    layer, _ = random_layer(64, 64, 32, 0, seed=9)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 64\], got \(2, 63\)"):
        ops.qlinear(torch.randn(2, 63), **layer)
    with pytest.raises(ValueError, match="x must be float16, bfloat16 or float32, got torch.float64"):
        ops.qlinear(torch.randn(2, 64, dtype=torch.float64), **layer)
