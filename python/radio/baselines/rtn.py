"""Round-to-nearest quantization (per output channel, or groups along the input dimension)."""
from __future__ import annotations

import torch
from torch import nn

from .common import (BaselineReport, check_bits, decoder_linears, fake_quantize, rtn_bits_per_weight,
                     uniform_grid)


def rtn_quantize_weight(weight: torch.Tensor, bits: int, group_size: int = 128,
                        symmetric: bool = False) -> torch.Tensor:
    """Dequantized RTN approximation of ``weight`` [N, K] (float32 math, input dtype out)."""
    check_bits(bits, group_size)
    n, k = weight.shape
    w = weight.detach().float()
    group = k if group_size == 0 else group_size
    out = torch.empty_like(w)
    for start in range(0, k, group):
        block = w[:, start:start + group]
        scale, zero = uniform_grid(block, bits, symmetric)
        out[:, start:start + group] = fake_quantize(block, scale, zero, bits)
    return out.to(weight.dtype)


@torch.no_grad()
def quantize_rtn(model: nn.Module, bits: int = 4, group_size: int = 128,
                 symmetric: bool = False) -> BaselineReport:
    """Replace every decoder-block linear weight of ``model`` by its RTN approximation, in place.

    Returns the true size: ``bits`` per weight plus an f16 scale (and a ``bits``-bit zero point when
    asymmetric) per group of ``group_size`` inputs (0 = per output channel).
    """
    layers = decoder_linears(model)
    total_bits = 0.0
    weights = 0
    for _, linear in layers:
        linear.weight.copy_(rtn_quantize_weight(linear.weight, bits, group_size, symmetric))
        n, k = linear.weight.shape
        total_bits += rtn_bits_per_weight(bits, n, k, group_size, symmetric)
        weights += n * k
    return BaselineReport("RTN", bits, group_size, symmetric, False, weights, total_bits)
