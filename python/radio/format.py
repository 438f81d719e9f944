"""Python mirror of the packed format v1 (docs/format.md; C++: include/radio/format.hpp).

``PackedLayer`` holds one quantized linear layer as torch tensors, exactly the tensors a radio
file stores. ``to_numpy_dict()`` gives the dict that ``radio._core`` functions take.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

FORMAT_VERSION = 1
UNIT = 32  # columns per unit; one bit depth per unit
MAX_DEPTH = 8
QUANTIZERS = ("laplace", "uniform")  # index = the integer code used by kernels and the op


def index_bytes(n: int) -> int:
    """Bytes of one permutation entry along an axis of length n (u16 while the sentinel n fits)."""
    return 2 if n <= 65535 else 4


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    out_features: int
    in_features: int
    rows_per_group: int

    def __post_init__(self) -> None:
        for name in ("out_features", "in_features", "rows_per_group"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def chunks(self) -> int:
        return math.ceil(self.out_features / self.rows_per_group)

    @property
    def units(self) -> int:
        return math.ceil(self.in_features / UNIT)

    @property
    def padded_in(self) -> int:
        return self.units * UNIT

    def rows_in_chunk(self, c: int) -> int:
        return min(self.rows_per_group, self.out_features - c * self.rows_per_group)

    def side_bytes(self, has_bias: bool) -> int:
        """Bytes of everything but qweight (docs/format.md, "Size")."""
        per_position = 2 + 2 + index_bytes(self.in_features)
        return (self.chunks * self.padded_in * per_position + self.chunks * self.units
                + self.out_features * index_bytes(self.out_features)
                + (2 * self.out_features if has_bias else 0))

    def qweight_words(self, depth: np.ndarray) -> int:
        rows = np.array([self.rows_in_chunk(c) for c in range(self.chunks)], dtype=np.int64)
        return int((rows * np.asarray(depth, dtype=np.int64).sum(axis=1)).sum())


@dataclasses.dataclass
class PackedLayer:
    """One quantized linear layer in the packed format (all tensors on one device)."""

    out_features: int
    in_features: int
    rows_per_group: int
    quantizer: str  # "laplace" or "uniform"
    row_perm: "torch.Tensor"  # int32 [N]
    col_perm: "torch.Tensor"  # int32 [C, Kp]
    depth: "torch.Tensor"  # uint8 [C, U]
    scale: "torch.Tensor"  # float16 [C, Kp]
    loc: "torch.Tensor"  # float16 [C, Kp]
    qweight: "torch.Tensor"  # int32 [W]
    bias: Optional["torch.Tensor"] = None  # float16 [N], original row order

    @property
    def geometry(self) -> LayerGeometry:
        return LayerGeometry(self.out_features, self.in_features, self.rows_per_group)

    @property
    def quantizer_code(self) -> int:
        return QUANTIZERS.index(self.quantizer)

    def nbytes(self) -> int:
        """Stored bytes of the layer's tensors, exactly as in the file."""
        return self.geometry.side_bytes(self.bias is not None) + 4 * int(self.qweight.numel())

    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes() / (self.out_features * self.in_features)

    def index_bits_per_weight(self) -> float:
        return 32.0 * int(self.qweight.numel()) / (self.out_features * self.in_features)

    def tensors(self) -> dict:
        """The format tensors by name (bias only when present)."""
        out = {name: getattr(self, name) for name in
               ("row_perm", "col_perm", "depth", "scale", "loc", "qweight")}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    def attributes(self) -> dict:
        return {"out_features": self.out_features, "in_features": self.in_features,
                "rows_per_group": self.rows_per_group, "quantizer": self.quantizer,
                "has_bias": self.bias is not None}

    def to_numpy_dict(self) -> dict:
        """The dict radio._core takes: f16 tensors as uint16 bit patterns, all on the CPU."""
        import torch

        out = dict(self.attributes())
        for name, tensor in self.tensors().items():
            tensor = tensor.detach().to("cpu").contiguous()
            if tensor.dtype == torch.float16:
                out[name] = tensor.view(torch.int16).numpy().view(np.uint16)
            else:
                out[name] = tensor.numpy()
        return out

    @classmethod
    def from_numpy_dict(cls, d: dict) -> "PackedLayer":
        import torch

        def half(a):
            return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.float16)

        bias = d.get("bias")
        return cls(
            out_features=int(d["out_features"]), in_features=int(d["in_features"]),
            rows_per_group=int(d["rows_per_group"]), quantizer=str(d["quantizer"]),
            row_perm=torch.from_numpy(np.asarray(d["row_perm"], dtype=np.int32).copy()),
            col_perm=torch.from_numpy(np.asarray(d["col_perm"], dtype=np.int32).copy()),
            depth=torch.from_numpy(np.asarray(d["depth"], dtype=np.uint8).copy()),
            scale=half(d["scale"]), loc=half(d["loc"]),
            qweight=torch.from_numpy(np.asarray(d["qweight"], dtype=np.int32).copy()),
            bias=None if bias is None else half(bias),
        )
