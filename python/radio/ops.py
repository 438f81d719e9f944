"""The torch op ``radio::qlinear``: ``y = x @ W.T + b`` with ``W`` stored in the packed format v1.

docs/format.md defines the tensors. Paths:

- CPU (and any device without radio._cuda): dequantize ``W`` with plain torch ops (``dequantize``
  below, the reference twin of the CUDA kernels), then multiply in float32.
- CUDA with radio._cuda built: the kernels in cuda/ for 1-64 tokens (cuda/select_config.cu picks
  one: a CUDA-core decode kernel for 1-4 tokens, decode-to-shared-memory + tensor cores for 5-64;
  bench/KERNELS.md); larger batches per PREFILL_PATH (dequantize + cuBLAS by default, or the older
  tensor-core kernel in groups of 64 tokens); raw device pointers on the current stream. Output
  and workspace are allocated through torch, so the op can be captured in CUDA graphs.
- Meta / fake tensors: shape only, so the op traces under torch.compile.

Derived buffer: the kernels address the qweight words of unit ``u`` of chunk ``c`` through
``unit_offset[c, u] = base[c] + off[c, u] * rows_c`` (docs/format.md "qweight layout"), an int32
``[C, U]`` tensor that depends only on ``depth``. ``prepare(...)`` computes it once per layer;
callers (RadioLinear) keep it as a non-persistent buffer and pass it as ``unit_offset=``. When it
is omitted the op recomputes it (a tiny cumsum) on every call. ``work_quantiles`` (also from
``prepare``, also from ``depth`` alone) tells the 4-16-token stream kernel where to cut its
blocks' shares of the layer; without it the kernel cuts equal unit counts, which is slower on
layers whose chunks hold their units deepest first (as radio.quantize writes them).

Usage::

    buffers = radio.ops.prepare(qweight=..., scale=..., loc=..., depth=..., row_perm=...,
                                col_perm=..., bias=..., out_features=N, in_features=K,
                                rows_per_group=gs, quantizer="laplace")
    y = radio.ops.qlinear(x, **buffers)
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from ._ext import _cuda
from .format import QUANTIZERS, UNIT

__all__ = ["qlinear", "prepare", "dequantize", "unit_offsets", "work_quantiles",
           "quantizer_table", "decode_workspace_bytes"]

_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Reference pieces (plain torch; run on whatever device the tensors are on)
# ----------------------------------------------------------------------------------------------

def quantizer_table(quantizer: int, depth: int, device=None) -> torch.Tensor:
    """T_B of docs/format.md as float32 [2**depth] (computed in float64, rounded once)."""
    if quantizer not in (0, 1):
        raise ValueError(f"quantizer must be 0 (laplace) or 1 (uniform), got {quantizer!r}")
    if not 0 <= depth <= 8:
        raise ValueError(f"depth must be in 0..8, got {depth!r}")
    q = torch.arange(2 ** depth, dtype=torch.float64, device=device)
    if quantizer == 0:
        v = (q + 0.5) / 2 ** depth - 0.5
        t = -torch.sign(v) * torch.log1p(-2.0 * v.abs())
    else:
        t = q - (2 ** depth - 1) / 2.0
    return t.to(torch.float32)


def unit_offsets(depth: torch.Tensor, out_features: int, rows_per_group: int) -> torch.Tensor:
    """int32 [C, U]: index in qweight of the first word of every unit (row 0 of its chunk)."""
    if depth.dim() != 2:
        raise ValueError(f"depth must be 2-D [C, U], got shape {tuple(depth.shape)}")
    chunks = depth.shape[0]
    rows = torch.clamp(out_features - torch.arange(chunks, device=depth.device,
                                                   dtype=torch.int64) * rows_per_group,
                       max=rows_per_group)
    d = depth.to(torch.int64)
    off = torch.cumsum(d, dim=1) - d  # exclusive prefix sum over units
    chunk_words = rows * d.sum(dim=1)
    base = torch.cumsum(chunk_words, dim=0) - chunk_words
    out = base[:, None] + off * rows[:, None]
    return out.to(torch.int32)


# The stream kernel's share of a block is cut at equal work, a unit counting WORK_UNIT_WEIGHT word
# rows beside its own depth (its x staging and bookkeeping): on 8192x28672 at 4 bpw, 16 tokens,
# in radio.quantize's depth order, weight 4 was 11-12% faster than equal unit counts and the best
# of 0, 4, 8, 16, 32 and 64 (H100, bench/RESULTS.md session 16; again on an H200 in session 17,
# where 8 was 2-4% better at 3 bpw). WORK_QUANTILES steps: the kernel interpolates between them, so
# one table serves any number of blocks (4 KB per layer).
WORK_UNIT_WEIGHT = 4
WORK_QUANTILES = 1024


def work_quantiles(depth: torch.Tensor, steps: int = WORK_QUANTILES,
                   unit_weight: int = WORK_UNIT_WEIGHT) -> torch.Tensor:
    """int32 [steps + 1]: entry j is the first flattened (chunk, unit) index u (row-major over
    depth's [C, U]) at which the work before u, ``unit_weight * u + sum(depth[:u])``, reaches
    ``j / steps`` of the layer's total. Entry 0 is 0 and entry ``steps`` is C * U.

    The stream kernel (cuda/stream_layout.cuh ``block_range``) cuts block b of B at position
    b / B of this table, interpolated between its two neighbouring entries. The work counts a
    unit's depth as its word rows, which holds for the 256-row chunks the kernel takes.
    """
    if depth.dim() != 2:
        raise ValueError(f"depth must be 2-D [C, U], got shape {tuple(depth.shape)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(unit_weight, int) or unit_weight < 1:
        raise ValueError(f"unit_weight must be a positive int (a unit of depth 0 must still "
                         f"count), got {unit_weight!r}")
    d = depth.reshape(-1).to(torch.int64)
    total = d.numel()
    # work[u] = work before flattened unit u, for u = 0..total (strictly increasing)
    work = torch.zeros(total + 1, dtype=torch.int64, device=depth.device)
    work[1:] = torch.cumsum(d + unit_weight, dim=0)
    j = torch.arange(steps + 1, dtype=torch.int64, device=depth.device)
    target = (work[-1] * j + steps - 1) // steps  # ceil(total work * j / steps)
    return torch.searchsorted(work, target, side="left").to(torch.int32)


def _check_layer(qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                 in_features, rows_per_group, quantizer) -> None:
    """Shape/dtype checks of docs/format.md that are cheap (no data-dependent host syncs)."""
    n, k, gs = out_features, in_features, rows_per_group
    for name, v in (("out_features", n), ("in_features", k), ("rows_per_group", gs)):
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if quantizer not in (0, 1):
        raise ValueError(f"quantizer must be 0 (laplace) or 1 (uniform), got {quantizer!r}")
    c, u = math.ceil(n / gs), math.ceil(k / UNIT)
    kp = u * UNIT
    expect = {
        "qweight": (qweight, torch.int32, None),
        "scale": (scale, torch.float16, (c, kp)),
        "loc": (loc, torch.float16, (c, kp)),
        "depth": (depth, torch.uint8, (c, u)),
        "row_perm": (row_perm, torch.int32, (n,)),
        "col_perm": (col_perm, torch.int32, (c, kp)),
    }
    if bias is not None:
        expect["bias"] = (bias, torch.float16, (n,))
    for name, (t, dtype, shape) in expect.items():
        if t.dtype != dtype:
            raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for a [{n}, {k}] layer with "
                             f"rows_per_group={gs}, got {tuple(t.shape)}")
    if qweight.dim() != 1:
        raise ValueError(f"qweight must be 1-D, got shape {tuple(qweight.shape)}")
    if qweight.numel() >= 2 ** 31:  # unit_offset is int32 (8 GiB of indices per layer at most)
        raise ValueError(f"qweight has {qweight.numel()} words; at most 2^31 - 1 are supported")


def _check_qweight_words(qweight: torch.Tensor, depth: torch.Tensor, out_features: int,
                         rows_per_group: int) -> None:
    """qweight's length against what the depths need (docs/format.md "qweight layout").

    Reads depth's values: on a CUDA depth that is one host sync, which is why ``prepare`` (once
    per layer) always runs it and ``qlinear`` (per call) only on the CPU. Skipped where depth
    holds no values (meta device, fake tensors, tracing under torch.compile). Call after
    ``_check_layer`` (depth's shape must match the geometry).
    """
    from torch._subclasses.fake_tensor import is_fake

    if depth.device.type == "meta" or torch.compiler.is_compiling() or is_fake(depth):
        return
    chunks = depth.shape[0]
    rows = torch.clamp(out_features - torch.arange(chunks, dtype=torch.int64, device="cpu")
                       * rows_per_group, max=rows_per_group)
    need = int((rows * depth.to("cpu", torch.int64).sum(dim=1)).sum())
    if qweight.numel() != need:
        raise ValueError(f"qweight has {qweight.numel()} words but the depths need {need}")


def dequantize(qweight: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
               depth: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
               out_features: int, in_features: int, rows_per_group: int,
               quantizer: Union[int, str]) -> torch.Tensor:
    """float32 [N, K] weight of a packed layer, in original row/column order (docs/format.md).

    Works one depth at a time over all units of that depth, so the work is vectorised but the
    memory is O(N * Kp) int64 for the indices.
    """
    quantizer = _quantizer_code(quantizer)
    n, k, gs = out_features, in_features, rows_per_group
    dev = qweight.device
    chunks, units = depth.shape
    kp = units * UNIT
    uoff = unit_offsets(depth, n, gs).to(torch.int64)
    rows = torch.clamp(n - torch.arange(chunks, device=dev, dtype=torch.int64) * gs, max=gs)
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    # q[c, r, p]: B-bit index of chunk row r at position p (0 where the depth is 0 or r >= rows_c)
    values = loc.to(torch.float32).reshape(chunks, 1, kp).expand(chunks, gs, kp).clone()
    values = values.view(chunks, gs, units, UNIT)
    r = torch.arange(gs, device=dev, dtype=torch.int64)
    j = torch.arange(UNIT, device=dev, dtype=torch.int64)
    scale_u = scale.to(torch.float32).view(chunks, units, UNIT)
    loc_u = loc.to(torch.float32).view(chunks, units, UNIT)
    for b in range(1, 9):
        cu = (depth == b).nonzero()  # [n_units, 2] = (c, u)
        if cu.numel() == 0:
            continue
        cc, uu = cu[:, 0], cu[:, 1]
        row_ok = r[None, :] < rows[cc, None]  # [n_units, gs]
        # word (unit, row, w) at uoff + w * rows_c + r
        widx = (uoff[cc, uu][:, None, None] + torch.arange(b, device=dev)[None, None, :]
                * rows[cc][:, None, None] + r[None, :, None])
        widx = torch.where(row_ok[:, :, None], widx, torch.zeros_like(widx))
        w = words[widx]  # [n_units, gs, b]
        bit = j * b
        lo_word, shift = bit // 32, bit % 32
        hi_word = torch.clamp(lo_word + 1, max=b - 1)
        lo = w[:, :, lo_word] >> shift
        hi = torch.where(shift + b > 32, w[:, :, hi_word] << (32 - shift), torch.zeros_like(lo))
        q = (lo | hi) & ((1 << b) - 1)  # [n_units, gs, 32]
        t = quantizer_table(quantizer, b, device=dev)[q]
        vals = loc_u[cc, uu][:, None, :] + scale_u[cc, uu][:, None, :] * t
        cur = values[cc, :, uu, :]  # [n_units, gs, 32]
        values[cc, :, uu, :] = torch.where(row_ok[:, :, None], vals, cur)
    values = values.view(chunks * gs, kp)[:n]  # permuted row order, chunk position order
    out = torch.zeros(n, k + 1, dtype=torch.float32, device=dev)
    dest_col = col_perm.to(torch.int64).repeat_interleave(gs, dim=0)[:n]  # [N, Kp]; K = sentinel
    dest_row = row_perm.to(torch.int64)[:, None].expand(n, kp)
    out[dest_row, dest_col] = values
    return out[:, :k]


def _reference_qlinear(x, qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                       in_features, rows_per_group, quantizer) -> torch.Tensor:
    w = dequantize(qweight, scale, loc, depth, row_perm, col_perm, out_features, in_features,
                   rows_per_group, quantizer)
    y = x.reshape(-1, in_features).to(torch.float32) @ w.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


# ----------------------------------------------------------------------------------------------
# The op
# ----------------------------------------------------------------------------------------------

# ``workspace`` is not declared mutated: the kernels write it during the call but leave it zero,
# as it was (a declared mutation would make torch.compile copy it around every call).
@torch.library.custom_op("radio::qlinear", mutates_args=())
def _qlinear_op(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
                depth: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                bias: Optional[torch.Tensor], out_features: int, in_features: int,
                rows_per_group: int, quantizer: int,
                unit_offset: Optional[torch.Tensor] = None,
                workspace: Optional[torch.Tensor] = None,
                work_quantiles: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Default implementation (CPU and any device without a kernel): the reference path."""
    return _reference_qlinear(x, qweight, scale, loc, depth, row_perm, col_perm, bias,
                              out_features, in_features, rows_per_group, quantizer)


@_qlinear_op.register_fake
def _(x, qweight, scale, loc, depth, row_perm, col_perm, bias, out_features, in_features,
      rows_per_group, quantizer, unit_offset=None, workspace=None, work_quantiles=None):
    torch._check(x.shape[-1] == in_features,
                 lambda: f"x has {x.shape[-1]} features, expected in_features={in_features}")
    return x.new_empty(*x.shape[:-1], out_features)


@_qlinear_op.register_kernel("cuda")
def _(x, qweight, scale, loc, depth, row_perm, col_perm, bias, out_features, in_features,
      rows_per_group, quantizer, unit_offset=None, workspace=None, work_quantiles=None):
    if not _cuda_ready():
        return _reference_qlinear(x, qweight, scale, loc, depth, row_perm, col_perm, bias,
                                  out_features, in_features, rows_per_group, quantizer)
    if unit_offset is None:
        unit_offset = unit_offsets(depth, out_features, rows_per_group)
    return _cuda_qlinear(x, qweight, scale, loc, depth, row_perm, col_perm, bias,
                         out_features, in_features, rows_per_group, quantizer, unit_offset,
                         workspace, work_quantiles)


@torch.library.custom_op("radio::dequantize", mutates_args=())
def _dequantize_op(qweight: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
                   depth: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                   out_features: int, in_features: int, rows_per_group: int,
                   quantizer: int) -> torch.Tensor:
    """float32 [N, K] weight as an opaque op (its reference body has data-dependent shapes)."""
    return dequantize(qweight, scale, loc, depth, row_perm, col_perm, out_features, in_features,
                      rows_per_group, quantizer)


@_dequantize_op.register_fake
def _(qweight, scale, loc, depth, row_perm, col_perm, out_features, in_features,
      rows_per_group, quantizer):
    return scale.new_empty(out_features, in_features, dtype=torch.float32)


def _cuda_ready() -> bool:
    """radio._cuda was built with the kernels (not the placeholder module of older builds)."""
    return _cuda is not None and hasattr(_cuda, "qlinear")


# Path for batches of more than 64 tokens: "dequant" (dequantize to a temporary, then cuBLAS
# through torch) or "kernel" (the older tensor-core kernel, qlinear_kernel.cuh, in groups of 64
# tokens; only for K <= 32768).
# "dequant" is the default because it measured faster on an H100 (bench/KERNELS.md); it runs at
# 0.63-0.67x f16 at 2048 tokens there.
PREFILL_PATH = "dequant"

_CUDA_DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def _cuda_qlinear(x, qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                  in_features, rows_per_group, quantizer, unit_offset, workspace=None,
                  work_quantiles=None):
    """Calls radio._cuda with raw pointers on the current stream; torch owns every buffer.

    One token with the layer's kept ``workspace`` (zero between calls): no memset node before
    the kernel, which on sm_90 may then also overlap the kernel before it (programmatic
    dependent launch, cuda/pdl.cuh; ``_cuda.set_pdl``). Otherwise a fresh workspace, zeroed by
    radio._cuda.
    """
    n, k = out_features, in_features
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    dev = x.device
    if m == 0:
        return x.new_empty(*x.shape[:-1], n)
    tensors = (qweight, scale, loc, depth, row_perm, col_perm, unit_offset) + (
        () if bias is None else (bias,)) + (() if work_quantiles is None else (work_quantiles,))
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all layer tensors must be on {dev}, got one on {t.device}")
    qweight, scale, loc, depth, row_perm, col_perm, unit_offset = (
        t.contiguous() for t in tensors[:7])
    if work_quantiles is not None:
        work_quantiles = work_quantiles.contiguous()
    if qweight.data_ptr() % 16:  # a view at an odd offset: the TMA needs 16-byte alignment
        qweight = qweight.clone()
    bias_ptr = 0 if bias is None else bias.contiguous().data_ptr()
    stream = torch.cuda.current_stream(dev).cuda_stream
    dtype_code = _CUDA_DTYPE_CODE[x.dtype]
    with torch.cuda.device(dev):
        if m > _cuda.MAX_KERNEL_TOKENS and (PREFILL_PATH == "dequant"
                                             or _cuda.use_dequant_gemm(m, n, k)):
            # prefill: dequantize into a temporary in x's dtype, then cuBLAS through torch
            w = torch.empty(n, k, dtype=x.dtype, device=dev)
            _cuda.dequantize(qweight.data_ptr(), scale.data_ptr(), loc.data_ptr(),
                             depth.data_ptr(), unit_offset.data_ptr(), row_perm.data_ptr(),
                             col_perm.data_ptr(), w.data_ptr(), dtype_code, n, k,
                             rows_per_group, quantizer, stream)
            y = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(x.dtype))
        else:
            y = torch.empty(m, n, dtype=x.dtype, device=dev)
            need = _cuda.workspace_bytes(m, n, k, rows_per_group)
            kept = (m == 1 and workspace is not None and workspace.device == dev
                    and workspace.numel() >= need)
            ws = workspace if kept else torch.empty(need, dtype=torch.uint8, device=dev)
            _cuda.qlinear(x2.data_ptr(), dtype_code, m, qweight.data_ptr(), scale.data_ptr(),
                          loc.data_ptr(), depth.data_ptr(), unit_offset.data_ptr(),
                          row_perm.data_ptr(), col_perm.data_ptr(), bias_ptr, y.data_ptr(),
                          n, k, rows_per_group, quantizer, ws.data_ptr(), ws.numel(), stream,
                          qweight.numel(), kept,
                          0 if work_quantiles is None else work_quantiles.data_ptr(),
                          0 if work_quantiles is None else work_quantiles.numel())
    return y.reshape(*x.shape[:-1], n)


@_dequantize_op.register_kernel("cuda")
def _(qweight, scale, loc, depth, row_perm, col_perm, out_features, in_features, rows_per_group,
      quantizer):
    if not _cuda_ready():
        return dequantize(qweight, scale, loc, depth, row_perm, col_perm, out_features,
                          in_features, rows_per_group, quantizer)
    dev = qweight.device
    uoff = unit_offsets(depth, out_features, rows_per_group)
    out = torch.empty(out_features, in_features, dtype=torch.float32, device=dev)
    tensors = [t.contiguous() for t in (qweight, scale, loc, depth, uoff, row_perm, col_perm)]
    with torch.cuda.device(dev):
        _cuda.dequantize(*(t.data_ptr() for t in tensors), out.data_ptr(),
                         _CUDA_DTYPE_CODE[torch.float32], out_features, in_features,
                         rows_per_group, quantizer, torch.cuda.current_stream(dev).cuda_stream)
    return out


def _setup_context(ctx, inputs, output):
    (x, qweight, scale, loc, depth, row_perm, col_perm, bias, n, k, gs, quantizer, _, _, _) = inputs
    ctx.save_for_backward(qweight, scale, loc, depth, row_perm, col_perm)
    ctx.attrs = (n, k, gs, quantizer)
    ctx.x_dtype = x.dtype


def _backward(ctx, grad):
    # Gradient for x only (the packed weight is frozen): dx = dy @ W.
    qweight, scale, loc, depth, row_perm, col_perm = ctx.saved_tensors
    n, k, gs, quantizer = ctx.attrs
    w = _dequantize_op(qweight, scale, loc, depth, row_perm, col_perm, n, k, gs, quantizer)
    dx = (grad.reshape(-1, n).to(torch.float32) @ w).to(ctx.x_dtype)
    return (dx.reshape(*grad.shape[:-1], k),) + (None,) * 14


_qlinear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Python entry points
# ----------------------------------------------------------------------------------------------

def _quantizer_code(quantizer: Union[int, str]) -> int:
    if isinstance(quantizer, str):
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        return QUANTIZERS.index(quantizer)
    if quantizer not in (0, 1):
        raise ValueError(f"quantizer must be 0 (laplace) or 1 (uniform), got {quantizer!r}")
    return int(quantizer)


def qlinear(x: torch.Tensor, *, qweight: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
            depth: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
            bias: Optional[torch.Tensor] = None, out_features: int, in_features: int,
            rows_per_group: int, quantizer: Union[int, str],
            unit_offset: Optional[torch.Tensor] = None,
            workspace: Optional[torch.Tensor] = None,
            work_quantiles: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ W.T + bias`` for a packed layer; x is [..., K] float16/bfloat16/float32.

    Returns [..., N] in x's dtype. ``quantizer`` is "laplace"/"uniform" or its code 0/1.
    ``unit_offset`` is the cached result of ``unit_offsets``, ``workspace`` the layer's kept
    zeroed buffer and ``work_quantiles`` the cached result of ``work_quantiles`` (all three from
    ``prepare``): one-token calls on CUDA use the workspace instead of a fresh one and leave it
    zero; the 4-16-token stream kernel cuts its blocks' ranges at the quantiles (equal unit
    counts without them). Calls that may run at the same time on different streams must not
    share one ``workspace``.
    """
    if x.dtype not in _X_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must have shape [..., {in_features}], got {tuple(x.shape)}")
    code = _quantizer_code(quantizer)
    _check_layer(qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                 in_features, rows_per_group, code)
    # On the CPU the length check costs O(C * U) beside the O(N * K) dequantize: always run it.
    # On CUDA it would be a host sync per call, so there prepare() (once per layer) runs it.
    if depth.device.type == "cpu" and qweight.device.type == "cpu":
        _check_qweight_words(qweight, depth, out_features, rows_per_group)
    if workspace is not None:
        _check_workspace(workspace, out_features, rows_per_group)
    if work_quantiles is not None:
        _check_work_quantiles(work_quantiles, depth)
    return _qlinear_op(x, qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                       in_features, rows_per_group, code, unit_offset, workspace,
                       work_quantiles)


def decode_workspace_bytes(out_features: int, rows_per_group: int) -> int:
    """Bytes of the workspace a one-token call needs at most: an f32 partial sum per row and a
    counter per chunk (cuda/select_config.cu ``add_split_workspace``), kept zeroed per layer."""
    chunks = -(-out_features // rows_per_group)
    return (4 * out_features + 255) // 256 * 256 + 4 * chunks


def _check_workspace(workspace: torch.Tensor, out_features: int, rows_per_group: int) -> None:
    if not isinstance(workspace, torch.Tensor):
        raise TypeError(f"workspace must be a torch.Tensor (from prepare()), got "
                        f"{type(workspace).__name__}")
    need = decode_workspace_bytes(out_features, rows_per_group)
    if workspace.dtype != torch.uint8 or workspace.dim() != 1 or not workspace.is_contiguous():
        raise ValueError(f"workspace must be a contiguous 1-D uint8 tensor (from prepare()), got "
                         f"dtype {workspace.dtype} and shape {tuple(workspace.shape)}")
    if workspace.numel() < need:
        raise ValueError(f"workspace has {workspace.numel()} bytes, this layer needs {need} "
                         f"(decode_workspace_bytes({out_features}, {rows_per_group}))")


def _check_work_quantiles(work_quantiles: torch.Tensor, depth: torch.Tensor) -> None:
    """Dtype and shape always; on the CPU also the values, outside tracing (on CUDA that would be
    a host sync per call: prepare() builds the table, and the kernel clamps its cuts into the
    layer, so a table of another layer gives wrong sums but never an out-of-bounds read)."""
    if not isinstance(work_quantiles, torch.Tensor):
        raise TypeError(f"work_quantiles must be a torch.Tensor (from prepare()), got "
                        f"{type(work_quantiles).__name__}")
    if (work_quantiles.dtype != torch.int32 or work_quantiles.dim() != 1
            or work_quantiles.numel() < 2 or not work_quantiles.is_contiguous()):
        raise ValueError(f"work_quantiles must be a contiguous 1-D int32 tensor of at least 2 "
                         f"entries (from prepare()), got dtype {work_quantiles.dtype} and shape "
                         f"{tuple(work_quantiles.shape)}")
    from torch._subclasses.fake_tensor import is_fake

    if (work_quantiles.device.type == "cpu" and not torch.compiler.is_compiling()
            and not is_fake(work_quantiles)):
        total = depth.numel()
        q = work_quantiles.to(torch.int64)
        falls = bool((q[1:] < q[:-1]).any())
        if int(q[0]) != 0 or int(q[-1]) != total or falls:
            raise ValueError(f"work_quantiles must rise from 0 to the layer's {total} units "
                             f"(C x U, from prepare()), got {q[0].item()} .. {q[-1].item()}"
                             + (" not non-decreasing" if falls else ""))


def prepare(*, qweight: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
            depth: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
            bias: Optional[torch.Tensor] = None, out_features: int, in_features: int,
            rows_per_group: int, quantizer: Union[int, str]) -> dict:
    """The keyword arguments of ``qlinear`` for one layer, checked, with ``unit_offset``,
    ``workspace`` (zeroed, ``decode_workspace_bytes``) and ``work_quantiles`` added.

    Call once per layer (after moving the tensors to their device) and keep the dict (or its
    ``unit_offset``, ``workspace`` and ``work_quantiles`` as buffers); ``qlinear(x,
    **prepared)`` then does no per-call setup.
    Besides the dtype/shape checks it checks qweight's length against the depths (one host sync
    when depth is on a GPU), so the kernels never read past qweight.
    """
    code = _quantizer_code(quantizer)
    _check_layer(qweight, scale, loc, depth, row_perm, col_perm, bias, out_features,
                 in_features, rows_per_group, code)
    _check_qweight_words(qweight, depth, out_features, rows_per_group)
    uoff = unit_offsets(depth, out_features, rows_per_group)
    return dict(qweight=qweight, scale=scale, loc=loc, depth=depth, row_perm=row_perm,
                col_perm=col_perm, bias=bias, out_features=out_features,
                in_features=in_features, rows_per_group=rows_per_group, quantizer=code,
                unit_offset=uoff,
                workspace=torch.zeros(decode_workspace_bytes(out_features, rows_per_group),
                                      dtype=torch.uint8, device=qweight.device),
                work_quantiles=work_quantiles(depth))
