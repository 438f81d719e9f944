"""Plain numpy twin of the packed format v1, written from docs/format.md alone.

It is the test oracle for ``radio._core`` (and through it for the CUDA kernels): ``pack``,
``unpack``, the two group quantizers (without the refinement search) and ``dequantize``. It
favours being obviously right over being fast; use it on small layers.

Conventions follow ``radio._core``: f16 tensors are float16 numpy arrays *or* their uint16 bit
patterns (``as_half`` accepts both), permutations any integer dtype, ``qweight`` int32.
"""
from __future__ import annotations

import math

import numpy as np

UNIT = 32
MAX_DEPTH = 8


# ----------------------------------------------------------------------------------------------
# Tables and geometry
# ----------------------------------------------------------------------------------------------

def table(quantizer: str, depth: int) -> np.ndarray:
    """T_B of docs/format.md as float32 [2**depth] (computed in float64, rounded once)."""
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 0..{MAX_DEPTH}, got {depth}")
    levels = 2 ** depth
    q = np.arange(levels, dtype=np.float64)
    if quantizer == "laplace":
        v = (q + 0.5) / levels - 0.5
        t = -np.sign(v) * np.log1p(-2.0 * np.abs(v))
    elif quantizer == "uniform":
        t = q - (levels - 1) / 2.0
    else:
        raise ValueError(f"quantizer must be 'laplace' or 'uniform', got {quantizer!r}")
    return t.astype(np.float32)


def chunk_rows(out_features: int, rows_per_group: int) -> list:
    """rows_c for every chunk c."""
    chunks = math.ceil(out_features / rows_per_group)
    return [min(rows_per_group, out_features - c * rows_per_group) for c in range(chunks)]


def word_starts(depth: np.ndarray, out_features: int, rows_per_group: int):
    """(base [C], off [C, U], W): chunk base word, unit word-row offsets, total words."""
    depth = np.asarray(depth, dtype=np.int64)
    rows = np.array(chunk_rows(out_features, rows_per_group), dtype=np.int64)
    if depth.ndim != 2 or depth.shape[0] != rows.size:
        raise ValueError(f"depth must have shape ({rows.size}, U), got {depth.shape}")
    if depth.size and (depth.min() < 0 or depth.max() > MAX_DEPTH):
        raise ValueError(f"depth must be in 0..{MAX_DEPTH}, got values {depth.min()}..{depth.max()}")
    off = np.cumsum(depth, axis=1) - depth
    chunk_words = rows * depth.sum(axis=1)
    base = np.cumsum(chunk_words) - chunk_words
    return base, off, int(chunk_words.sum())


# ----------------------------------------------------------------------------------------------
# Packing: a unit row is one little-endian 32*B-bit string; index j at bits [j*B, j*B + B)
# ----------------------------------------------------------------------------------------------

def _bits_to_words(bits: np.ndarray) -> np.ndarray:
    """[..., 32*B] 0/1 bits -> [..., B] uint32 words (string bit i = bit i % 32 of word i // 32)."""
    shaped = bits.reshape(*bits.shape[:-1], -1, 32).astype(np.uint64)
    return (shaped << np.arange(32, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)


def _words_to_bits(words: np.ndarray) -> np.ndarray:
    """[..., B] uint32 -> [..., 32*B] 0/1 bits."""
    w = words.astype(np.uint64)[..., None]
    bits = (w >> np.arange(32, dtype=np.uint64)) & 1
    return bits.reshape(*words.shape[:-1], -1).astype(np.uint8)


def pack(indices: np.ndarray, depth: np.ndarray, rows_per_group: int) -> np.ndarray:
    """uint8 [N, Kp] indices (permuted rows, chunk-position order) -> int32 [W]."""
    indices = np.asarray(indices)
    depth = np.asarray(depth)
    n, kp = indices.shape
    if kp != depth.shape[1] * UNIT:
        raise ValueError(f"indices must have {depth.shape[1] * UNIT} columns, got {kp}")
    base, off, total = word_starts(depth, n, rows_per_group)
    out = np.zeros(total, dtype=np.uint32)
    for c, rows in enumerate(chunk_rows(n, rows_per_group)):
        block = indices[c * rows_per_group: c * rows_per_group + rows].astype(np.int64)
        for u in range(depth.shape[1]):
            b = int(depth[c, u])
            idx = block[:, u * UNIT:(u + 1) * UNIT]  # [rows, 32]
            if idx.max(initial=0) >= 2 ** b:
                raise ValueError(f"chunk {c} unit {u}: index {idx.max()} does not fit {b} bits")
            if b == 0:
                continue
            bits = (idx[:, :, None] >> np.arange(b)) & 1  # [rows, 32, b], LSB first
            words = _bits_to_words(bits.reshape(rows, UNIT * b))  # [rows, b]
            start = base[c] + off[c, u] * rows
            # word b' of row r at start + b' * rows + r
            out[start:start + b * rows] = words.T.reshape(-1)
    return out.view(np.int32)


def unpack(qweight: np.ndarray, depth: np.ndarray, out_features: int,
           rows_per_group: int) -> np.ndarray:
    """int32 [W] -> uint8 [N, Kp]; depth-0 units give 0."""
    depth = np.asarray(depth)
    words_all = np.asarray(qweight).view(np.uint32)
    base, off, total = word_starts(depth, out_features, rows_per_group)
    if words_all.size != total:
        raise ValueError(f"qweight has {words_all.size} words but the depths need {total}")
    out = np.zeros((out_features, depth.shape[1] * UNIT), dtype=np.uint8)
    for c, rows in enumerate(chunk_rows(out_features, rows_per_group)):
        for u in range(depth.shape[1]):
            b = int(depth[c, u])
            if b == 0:
                continue
            start = base[c] + off[c, u] * rows
            words = words_all[start:start + b * rows].reshape(b, rows).T  # [rows, b]
            bits = _words_to_bits(words).reshape(rows, UNIT, b).astype(np.int64)
            vals = (bits << np.arange(b)).sum(axis=-1)
            out[c * rows_per_group: c * rows_per_group + rows, u * UNIT:(u + 1) * UNIT] = vals
    return out


# ----------------------------------------------------------------------------------------------
# Quantizers (docs/format.md "Encoding"), without the refinement search
# ----------------------------------------------------------------------------------------------

def as_half(a) -> np.ndarray:
    """float16 view of f16 data given as float16 or as uint16 bit patterns."""
    a = np.asarray(a)
    return a.view(np.float16) if a.dtype == np.uint16 else a.astype(np.float16)


def to_half(x) -> np.float32:
    return np.float32(np.float16(np.float32(x)))


def group_code(w: np.ndarray, depth: int, quantizer: str, symmetric: bool = False):
    """(loc, scale) of one group as float32 values of f16 numbers (no refinement)."""
    w = np.asarray(w, dtype=np.float32)
    levels = 2 ** depth
    if quantizer == "laplace":
        if symmetric:
            raise ValueError("symmetric applies to the uniform quantizer only")
        mu0 = np.sort(w)[(w.size - 1) // 2]  # lower median
        spread = np.float32(np.sqrt(np.mean((w.astype(np.float64) - np.float64(mu0)) ** 2)))
        s0 = spread * np.float32(3.0 / math.sqrt(2.0))
    elif quantizer == "uniform":
        steps = np.float32(max(levels - 1, 1))
        if symmetric:
            mu0 = np.float32(0.0)
            s0 = np.float32(2.0) * np.abs(w).max() / steps
        else:
            mu0 = (w.max() + w.min()) * np.float32(0.5)
            s0 = (w.max() - w.min()) / steps
    else:
        raise ValueError(f"quantizer must be 'laplace' or 'uniform', got {quantizer!r}")
    if depth == 0:
        s0 = np.float32(0.0)
    return to_half(mu0), to_half(s0)


def encode(w: np.ndarray, loc, scale, depth: int, quantizer: str) -> np.ndarray:
    """uint8 indices of a group for a given (loc, scale); 0 when depth = 0 or scale = 0."""
    w = np.asarray(w, dtype=np.float32)
    if depth == 0 or not scale > 0:
        return np.zeros(w.shape, dtype=np.uint8)
    levels = 2 ** depth
    z = (w - np.float32(loc)) / np.float32(scale)
    if quantizer == "laplace":
        f = np.sign(z) * -np.expm1(-np.abs(z)) * np.float32(0.5) + np.float32(0.5)
        q = np.minimum(np.floor(np.float32(levels) * f), levels - 1)
    else:
        q = np.clip(np.round(z + np.float32((levels - 1) / 2)), 0, levels - 1)
    return q.astype(np.uint8)


def decode(q: np.ndarray, loc, scale, depth: int, quantizer: str) -> np.ndarray:
    """loc + scale * T_B[q] in float32."""
    return np.float32(loc) + np.float32(scale) * table(quantizer, depth)[np.asarray(q, np.int64)]


def quantize_layer(weight: np.ndarray, row_perm, col_perm, depth, rows_per_group: int,
                   quantizer: str = "laplace", symmetric: bool = False) -> dict:
    """Group-by-group quantization (no refinement). Returns dict(scale, loc as uint16 f16 bits
    [C, Kp], qweight int32 [W], indices uint8 [N, Kp])."""
    weight = np.asarray(weight, dtype=np.float32)
    n, k = weight.shape
    row_perm = np.asarray(row_perm, dtype=np.int64)
    col_perm = np.asarray(col_perm, dtype=np.int64)
    depth = np.asarray(depth, dtype=np.uint8)
    if not np.isfinite(weight).all():
        raise ValueError("weight holds NaN or Inf")
    kp = col_perm.shape[1]
    scale = np.zeros(col_perm.shape, dtype=np.float16)
    loc = np.zeros(col_perm.shape, dtype=np.float16)
    indices = np.zeros((n, kp), dtype=np.uint8)
    for c, rows in enumerate(chunk_rows(n, rows_per_group)):
        prow = np.arange(c * rows_per_group, c * rows_per_group + rows)
        block = weight[row_perm[prow]]  # [rows, K]
        for p in range(k):
            b = int(depth[c, p // UNIT])
            w = block[:, col_perm[c, p]]
            mu, s = group_code(w, b, quantizer, symmetric)
            loc[c, p], scale[c, p] = mu, s
            indices[prow, p] = encode(w, mu, s, b, quantizer)
    return dict(scale=scale.view(np.uint16), loc=loc.view(np.uint16),
                qweight=pack(indices, depth, rows_per_group), indices=indices)


# ----------------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------------

def dequantize(layer: dict) -> np.ndarray:
    """float32 [N, K] of a layer dict (as ``radio._core`` takes it), original order."""
    n, k = int(layer["out_features"]), int(layer["in_features"])
    gs = int(layer["rows_per_group"])
    quantizer = layer["quantizer"]
    depth = np.asarray(layer["depth"])
    row_perm = np.asarray(layer["row_perm"], dtype=np.int64)
    col_perm = np.asarray(layer["col_perm"], dtype=np.int64)
    scale = as_half(layer["scale"]).astype(np.float32)
    loc = as_half(layer["loc"]).astype(np.float32)
    q = unpack(layer["qweight"], depth, n, gs)
    w = np.full((n, k), np.nan, dtype=np.float32)
    for c, rows in enumerate(chunk_rows(n, gs)):
        prow = np.arange(c * gs, c * gs + rows)
        for p in range(k):  # one group (column of a chunk) at a time
            b = int(depth[c, p // UNIT])
            w[row_perm[prow], col_perm[c, p]] = decode(q[prow, p], loc[c, p], scale[c, p], b,
                                                       quantizer)
    if np.isnan(w).any():
        raise ValueError("permutations did not cover every weight")
    return w


def dequant_matmul(layer: dict, x: np.ndarray) -> np.ndarray:
    """x [M, K] @ W.T (+ bias), computed in float64 and returned as float32."""
    w = dequantize(layer).astype(np.float64)
    y = np.asarray(x, dtype=np.float64) @ w.T
    if layer.get("bias") is not None:
        y = y + as_half(layer["bias"]).astype(np.float64)
    return y.astype(np.float32)
