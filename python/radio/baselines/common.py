"""Shared pieces of the baselines: layer selection, the uniform grid and size accounting."""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Tuple

import torch
from torch import nn


@dataclasses.dataclass
class BaselineReport:
    """What a baseline stored: bits per weight all side information included."""

    method: str
    bits: int
    group_size: int  # 0 = one group per output channel
    symmetric: bool
    act_order: bool
    weights: int
    total_bits: float

    @property
    def bits_per_weight(self) -> float:
        return self.total_bits / max(self.weights, 1)

    def __str__(self) -> str:
        g = "channel" if self.group_size == 0 else f"g{self.group_size}"
        sym = "sym" if self.symmetric else "asym"
        order = " act-order" if self.act_order else ""
        return f"{self.method} {self.bits}-bit {g} {sym}{order}: {self.bits_per_weight:.4f} bpw"


def rtn_bits_per_weight(bits: int, out_features: int, in_features: int, group_size: int,
                        symmetric: bool, act_order: bool = False) -> float:
    """Total stored bits of one layer: b-bit codes, an f16 scale per group and, when asymmetric,
    a b-bit zero point per group (the GPTQ/AutoGPTQ packing), plus an int32 column index per input
    column under activation order (g_idx)."""
    group = in_features if group_size == 0 else group_size
    groups_per_row = -(-in_features // group)
    per_group = 16 + (0 if symmetric else bits)
    total = bits * out_features * in_features + per_group * groups_per_row * out_features
    if act_order:
        total += 32 * in_features
    return float(total)


def decoder_linears(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    """The nn.Linear modules inside the model's decoder blocks (the largest ModuleList)."""
    blocks_name, blocks = decoder_blocks(model)
    out = []
    for i, block in enumerate(blocks):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                out.append((f"{blocks_name}.{i}.{name}", module))
    return out


def decoder_blocks(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The decoder blocks: the longest nn.ModuleList in the model."""
    best: Tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of decoder blocks")
    return best


def uniform_grid(w: torch.Tensor, bits: int, symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero point of a b-bit uniform grid covering each row of ``w`` [R, G].

    Asymmetric: codes 0..2^b-1 map to scale*(q - zero) spanning [min(w, 0), max(w, 0)], the zero
    point rounded to an integer (it is stored in b bits). Symmetric: scale = 2 max|w| / (2^b - 1)
    and the implicit zero point 2^(b-1) (nothing stored but the scale).
    """
    qmax = 2 ** bits - 1
    if symmetric:
        amax = w.abs().amax(dim=1).clamp_min(1e-12)
        scale = 2 * amax / qmax
        zero = torch.full_like(scale, (qmax + 1) / 2)
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
    # Scales are stored in f16: quantize with the value the decoder will see.
    scale = scale.to(torch.float16).to(w.dtype)
    return scale, zero


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` [R, G] to the grid and return the dequantized values."""
    q = torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, 2 ** bits - 1)
    return scale[:, None] * (q - zero[:, None])


def check_bits(bits: int, group_size: int) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [2, 8], got {bits!r}")
    if not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"group_size must be 0 (per channel) or a positive integer, got {group_size!r}")


def total_weights(layers: Iterable[Tuple[str, nn.Linear]]) -> int:
    return sum(m.weight.numel() for _, m in layers)


def as_report_dict(reports: Dict[str, float]) -> Dict[str, float]:
    return dict(reports)
