"""QuantReport: what ``radio.quantize`` achieved, attached to the model as ``model.radio_report``.

Bits per weight are counted from the stored tensors (``PackedLayer.nbytes()``, docs/format.md
"Size"): "all-in" includes every byte of side information (scales, locations, permutations,
depths, biases); "index" counts ``qweight`` alone. The predicted distortion is the modelled
output distortion ``sum_u coef_u 2^(-2 B_u)`` relative to its value at 0 bits
(``sum_u coef_u``, every group replaced by its location); see ``radio.layer.allocate``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional

import numpy as np

from .format import MAX_DEPTH, UNIT, PackedLayer


def depth_histogram(packed: PackedLayer) -> List[int]:
    """Weights stored at each depth 0..8 (padding columns excluded)."""
    depth = packed.depth.detach().cpu().numpy().astype(np.int64)  # [C, U]
    geo = packed.geometry
    rows = np.array([geo.rows_in_chunk(c) for c in range(geo.chunks)], dtype=np.int64)
    cols = np.full(geo.units, UNIT, dtype=np.int64)
    cols[-1] = geo.in_features - UNIT * (geo.units - 1)  # padding sits at the end of every chunk
    weights = rows[:, None] * cols[None, :]
    return [int(weights[depth == b].sum()) for b in range(MAX_DEPTH + 1)]


@dataclasses.dataclass
class LayerReport:
    name: str
    out_features: int
    in_features: int
    rows_per_group: int
    nbytes: int
    bits_per_weight: float
    index_bits_per_weight: float
    depth_histogram: List[int]  # weights per depth 0..8

    @classmethod
    def from_packed(cls, name: str, packed: PackedLayer) -> "LayerReport":
        return cls(name=name, out_features=packed.out_features, in_features=packed.in_features,
                   rows_per_group=packed.rows_per_group, nbytes=packed.nbytes(),
                   bits_per_weight=packed.bits_per_weight(),
                   index_bits_per_weight=packed.index_bits_per_weight(),
                   depth_histogram=depth_histogram(packed))


@dataclasses.dataclass
class QuantReport:
    target: str  # e.g. "bits=4.0 (all-in)"
    bits_per_weight: float  # all-in, over the quantized layers
    index_bits_per_weight: float
    total_bytes: int  # stored bytes of the quantized layers
    total_weights: int
    predicted_distortion: float  # relative to 0 bits (see module docstring)
    depth_histogram: List[int]  # weights per depth 0..8, all layers
    layers: List[LayerReport]
    settings: Dict[str, object]  # the QuantConfig used, as a dict
    preset: str
    estimator: str
    calibration: str  # what the calibration data was
    device: str
    seconds: Dict[str, float]  # wall time per phase and "total"
    solver: Dict[str, object] = dataclasses.field(default_factory=dict)  # last allocation report
    history: List[Dict[str, float]] = dataclasses.field(default_factory=list)  # per round

    @classmethod
    def build(cls, packed: Dict[str, PackedLayer], *, target: str, predicted_distortion: float,
              settings: Dict[str, object], preset: str, estimator: str, calibration: str,
              device: str, seconds: Dict[str, float], solver: Optional[dict] = None,
              history: Optional[List[dict]] = None) -> "QuantReport":
        layers = [LayerReport.from_packed(name, p) for name, p in packed.items()]
        total_bytes = sum(layer.nbytes for layer in layers)
        total_weights = sum(p.out_features * p.in_features for p in packed.values())
        index_bits = sum(32 * int(p.qweight.numel()) for p in packed.values())
        hist = [sum(layer.depth_histogram[b] for layer in layers) for b in range(MAX_DEPTH + 1)]
        return cls(target=target, bits_per_weight=8.0 * total_bytes / max(total_weights, 1),
                   index_bits_per_weight=index_bits / max(total_weights, 1),
                   total_bytes=total_bytes, total_weights=total_weights,
                   predicted_distortion=float(predicted_distortion), depth_histogram=hist,
                   layers=layers, settings=dict(settings), preset=preset, estimator=estimator,
                   calibration=calibration, device=device, seconds=dict(seconds),
                   solver=_plain(solver or {}), history=list(history or []))

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __str__(self) -> str:
        hist_total = max(sum(self.depth_histogram), 1)
        hist = "  ".join(f"{b}:{100.0 * n / hist_total:.1f}%"
                         for b, n in enumerate(self.depth_histogram) if n)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items() if k != "total")
        lines = [
            f"radio: quantized {len(self.layers)} layers ({self.total_weights:,} weights), "
            f"target {self.target}",
            f"  bits per weight: {self.bits_per_weight:.4f} all-in, "
            f"{self.index_bits_per_weight:.4f} index only; {self.total_bytes:,} bytes",
            f"  predicted distortion (relative to 0 bits): {self.predicted_distortion:.4g}",
            f"  depth histogram (share of weights): {hist}",
            f"  preset '{self.preset}', estimator '{self.estimator}', "
            f"{self.settings.get('rounds')} rounds x {self.settings.get('sequences_per_round')} "
            f"sequences, group size {self.settings.get('rows_per_group')}, "
            f"quantizer {self.settings.get('quantizer')}",
            f"  calibration: {self.calibration}; device {self.device}",
            f"  time: {self.seconds.get('total', 0.0):.1f}s ({phases})",
        ]
        return "\n".join(lines)


def _plain(value):
    """JSON-safe copy (numpy scalars/arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
