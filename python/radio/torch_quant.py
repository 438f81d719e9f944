"""Vectorised torch twins of the group quantizers of docs/format.md ("Encoding").

Everything here runs on the weight's device, for all groups of a layer at once: the per-round
re-quantization of a 7B model must not loop over groups in Python. The reference twin is the C++
``radio._core.quantize_layer``; tests/python/test_torch_quant.py holds the two equal on random
layers (same scales, locations and indices).

Shapes. Layers of one shape are processed as a stack ``W [L, N, K]``. Through the row
permutations, their chunks of ``gs`` rows form blocks ``[B, R, K]`` (``grouping.chunk_blocks``):
``B`` chunks of ``R`` rows each (all chunks but possibly each layer's last have ``R = gs``). A
*group* is one column of one chunk, so per-group values are ``[B, K]`` (indexed by the ORIGINAL
column) and per-group depths come as ``depth_cols [B, K]`` (``grouping.depth_per_column``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import torch

from . import grouping
from .format import MAX_DEPTH, UNIT

# Refinement grid of docs/format.md: m, beta in {-2, -1.875, ..., 2} (33 values each).
REFINE_STEPS = tuple(-2.0 + 0.125 * i for i in range(33))
# float32 values of the scale multipliers 2**m and of 3/sqrt(2): every product below is a float32
# product of float32 operands, exactly as in the C++ twin.
_MULTIPLIERS = tuple(torch.tensor(2.0 ** m, dtype=torch.float32) for m in REFINE_STEPS)
_LAPLACE_SCALE = torch.tensor(3.0 / math.sqrt(2.0), dtype=torch.float32)

# Elements processed at once by the refinement search; bounds its temporaries (~10 float32
# copies of a slice) on a large layer.
_SLICE_ELEMENTS = 1 << 24


@functools.lru_cache(maxsize=None)
def _lut_cpu(quantizer: str) -> torch.Tensor:
    """float32 [2 * 2**MAX_DEPTH]: entry ``2**B + q`` is T_B[q] (entry 1 is T_0[0] = 0).

    One table for all depths, so that decoding groups of mixed depth is a single gather. Values
    are computed in float64 and rounded once, like the C++ tables.
    """
    out = torch.zeros(2 << MAX_DEPTH, dtype=torch.float64)
    for depth in range(MAX_DEPTH + 1):
        levels = 1 << depth
        q = torch.arange(levels, dtype=torch.float64)
        if quantizer == "laplace":
            v = (q + 0.5) / levels - 0.5
            t = -torch.sign(v) * torch.log1p(-2.0 * v.abs())
        elif quantizer == "uniform":
            t = q - (levels - 1) / 2.0
        else:
            raise ValueError(f"quantizer must be 'laplace' or 'uniform', got {quantizer!r}")
        out[levels:2 * levels] = t
    return out.to(torch.float32)


def lut(quantizer: str, device) -> torch.Tensor:
    return _lut_cpu(quantizer).to(device)


def table(quantizer: str, depth: int) -> torch.Tensor:
    """T_B of docs/format.md as float32 [2**depth] (CPU)."""
    if not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 0..{MAX_DEPTH}, got {depth!r}")
    return _lut_cpu(quantizer)[1 << depth: 2 << depth].clone()


def to_half(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the float16 the file stores and back (the decoder's view of a value)."""
    return x.to(torch.float16).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Group statistics
# ----------------------------------------------------------------------------------------------

def lower_median(block: torch.Tensor) -> torch.Tensor:
    """[B, R, K] -> [B, K]: the median over rows, the lower one for even R."""
    # torch.median returns the lower of the two middle values, as docs/format.md asks.
    return block.median(dim=1).values


def rms_about(block: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
    """[B, R, K], [B, K] -> [B, K]: sqrt(mean((w - location)^2)) over rows, in float64 and
    rounded once to float32 (as the C++ twin does, so that both see the same spread)."""
    dev = block.to(torch.float64) - location.to(torch.float64)[:, None, :]
    return dev.square_().mean(dim=1).sqrt_().to(torch.float32)


def base_location(block: torch.Tensor, quantizer: str, symmetric: bool) -> torch.Tensor:
    """mu0 of every group of ``block`` [B, R, K] -> [B, K] (docs/format.md "Encoding")."""
    if quantizer == "laplace":
        return lower_median(block)
    if symmetric:
        return block.new_zeros(block.shape[0], block.shape[2])
    return (block.amax(dim=1) + block.amin(dim=1)) * 0.5


def base_scale(block: torch.Tensor, spread: torch.Tensor, depth_cols: torch.Tensor,
               quantizer: str, symmetric: bool) -> torch.Tensor:
    """s0 of every group -> [B, K]; 0 where the depth is 0."""
    if quantizer == "laplace":
        # Laplace of standard deviation 3S: the Panter-Dite compander for a Laplace source.
        s0 = spread * _LAPLACE_SCALE.to(spread.device)
    else:
        steps = (torch.pow(2.0, depth_cols.to(torch.float32)) - 1.0).clamp_min_(1.0)
        if symmetric:
            s0 = 2.0 * block.abs().amax(dim=1) / steps
        else:
            s0 = (block.amax(dim=1) - block.amin(dim=1)) / steps
    return torch.where(depth_cols > 0, s0, torch.zeros_like(s0))


# ----------------------------------------------------------------------------------------------
# Encode / decode with a per-group depth
# ----------------------------------------------------------------------------------------------

def encode(block: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
           quantizer: str) -> torch.Tensor:
    """Indices of ``block`` [B, R, K] given per-group ``loc``, ``scale`` (float32 values of the
    stored f16) and ``levels`` = 2**depth (float32), all [B, K]. Returns float32 [B, R, K] holding
    integers in ``0 .. levels-1``; 0 wherever the scale is 0."""
    loc3, scale3, levels3 = loc[:, None, :], scale[:, None, :], levels[:, None, :]
    z = (block - loc3) / scale3
    if quantizer == "laplace":
        # F(z) = 1/2 + sign(z)/2 * (1 - exp(-|z|)): the Laplace CDF, the compander.
        f = torch.sign(z) * (-torch.expm1(-z.abs())) * 0.5 + 0.5
        q = torch.minimum(torch.floor(levels3 * f), levels3 - 1.0)
    else:
        q = torch.round(z + (levels3 - 1.0) * 0.5).clamp_(min=0.0)
        q = torch.minimum(q, levels3 - 1.0)
    return torch.where(scale3 > 0, q, torch.zeros_like(q))


def decode(q: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, depth_cols: torch.Tensor,
           table: torch.Tensor) -> torch.Tensor:
    """``loc + scale * T_B[q]`` -> float32 [B, R, K]; ``table`` from ``lut``."""
    index = q.to(torch.int64) + (1 << depth_cols.to(torch.int64))[:, None, :]
    return loc[:, None, :] + scale[:, None, :] * table[index]


def _squared_error(block, q_loc, q_scale, levels, depth_cols, table, quantizer):
    # A candidate beyond the float16 range never wins (its error is inf, as in the C++ twin);
    # encoding it with scale 0 keeps the indices valid.
    valid = torch.isfinite(q_loc) & torch.isfinite(q_scale)
    q_scale = torch.where(valid, q_scale, torch.zeros_like(q_scale))
    q_loc = torch.where(valid, q_loc, torch.zeros_like(q_loc))
    q = encode(block, q_loc, q_scale, levels, quantizer)
    err = decode(q, q_loc, q_scale, depth_cols, table).sub_(block).square_()
    err = err.sum(dim=1, dtype=torch.float64)
    return torch.where(valid, err, torch.full_like(err, math.inf))


# Searches over the 33-point grid: "full" tries every point (the C++ twin's search); "coarse"
# tries every 4th point, then the 3 on each side of the best one: 15 evaluations instead of 33
# per parameter, for CPU runs where the search dominates the time (bench/RESULTS.md measures
# what it costs in error). The grid and the stored format are the same either way.
REFINE_SEARCHES = ("full", "coarse")
_COARSE_STRIDE = 4
_GRID_ZERO = REFINE_STEPS.index(0.0)


def _grid_search(evaluate, search: str, device):
    """Minimises ``evaluate(i)`` -> error [B, K] over grid indices i (scalars, or [B, K] index
    tensors in the second pass of "coarse"). Returns (best index [B, K] int64, best error)."""
    n = len(REFINE_STEPS)
    best_err = best_i = None
    first_pass = range(n) if search == "full" else range(0, n, _COARSE_STRIDE)
    for i in first_pass:
        err = evaluate(torch.tensor(i, device=device))
        if best_err is None:
            # Until a finite error is seen the parameter stays at 0 (grid index of m = beta = 0).
            best_err = torch.full_like(err, math.inf)
            best_i = torch.full_like(err, _GRID_ZERO, dtype=torch.int64)
        better = err < best_err  # strict: ties keep the earlier candidate
        best_err = torch.where(better, err, best_err)
        best_i = torch.where(better, torch.full_like(best_i, i), best_i)
    if search == "coarse":
        centre = best_i.clone()
        for offset in (-3, -2, -1, 1, 2, 3):
            i = centre + offset
            inside = (i >= 0) & (i < n)
            err = evaluate(i.clamp(0, n - 1))
            better = inside & (err < best_err)
            best_err = torch.where(better, err, best_err)
            best_i = torch.where(better, i, best_i)
    return best_i, best_err


def refine(block: torch.Tensor, mu0: torch.Tensor, s0: torch.Tensor, spread: torch.Tensor,
           depth_cols: torch.Tensor, quantizer: str, symmetric: bool, search: str = "full"):
    """The per-group search of docs/format.md: best ``s = s0 * 2**m``, then best
    ``mu = mu0 + beta * S * 2**m``; ties keep the earlier candidate (``search``: see
    REFINE_SEARCHES). Returns (loc, scale) as float32 values of f16 numbers, [B, K]."""
    if search not in REFINE_SEARCHES:
        raise ValueError(f"search must be one of {REFINE_SEARCHES}, got {search!r}")
    table = lut(quantizer, block.device)
    levels = torch.pow(2.0, depth_cols.to(torch.float32))
    loc = to_half(mu0)
    multipliers = torch.stack(_MULTIPLIERS).to(s0.device)
    steps = torch.tensor(REFINE_STEPS, dtype=torch.float32, device=s0.device)

    def scale_error(i):
        return _squared_error(block, loc, to_half(s0 * multipliers[i]), levels, depth_cols,
                              table, quantizer)

    best_m, _ = _grid_search(scale_error, search, s0.device)
    best_mult = multipliers[best_m]
    scale = to_half(s0 * best_mult)
    if not symmetric:
        step = spread * best_mult  # shifts in steps of the spread at the chosen scale

        def loc_error(i):
            return _squared_error(block, to_half(mu0 + steps[i] * step), scale, levels,
                                  depth_cols, table, quantizer)

        best_b, _ = _grid_search(loc_error, search, s0.device)
        loc = to_half(mu0 + steps[best_b] * step)
    # Depth 0 keeps loc = mu0 and scale = 0 (docs/format.md).
    zero = depth_cols == 0
    return torch.where(zero, to_half(mu0), loc), torch.where(zero, torch.zeros_like(scale), scale)


def _check_half_range(loc, scale, mu0, s0) -> None:
    """The file stores loc and scale as float16: a group whose values do not fit is an error
    (as in radio._core.quantize_layer), not an inf that would poison the decoding."""
    bad = ~(torch.isfinite(loc) & torch.isfinite(scale))
    if bool(bad.any()):
        b, k = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"the group of column {k} (block chunk {b}) needs loc {float(mu0[b, k])} "
                         f"and scale {float(s0[b, k])}, beyond the float16 range (|x| <= 65504); "
                         "expected weights whose groups fit in float16")


@dataclasses.dataclass
class BlockResult:
    """Quantization of one block of chunks [B, R, K]."""

    loc: torch.Tensor  # float32 [B, K], values of f16 numbers
    scale: torch.Tensor  # float32 [B, K], values of f16 numbers
    q: torch.Tensor  # uint8 [B, R, K]
    w_hat: torch.Tensor  # float32 [B, R, K]


def quantize_block(block: torch.Tensor, depth_cols: torch.Tensor, quantizer: str = "laplace",
                   refine_groups: bool = True, symmetric: bool = False,
                   mu0: Optional[torch.Tensor] = None,
                   spread: Optional[torch.Tensor] = None) -> BlockResult:
    """Quantize every group of ``block`` (float32 [B, R, K]) at ``depth_cols`` ([B, K], 0..8).

    ``refine_groups``: False, True (the full search) or a name from REFINE_SEARCHES. ``mu0`` and
    ``spread`` (the group location and its RMS spread, [B, K]) may be passed when already
    computed (the pipeline computes them for the bit allocation).
    """
    block = block.to(torch.float32)
    depth_cols = depth_cols.to(torch.int64)
    if mu0 is None:
        mu0 = base_location(block, quantizer, symmetric)
    if spread is None:
        spread = rms_about(block, mu0)
    s0 = base_scale(block, spread, depth_cols, quantizer, symmetric)
    if refine_groups:
        # True means the full search; a string names one of REFINE_SEARCHES.
        search = "full" if refine_groups is True else refine_groups
        # Column slices bound the search's temporaries; groups never straddle a slice.
        per_col = block.shape[0] * block.shape[1]
        width = max(1, _SLICE_ELEMENTS // max(per_col, 1))
        locs, scales = [], []
        for k0 in range(0, block.shape[2], width):
            sl = slice(k0, k0 + width)
            l_, s_ = refine(block[:, :, sl], mu0[:, sl], s0[:, sl], spread[:, sl],
                            depth_cols[:, sl], quantizer, symmetric, search)
            locs.append(l_)
            scales.append(s_)
        loc, scale = torch.cat(locs, dim=1), torch.cat(scales, dim=1)
    else:
        loc, scale = to_half(mu0), to_half(s0)
    _check_half_range(loc, scale, mu0, s0)
    levels = torch.pow(2.0, depth_cols.to(torch.float32))
    q = encode(block, loc, scale, levels, quantizer)
    w_hat = decode(q, loc, scale, depth_cols, lut(quantizer, block.device))
    return BlockResult(loc=loc, scale=scale, q=q.to(torch.uint8), w_hat=w_hat)


# ----------------------------------------------------------------------------------------------
# Whole layers in the packed-format geometry
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LayerQuantization:
    """Quantized layers (a stack of ``L`` of one shape) as the format stores them, plus their
    dequantized weights.

    scale, loc: float16 [L, C, Kp] in chunk-position order (0 at padding positions).
    indices:    uint8 [L, N, Kp], permuted rows, chunk-position order (0 at padding) — the
                input of ``radio._core.pack``; None unless asked for.
    w_hat:      float32 [L, N, K] in the ORIGINAL row and column order.
    """

    scale: torch.Tensor
    loc: torch.Tensor
    indices: Optional[torch.Tensor]
    w_hat: torch.Tensor

    def layer(self, i: int) -> "LayerQuantization":
        return LayerQuantization(self.scale[i], self.loc[i],
                                 None if self.indices is None else self.indices[i],
                                 self.w_hat[i])


def quantize_layers(weights: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                    depth: torch.Tensor, rows_per_group: int, quantizer: str = "laplace",
                    refine_groups: bool = True, symmetric: bool = False,
                    mu0: Optional[torch.Tensor] = None, spread: Optional[torch.Tensor] = None,
                    need_indices: bool = True) -> LayerQuantization:
    """Quantize a stack of ``L`` layers of one shape (the pipeline's path).

    weights float [L, N, K]; row_perm int [L, N]; col_perm int [L, C, Kp] (sentinel K at
    padding); depth uint8 [L, C, U]; ``mu0``/``spread`` optional precomputed [L, C, K] group
    medians and spreads under ``row_perm`` (laplace only). All on one device; the work stays
    there, as a few large kernels for the whole stack.
    """
    stack, n, k = weights.shape
    device = weights.device
    row_perm = row_perm.to(device=device, dtype=torch.int64)
    col_perm = col_perm.to(device=device, dtype=torch.int64)
    depth_cols = grouping.depth_per_column(depth.to(device), col_perm, k)  # [L, C, K]
    w_perm = grouping.permute_rows(weights.to(torch.float32), row_perm)
    locs, scales, qs, w_hats = [], [], [], []
    for c0, chunks, rows, block in grouping.chunk_blocks(w_perm, rows_per_group):
        cs = slice(c0, c0 + chunks)

        def flat(x):  # [L, C, K] -> this block's [L * chunks, K]
            return None if x is None else x[:, cs].reshape(stack * chunks, k)

        res = quantize_block(block, flat(depth_cols), quantizer, refine_groups, symmetric,
                             flat(mu0), flat(spread))
        locs.append(res.loc)
        scales.append(res.scale)
        w_hats.append(res.w_hat.reshape(stack, chunks * rows, k))
        if need_indices:
            qs.append(res.q.reshape(stack, chunks * rows, k))
    loc, scale = grouping.merge_chunks(locs, stack), grouping.merge_chunks(scales, stack)
    w_hat_perm = torch.cat(w_hats, dim=1)
    w_hat = torch.empty_like(w_hat_perm)
    w_hat.scatter_(1, row_perm[:, :, None].expand(-1, -1, k), w_hat_perm)  # un-permute rows
    indices = None
    if need_indices:
        indices = grouping.columns_to_positions(torch.cat(qs, dim=1), col_perm, rows_per_group)
    return LayerQuantization(
        scale=grouping.columns_to_positions(scale, col_perm, 1).to(torch.float16),
        loc=grouping.columns_to_positions(loc, col_perm, 1).to(torch.float16),
        indices=indices, w_hat=w_hat)


def quantize_layer(weight: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                   depth: torch.Tensor, rows_per_group: int, quantizer: str = "laplace",
                   refine_groups: bool = True, symmetric: bool = False,
                   mu0: Optional[torch.Tensor] = None, spread: Optional[torch.Tensor] = None,
                   need_indices: bool = True) -> LayerQuantization:
    """Torch twin of ``radio._core.quantize_layer`` (docs/design.md) for one layer.

    weight float [N, K]; row_perm int [N]; col_perm int [C, Kp] (sentinel K at padding); depth
    uint8 [C, U]; ``mu0``/``spread`` optional [C, K]. Returns scale/loc [C, Kp], indices
    [N, Kp], w_hat [N, K].
    """
    def one(x):
        return None if x is None else x[None]

    return quantize_layers(weight[None], row_perm[None], col_perm[None], depth[None],
                           rows_per_group, quantizer, refine_groups, symmetric, one(mu0),
                           one(spread), need_indices).layer(0)


def dequantize_indices(indices: torch.Tensor, row_perm: torch.Tensor, col_perm: torch.Tensor,
                       depth: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
                       rows_per_group: int, quantizer: str, in_features: int) -> torch.Tensor:
    """Reconstruct W float32 [N, K] (original order) from unpacked ``indices`` uint8 [N, Kp]."""
    n = indices.shape[0]
    device = indices.device
    row_perm = row_perm.to(device=device, dtype=torch.int64)
    col_perm = col_perm.to(device=device, dtype=torch.int64)
    chunk_of_row = torch.arange(n, device=device) // rows_per_group  # permuted row -> chunk
    depth_pos = depth.to(device=device, dtype=torch.int64).repeat_interleave(UNIT, dim=1)
    table = lut(quantizer, device)
    index = indices.to(torch.int64) + (1 << depth_pos)[chunk_of_row]
    values = (loc.to(device, torch.float32)[chunk_of_row]
              + scale.to(device, torch.float32)[chunk_of_row] * table[index])  # [N, Kp]
    out = torch.empty((n, in_features + 1), dtype=torch.float32, device=device)
    # Position p of chunk c holds column col_perm[c, p]; padding positions land in column K.
    out.scatter_(1, col_perm[chunk_of_row], values)
    w = torch.empty((n, in_features), dtype=torch.float32, device=device)
    w[row_perm] = out[:, :in_features]
    return w
