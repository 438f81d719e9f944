"""Per-layer API: the Radio steps on one weight tensor at a time.

A PyTorch user who has a weight ``W [N, K]`` (and, optionally, its squared gradients) can::

    stats = radio.layer_statistics(W, grad_sq, rows_per_group=128)
    alloc = radio.allocate([stats, ...], bits=3.5)           # one budget across many layers
    packed = radio.quantize_weight(W, alloc.depths[0], stats=stats)
    W_hat = radio.dequantize(packed)                          # float32 [N, K]
    qweight = radio.pack(indices, depth, rows_per_group)      # raw bit packing of docs/format.md

``radio.quantize`` runs the same functions on a whole model, with sensitivities estimated by
backpropagation. Shapes follow docs/format.md: ``C = ceil(N / gs)`` chunks, ``U = ceil(K / 32)``
units per chunk, ``Kp = 32 U``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np
import torch

from . import grouping, torch_quant
from ._ext import _core
from .format import MAX_DEPTH, UNIT, LayerGeometry, PackedLayer, QUANTIZERS

__all__ = ["LayerStatistics", "Allocation", "layer_statistics", "allocate", "quantize_weight",
           "dequantize", "pack", "unpack"]


def _check_weight(weight, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D [out_features, in_features] with both >= 1, got "
                         f"shape {tuple(weight.shape)}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.device.type == "meta":
        raise ValueError(f"{name} is on the meta device (a shape without values); expected a "
                         f"tensor holding data, e.g. on 'cpu' or 'cuda'")
    bad = int((~torch.isfinite(weight)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf) out of "
                         f"{weight.numel()}; expected finite weights")


def _check_rows_per_group(rows_per_group) -> None:
    if isinstance(rows_per_group, bool) or not isinstance(rows_per_group, (int, np.integer)) \
            or rows_per_group < 1:
        raise ValueError(f"rows_per_group must be a positive integer, got {rows_per_group!r}")


@dataclasses.dataclass
class LayerStatistics:
    """The allocation inputs of one layer under one row grouping (all on the weight's device).

    row_perm     int64 [N]      permuted row position p holds original row row_perm[p]
    col_perm     int64 [C, Kp]  column order of every chunk (sentinel K at padding)
    location     float32 [C, K] group median
    spread       float32 [C, K] RMS of the group about its median (S)
    sensitivity  float32 [C, K] mean squared gradient per weight of the group (G^2)
    unit_coef    float64 [C, U] modelled distortion of every unit at 0 bits,
                                sum over its groups of rows_c * G^2 S^2
    """

    out_features: int
    in_features: int
    rows_per_group: int
    row_perm: torch.Tensor
    col_perm: torch.Tensor
    location: torch.Tensor
    spread: torch.Tensor
    sensitivity: torch.Tensor
    unit_coef: torch.Tensor
    has_bias: bool = True

    @property
    def geometry(self) -> LayerGeometry:
        return LayerGeometry(self.out_features, self.in_features, self.rows_per_group)

    def side_bytes(self) -> int:
        return self.geometry.side_bytes(self.has_bias)

    def unit_weights(self) -> np.ndarray:
        """float64 [C * U]: index bits one bit of depth costs in every unit (rows_c * 32)."""
        geo = self.geometry
        rows = np.array([geo.rows_in_chunk(c) for c in range(geo.chunks)], dtype=np.float64)
        return np.repeat(rows * UNIT, geo.units)


def statistics_batch(weights: torch.Tensor, row_perm: torch.Tensor, group_g2: torch.Tensor,
                     rows_per_group: int, has_bias: bool = True) -> List[LayerStatistics]:
    """``LayerStatistics`` of a stack of layers of one shape (the pipeline's path):
    weights [L, N, K], ``row_perm`` [L, N] the grouping ``group_g2`` [L, C, K] (per-group mean
    squared gradients) was measured under. Returns one entry per layer (views of stacked
    tensors)."""
    stack, n, k = weights.shape
    row_perm = row_perm.to(weights.device, torch.int64)
    location, spread = grouping.group_spread(weights, row_perm, rows_per_group)
    g2 = group_g2.to(weights.device, torch.float32)
    col_perm = grouping.column_order(grouping.group_log2_score(g2, spread.square()))
    chunk_rows = grouping.rows_per_chunk(n, rows_per_group, weights.device)
    dist = g2.to(torch.float64) * spread.to(torch.float64).square()
    coef = grouping.unit_coefficients(dist, col_perm, chunk_rows)
    return [LayerStatistics(out_features=n, in_features=k, rows_per_group=rows_per_group,
                            row_perm=row_perm[i], col_perm=col_perm[i], location=location[i],
                            spread=spread[i], sensitivity=g2[i], unit_coef=coef[i],
                            has_bias=has_bias) for i in range(stack)]


def statistics_from_groups(weight: torch.Tensor, row_perm: torch.Tensor,
                           group_g2: torch.Tensor, rows_per_group: int,
                           has_bias: bool = True) -> LayerStatistics:
    """``statistics_batch`` for one layer: weight [N, K], row_perm [N], group_g2 [C, K]."""
    return statistics_batch(weight[None], row_perm[None], group_g2[None], rows_per_group,
                            has_bias)[0]


def layer_statistics(weight: torch.Tensor, sensitivity: Optional[torch.Tensor] = None, *,
                     rows_per_group: int = 256, row_perm: Optional[torch.Tensor] = None,
                     has_bias: bool = True) -> LayerStatistics:
    """Group the layer and compute what the bit allocation needs.

    Parameters
    ----------
    weight : float tensor [N, K]
        The layer's weight (PyTorch layout: out_features x in_features).
    sensitivity : float tensor [N, K], [C, K] or None
        Mean squared gradient of the model output with respect to each weight (e.g. the average
        of ``weight.grad ** 2`` over calibration passes), or per group ``[C, K]`` when measured
        under a known ``row_perm``. ``None`` treats every weight as equally sensitive (the
        allocation then minimises plain weight MSE).
    rows_per_group : int
        Rows per group ``gs``; clamped to ``N``.
    row_perm : int tensor [N], optional
        Use this row grouping instead of sorting rows by ``log2 Var + log2 G^2``.
    has_bias : bool
        Whether the stored layer will carry a bias (it counts in the side information).
    """
    _check_weight(weight)
    _check_rows_per_group(rows_per_group)
    n, k = weight.shape
    gs = min(int(rows_per_group), n)
    chunks = grouping.chunk_count(n, gs)
    if row_perm is not None:
        row_perm = torch.as_tensor(row_perm).to(weight.device, torch.int64)
        if row_perm.shape != (n,) or not torch.equal(torch.sort(row_perm).values,
                                                      torch.arange(n, device=weight.device)):
            raise ValueError(f"row_perm must be a permutation of 0..{n - 1} with shape [{n}], "
                             f"got shape {tuple(row_perm.shape)}")
    if sensitivity is None:
        row_g2 = torch.ones(n, device=weight.device)
        if row_perm is None:
            row_perm = grouping.row_order(grouping.row_log2_variance(weight), row_g2)
        group_g2 = torch.ones(chunks, k, device=weight.device)
    else:
        if not isinstance(sensitivity, torch.Tensor) or not sensitivity.dtype.is_floating_point:
            raise ValueError("sensitivity must be a floating-point tensor, got "
                             f"{type(sensitivity).__name__}")
        sens = sensitivity.to(weight.device, torch.float32)
        if not bool(torch.isfinite(sens).all()) or bool((sens < 0).any()):
            raise ValueError("sensitivity must be finite and >= 0 (mean squared gradients)")
        if sens.shape == (n, k):
            if row_perm is None:
                row_perm = grouping.row_order(grouping.row_log2_variance(weight), sens.mean(1))
            rows = grouping.rows_per_chunk(n, gs, weight.device).to(torch.float32)
            group_g2 = grouping.chunk_one_hot(row_perm[None], gs, chunks)[0] @ sens / rows[:, None]
        elif sens.shape == (chunks, k) and chunks != n:
            if row_perm is None:
                raise ValueError("per-group sensitivity [C, K] needs the row_perm it was "
                                 "measured under")
            group_g2 = sens
        else:
            raise ValueError(f"sensitivity must have shape [N, K] = [{n}, {k}] or [C, K] = "
                             f"[{chunks}, {k}] (gs={gs}), got {tuple(sens.shape)}")
    return statistics_from_groups(weight, row_perm, group_g2, gs, has_bias)


# ----------------------------------------------------------------------------------------------
# Allocation
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Allocation:
    """Result of ``allocate``: one uint8 depth tensor [C, U] per layer, in input order."""

    depths: List[torch.Tensor]
    bits_per_weight: float  # all-in, predicted from the depths
    index_bits_per_weight: float
    total_bytes: int
    relative_distortion: float  # sum coef 2^-2B / sum coef
    report: dict  # the solver's report (log2_V, iterations, ...)


def side_bits_per_weight(stats: Sequence[LayerStatistics]) -> float:
    side = sum(8 * s.side_bytes() for s in stats)
    return side / sum(s.out_features * s.in_features for s in stats)


def allocate(stats: Sequence[LayerStatistics], *, bits: Optional[float] = None,
             size: Optional[int] = None, max_distortion: Optional[float] = None,
             index_bits: Optional[float] = None, rounding: str = "rd",
             max_depth: int = MAX_DEPTH) -> Allocation:
    """Choose the depth of every unit of every layer at once (``radio._core.allocate``).

    Exactly one target:

    bits : float
        Average bits per weight over the given layers COUNTING ALL SIDE INFORMATION (the
        bytes ``PackedLayer.nbytes()`` counts). Must lie above the side information alone and
        at most 8.
    size : int
        Total stored bytes of the given layers.
    max_distortion : float in (0, 1]
        Modelled output distortion relative to 0 bits: ``sum_u coef_u 2^(-2 B_u) / sum_u coef_u``
        (1 = every group replaced by its location).
    index_bits : float
        Index bits per weight only (the paper's R; side information not counted).

    A rate target is never exceeded: the achieved rate lies below it by less than the cost of
    the next unit increment (one bit for ``rows_c * 32`` weights).
    """
    if not stats:
        raise ValueError("allocate needs at least one LayerStatistics, got none")
    wrong = [type(s).__name__ for s in stats if not isinstance(s, LayerStatistics)]
    if wrong:
        raise ValueError(f"allocate needs LayerStatistics (from radio.layer_statistics), got "
                         f"{wrong[0]}")
    targets = {"bits": bits, "size": size, "max_distortion": max_distortion,
               "index_bits": index_bits}
    given = [k for k, v in targets.items() if v is not None]
    if len(given) != 1:
        raise ValueError(f"allocate needs exactly one of bits=, size=, max_distortion=, "
                         f"index_bits=; got {given or 'none'}")
    if rounding not in ("rd", "nearest"):
        raise ValueError(f"rounding must be 'rd' or 'nearest', got {rounding!r}")
    total_weights = sum(s.out_features * s.in_features for s in stats)
    side_bits = float(sum(8 * s.side_bytes() for s in stats))
    side_bpw = side_bits / total_weights
    # One device-to-host transfer for all layers, not one (and one sync) per layer.
    device = stats[0].unit_coef.device
    coef = torch.cat([s.unit_coef.detach().to(device, torch.float64).reshape(-1)
                      for s in stats]).cpu().numpy()
    weight = np.concatenate([s.unit_weights() for s in stats])
    kwargs = dict(side_bits=side_bits, total_weights=float(total_weights), rounding=rounding,
                  max_depth=int(max_depth))
    if bits is not None:
        bits = _check_number("bits", bits)
        if not side_bpw < bits <= 8.0:
            raise ValueError(f"bits={bits} is outside the reachable range: the side information "
                             f"alone costs {side_bpw:.4f} bits per weight at these group sizes; "
                             f"expected bits in ({side_bpw:.4f}, 8]")
        kwargs["target_bits"] = bits
    elif size is not None:
        size = _check_number("size", size)
        side_bytes = side_bits / 8
        if not side_bytes < size <= total_weights:
            raise ValueError(f"size={size:.0f} bytes is outside the reachable range: the side "
                             f"information alone takes {side_bytes:.0f} bytes; expected size in "
                             f"({side_bytes:.0f}, {total_weights}] (8 bits per weight)")
        kwargs["target_bytes"] = size
    elif max_distortion is not None:
        max_distortion = _check_number("max_distortion", max_distortion)
        if not 0.0 < max_distortion <= 1.0:
            raise ValueError(f"max_distortion={max_distortion} must be in (0, 1]: the modelled "
                             "distortion relative to every group at 0 bits")
        kwargs["target_distortion"] = max_distortion * float(coef.sum())
    else:
        index_bits = _check_number("index_bits", index_bits)
        if not 0.0 <= index_bits <= 8.0:
            raise ValueError(f"index_bits={index_bits} must be in [0, 8]")
        kwargs["target_index_bits"] = index_bits
    depth, report = _core.allocate(coef, np.ascontiguousarray(weight), **kwargs)
    depth = np.asarray(depth, dtype=np.uint8)
    depths, offset = [], 0
    for s in stats:
        geo = s.geometry
        count = geo.chunks * geo.units
        depths.append(torch.from_numpy(depth[offset:offset + count].reshape(geo.chunks,
                                                                           geo.units).copy()))
        offset += count
    index_total = float((weight * depth).sum())
    coef_sum = float(coef.sum())
    distortion = float((coef * np.exp2(-2.0 * depth)).sum())
    return Allocation(depths=depths,
                      bits_per_weight=(index_total + side_bits) / total_weights,
                      index_bits_per_weight=index_total / total_weights,
                      total_bytes=int(round((index_total + side_bits) / 8)),
                      relative_distortion=distortion / coef_sum if coef_sum > 0 else 0.0,
                      report=dict(report))


def _check_number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
            not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------
# Quantize / dequantize / pack
# ----------------------------------------------------------------------------------------------

def _check_depth(depth: torch.Tensor, geo: LayerGeometry) -> torch.Tensor:
    depth = torch.as_tensor(depth)
    if depth.shape != (geo.chunks, geo.units):
        raise ValueError(f"depth must have shape [C, U] = [{geo.chunks}, {geo.units}] for a "
                         f"[{geo.out_features}, {geo.in_features}] layer with "
                         f"rows_per_group={geo.rows_per_group}, got {tuple(depth.shape)}")
    if depth.dtype.is_floating_point or int(depth.min()) < 0 or int(depth.max()) > MAX_DEPTH:
        raise ValueError(f"depth must hold integers in 0..{MAX_DEPTH}, got dtype {depth.dtype}, "
                         f"range [{depth.min().item()}, {depth.max().item()}]")
    return depth.to(torch.uint8)


def quantize_weight(weight: torch.Tensor, depth: Optional[torch.Tensor] = None, *,
                    stats: Optional[LayerStatistics] = None,
                    sensitivity: Optional[torch.Tensor] = None, bits: Optional[float] = None,
                    rows_per_group: int = 256, bias: Optional[torch.Tensor] = None,
                    x_mean: Optional[torch.Tensor] = None, quantizer: str = "laplace",
                    refine: bool = True, symmetric: bool = False) -> PackedLayer:
    """Quantize one weight tensor into the packed format.

    Parameters
    ----------
    weight : float tensor [N, K]
    depth : uint8 tensor [C, U], optional
        Unit depths (from ``allocate``). Without it, ``bits`` (all-in bits per weight for this
        layer alone) is allocated here from ``stats`` / ``sensitivity``.
    stats : LayerStatistics, optional
        The grouping to use (from ``layer_statistics``); computed when omitted.
    bias : float tensor [N], optional
        The layer's bias; stored (f16) in the packed layer.
    x_mean : float tensor [K], optional
        Mean of the layer's input. With it the bias is corrected:
        ``b <- b - (W_hat - W) x_mean`` (a zero bias is created when ``bias`` is None).
    quantizer : "laplace" | "uniform";  refine : per-group scale/shift search;
    symmetric : uniform only, location fixed at 0.

    Returns
    -------
    PackedLayer with tensors on ``weight``'s device.
    """
    _check_weight(weight)
    if quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
    n, k = weight.shape
    has_bias = bias is not None or x_mean is not None
    if stats is None:
        stats = layer_statistics(weight, sensitivity, rows_per_group=rows_per_group,
                                 has_bias=has_bias)
    elif (stats.out_features, stats.in_features) != (n, k):
        raise ValueError(f"stats describe a [{stats.out_features}, {stats.in_features}] layer, "
                         f"weight is [{n}, {k}]")
    stats = dataclasses.replace(stats, has_bias=has_bias)
    geo = stats.geometry
    if depth is None:
        if bits is None:
            raise ValueError("quantize_weight needs depth= (from allocate) or bits=")
        depth = allocate([stats], bits=bits).depths[0]
    depth = _check_depth(depth, geo)
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != n):
        raise ValueError(f"bias must have shape [{n}], got {tuple(bias.shape)}")
    if x_mean is not None and (x_mean.dim() != 1 or x_mean.shape[0] != k):
        raise ValueError(f"x_mean must have shape [{k}], got {tuple(x_mean.shape)}")
    for arg, value in (("bias", bias), ("x_mean", x_mean)):
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{arg} has non-finite values (NaN or inf); expected finite values")
    q = torch_quant.quantize_layer(
        weight, stats.row_perm, stats.col_perm, depth.to(weight.device), geo.rows_per_group,
        quantizer, refine, symmetric,
        mu0=stats.location if quantizer == "laplace" else None,
        spread=stats.spread if quantizer == "laplace" else None)
    new_bias = None
    if has_bias:
        new_bias = torch.zeros(n, dtype=torch.float32, device=weight.device) if bias is None \
            else bias.detach().to(weight.device, torch.float32)
        if x_mean is not None:
            err = q.w_hat - weight.detach().to(torch.float32)
            new_bias = new_bias - err @ x_mean.to(weight.device, torch.float32)
    return packed_layer(geo, quantizer, stats.row_perm, stats.col_perm, depth, q, new_bias)


def packed_layer(geo: LayerGeometry, quantizer: str, row_perm: torch.Tensor,
                 col_perm: torch.Tensor, depth: torch.Tensor,
                 q: "torch_quant.LayerQuantization", bias: Optional[torch.Tensor],
                 qweight: Optional[torch.Tensor] = None) -> PackedLayer:
    """Assemble a ``PackedLayer`` on ``q``'s device (bit packing on the CPU by
    ``radio._core.pack`` unless the packed ``qweight`` is given)."""
    device = q.scale.device
    if qweight is None:
        qweight = pack(q.indices, depth, geo.rows_per_group)
    return PackedLayer(
        out_features=geo.out_features, in_features=geo.in_features,
        rows_per_group=geo.rows_per_group, quantizer=quantizer,
        row_perm=row_perm.to(device, torch.int32), col_perm=col_perm.to(device, torch.int32),
        depth=depth.to(device, torch.uint8), scale=q.scale, loc=q.loc,
        qweight=qweight.to(device),
        bias=None if bias is None else bias.to(device, torch.float16))


def dequantize(packed: PackedLayer) -> torch.Tensor:
    """float32 [N, K]: the weight a packed layer reconstructs (docs/format.md), on its device."""
    if not isinstance(packed, PackedLayer):
        raise ValueError(f"dequantize expects a radio.format.PackedLayer, got "
                         f"{type(packed).__name__}")
    indices = unpack(packed.qweight, packed.depth, packed.out_features, packed.rows_per_group)
    return torch_quant.dequantize_indices(
        indices.to(packed.qweight.device), packed.row_perm, packed.col_perm, packed.depth,
        packed.scale, packed.loc, packed.rows_per_group, packed.quantizer, packed.in_features)


def pack(indices: torch.Tensor, depth: torch.Tensor, rows_per_group: int) -> torch.Tensor:
    """Bit-pack ``indices`` uint8 [N, Kp] (permuted rows, chunk-position order) at the unit
    depths ``depth`` uint8 [C, U] -> int32 [W] qweight (CPU; docs/format.md "qweight layout")."""
    _check_rows_per_group(rows_per_group)
    idx = torch.as_tensor(indices).detach().to("cpu")
    dep = torch.as_tensor(depth).detach().to("cpu")
    if idx.dtype != torch.uint8 or idx.dim() != 2:
        raise ValueError(f"indices must be uint8 [N, Kp], got dtype {idx.dtype}, shape "
                         f"{tuple(idx.shape)}")
    if dep.dtype != torch.uint8 or dep.dim() != 2:
        raise ValueError(f"depth must be uint8 [C, U], got dtype {dep.dtype}, shape "
                         f"{tuple(dep.shape)}")
    out = _core.pack(idx.contiguous().numpy(), dep.contiguous().numpy(), int(rows_per_group))
    return torch.from_numpy(np.asarray(out, dtype=np.int32))


def unpack(qweight: torch.Tensor, depth: torch.Tensor, out_features: int,
           rows_per_group: int) -> torch.Tensor:
    """Inverse of ``pack``: int32 [W] -> uint8 [N, Kp] (CPU)."""
    _check_rows_per_group(rows_per_group)
    qw = torch.as_tensor(qweight).detach().to("cpu")
    dep = torch.as_tensor(depth).detach().to("cpu")
    if qw.dtype != torch.int32 or qw.dim() != 1:
        raise ValueError(f"qweight must be int32 [W], got dtype {qw.dtype}, shape "
                         f"{tuple(qw.shape)}")
    if dep.dtype != torch.uint8 or dep.dim() != 2:
        raise ValueError(f"depth must be uint8 [C, U], got dtype {dep.dtype}, shape "
                         f"{tuple(dep.shape)}")
    out = _core.unpack(qw.contiguous().numpy(), dep.contiguous().numpy(), int(out_features),
                       int(rows_per_group))
    return torch.from_numpy(np.asarray(out, dtype=np.uint8))
