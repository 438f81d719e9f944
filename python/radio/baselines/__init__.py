"""Baseline quantizers written from their papers, for honest comparisons with radio.

Both quantize the same layers as ``radio.quantize`` (every ``nn.Linear`` inside the decoder blocks)
and count their true bits per weight the same way radio does: every stored scale, zero point and
permutation included.

- :func:`quantize_rtn`: round-to-nearest, per output channel or in groups along the input.
- :func:`quantize_gptq`: GPTQ (Frantar et al., 2023): column-by-column quantization with
  second-order error feedback, optional activation order, processed block by block.
"""
from .common import BaselineReport, rtn_bits_per_weight
from .gptq import quantize_gptq
from .rtn import quantize_rtn

__all__ = ["quantize_rtn", "quantize_gptq", "BaselineReport", "rtn_bits_per_weight"]
