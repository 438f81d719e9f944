"""``RadioLinear``: a drop-in replacement for ``torch.nn.Linear`` whose weight is stored packed.

The module holds exactly the tensors of one layer of the packed format v1 (docs/format.md) as
buffers, so ``state_dict()`` is the file's content, and its forward is the op
``radio.ops.qlinear`` (CUDA kernels where built, the plain-torch reference elsewhere; the op has a
fake implementation, so the module traces under ``torch.compile``).

The format fixes the dtypes (f16 scale/loc/bias, integer indices), so ``model.to(torch.bfloat16)``
or ``model.half()`` must not touch them: ``_apply`` keeps every format buffer's dtype and only
follows device moves. The activation dtype is the input's dtype, or ``dtype`` when given.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import ops
from .format import QUANTIZERS, PackedLayer

__all__ = ["RadioLinear"]

# Buffers that store the format (persistent: they are what save/load and state_dict carry).
FORMAT_BUFFERS = ("row_perm", "col_perm", "depth", "scale", "loc", "qweight", "bias")


class RadioLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W [out_features, in_features]`` in the packed format v1."""

    def __init__(self, out_features: int, in_features: int, rows_per_group: int,
                 quantizer: str, row_perm: torch.Tensor, col_perm: torch.Tensor,
                 depth: torch.Tensor, scale: torch.Tensor, loc: torch.Tensor,
                 qweight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be float16, bfloat16, float32 or None, got {dtype}")
        self.out_features = int(out_features)
        self.in_features = int(in_features)
        self.rows_per_group = int(rows_per_group)
        self.quantizer = quantizer
        self.dtype = dtype
        # prepare() checks every dtype and shape against the geometry (cheap, no data syncs).
        prepared = ops.prepare(qweight=qweight, scale=scale, loc=loc, depth=depth,
                               row_perm=row_perm, col_perm=col_perm, bias=bias,
                               out_features=self.out_features, in_features=self.in_features,
                               rows_per_group=self.rows_per_group, quantizer=quantizer)
        for name in FORMAT_BUFFERS:
            self.register_buffer(name, prepared[name])
        # Derived from depth only; rebuilt on load instead of stored (docs/format.md says so).
        self.register_buffer("unit_offset", prepared["unit_offset"], persistent=False)
        # The one-token kernels' zeroed workspace, kept so that no memset runs per call (zero
        # between calls; not saved).
        self.register_buffer("workspace", prepared["workspace"], persistent=False)
        # Where the stream kernel cuts its blocks' ranges (derived from depth; not saved).
        self.register_buffer("work_quantiles", prepared["work_quantiles"], persistent=False)

    # -- conversion ------------------------------------------------------------------------------

    @classmethod
    def from_packed(cls, packed: PackedLayer, dtype: Optional[torch.dtype] = None,
                    validate: bool = True) -> "RadioLinear":
        """Wraps a ``PackedLayer`` (tensors are shared, not copied).

        ``validate`` runs every check of docs/format.md (permutations, depth range, qweight
        length) through ``radio._core.validate_layer`` when the core provides it.
        """
        if not isinstance(packed, PackedLayer):
            raise TypeError(f"from_packed expects a radio.format.PackedLayer, got "
                            f"{type(packed).__name__}")
        if validate:
            validate_packed(packed)
        return cls(packed.out_features, packed.in_features, packed.rows_per_group,
                   packed.quantizer, packed.row_perm, packed.col_perm, packed.depth,
                   packed.scale, packed.loc, packed.qweight, packed.bias, dtype=dtype)

    def to_packed(self) -> PackedLayer:
        """The layer as a ``PackedLayer`` (shares this module's tensors, on their device)."""
        return PackedLayer(self.out_features, self.in_features, self.rows_per_group,
                           self.quantizer, self.row_perm, self.col_perm, self.depth, self.scale,
                           self.loc, self.qweight, self.bias)

    def dequantize(self) -> torch.Tensor:
        """float32 ``[out_features, in_features]`` weight in original order (for inspection)."""
        return ops.dequantize(self.qweight, self.scale, self.loc, self.depth, self.row_perm,
                              self.col_perm, self.out_features, self.in_features,
                              self.rows_per_group, self.quantizer)

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is not None and x.dtype != self.dtype:
            x = x.to(self.dtype)
        return ops.qlinear(x, qweight=self.qweight, scale=self.scale, loc=self.loc,
                           depth=self.depth, row_perm=self.row_perm, col_perm=self.col_perm,
                           bias=self.bias, out_features=self.out_features,
                           in_features=self.in_features, rows_per_group=self.rows_per_group,
                           quantizer=self.quantizer, unit_offset=self.unit_offset,
                           workspace=self.workspace, work_quantiles=self.work_quantiles)

    # -- size ------------------------------------------------------------------------------------

    def nbytes(self) -> int:
        """Stored bytes of the layer's tensors (docs/format.md "Size")."""
        return self.to_packed().nbytes()

    def bits_per_weight(self) -> float:
        """All-in bits per weight: every stored byte of the layer over N*K."""
        return self.to_packed().bits_per_weight()

    def index_bits_per_weight(self) -> float:
        return self.to_packed().index_bits_per_weight()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rows_per_group={self.rows_per_group}, "
                f"quantizer={self.quantizer}, bits_per_weight={self.bits_per_weight():.3f} "
                f"(index {self.index_bits_per_weight():.3f})")

    # -- keep the format dtypes under model.to(dtype) / .half() ----------------------------------

    def _apply(self, fn, recurse: bool = True):
        before = {name: getattr(self, name) for name in FORMAT_BUFFERS
                  if getattr(self, name) is not None}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                # fn changed the dtype (e.g. .half() on scale is a no-op, .bfloat16() is lossy):
                # take only the device from fn's result and copy the original values there.
                setattr(self, name, old.to(new.device))
        return self


def validate_packed(packed: PackedLayer) -> None:
    """Every check of docs/format.md via ``radio._core.validate_layer``, when the core has it.

    Without it (core not built yet) the cheap shape/dtype checks of ``RadioLinear`` still run.
    """
    from ._ext import _core

    check = getattr(_core, "validate_layer", None)
    if check is not None:
        check(packed.to_numpy_dict())
