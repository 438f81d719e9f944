"""RadioLinear (python/radio/nn.py) against an independent float64 oracle.

The oracle is test_ops.random_layer: random indices are drawn, packed straight from
docs/format.md, and the float64 weight is built from the drawn indices, so a wrong buffer wiring
in RadioLinear (swapped perms, lost bias, wrong quantizer) shows up as a large error.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from radio.format import PackedLayer, QUANTIZERS
from radio.nn import RadioLinear
from test_ops import random_layer, reference_y, rel_err


def packed_from(layer: dict) -> PackedLayer:
    return PackedLayer(layer["out_features"], layer["in_features"], layer["rows_per_group"],
                       QUANTIZERS[layer["quantizer"]], layer["row_perm"], layer["col_perm"],
                       layer["depth"], layer["scale"], layer["loc"], layer["qweight"],
                       layer["bias"])


@pytest.mark.parametrize("n,k,gs,quantizer,bias", [
    (256, 256, 128, 0, True), (200, 100, 64, 1, False), (37, 33, 256, 0, True)])
def test_forward_matches_dequantize_matmul(n, k, gs, quantizer, bias):
    layer, w64 = random_layer(n, k, gs, quantizer, seed=n + k, bias=bias)
    mod = RadioLinear.from_packed(packed_from(layer))
    x = torch.randn(3, 5, k, generator=torch.Generator().manual_seed(1))
    y = mod(x)
    assert y.shape == (3, 5, n) and y.dtype == torch.float32
    assert rel_err(y, reference_y(x, w64, layer["bias"])) < 1e-5
    np.testing.assert_allclose(mod.dequantize().double().numpy(), w64, rtol=1e-5, atol=1e-6)


def test_dtype_argument_casts_activations():
    layer, w64 = random_layer(64, 96, 32, 0, seed=3)
    mod = RadioLinear.from_packed(packed_from(layer), dtype=torch.bfloat16)
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(2))
    y = mod(x)
    assert y.dtype == torch.bfloat16
    assert rel_err(y.float(), reference_y(x, w64, layer["bias"])) < 2e-2


def test_to_packed_round_trip_and_size():
    layer, _ = random_layer(130, 70, 64, 1, seed=5)
    packed = packed_from(layer)
    mod = RadioLinear.from_packed(packed)
    back = mod.to_packed()
    for name, tensor in packed.tensors().items():
        assert torch.equal(back.tensors()[name], tensor), name
    assert back.attributes() == packed.attributes()
    assert mod.nbytes() == packed.nbytes()
    assert f"bits_per_weight={packed.bits_per_weight():.3f}" in repr(mod)
    # state_dict holds the format tensors only (unit_offset is derived, not stored)
    assert set(mod.state_dict()) == {"row_perm", "col_perm", "depth", "scale", "loc",
                                     "qweight", "bias"}


def test_model_dtype_cast_keeps_format_dtypes():
    layer, w64 = random_layer(64, 64, 32, 0, seed=7)
    mod = RadioLinear.from_packed(packed_from(layer))
    scale_before = mod.scale.clone()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), mod).to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert mod.scale.dtype == torch.float16 and torch.equal(mod.scale, scale_before)
    assert mod.bias.dtype == torch.float16 and mod.qweight.dtype == torch.int32
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    assert rel_err(mod(x), reference_y(x, w64, layer["bias"])) < 1e-5


def test_bad_input_is_refused():
    layer, _ = random_layer(64, 64, 32, 0, seed=9)
    with pytest.raises(TypeError, match="PackedLayer"):
        RadioLinear.from_packed(layer)
    bad = packed_from(layer)
    bad.scale = bad.scale.float()
    with pytest.raises(ValueError, match="scale"):
        RadioLinear.from_packed(bad, validate=False)
    bad = packed_from(layer)
    bad.quantizer = "lloyd"
    with pytest.raises(ValueError, match="lloyd"):
        RadioLinear.from_packed(bad, validate=False)
    mod = RadioLinear.from_packed(packed_from(layer))
    with pytest.raises(ValueError, match="64"):
        mod(torch.randn(2, 63))


def test_torch_compile():
    layer, w64 = random_layer(96, 64, 32, 0, seed=11)
    mod = RadioLinear.from_packed(packed_from(layer))
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(mod, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), mod(x))


@pytest.mark.cuda
def test_cuda_matches_oracle():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    layer, w64 = random_layer(256, 192, 128, 0, seed=13)
    mod = RadioLinear.from_packed(packed_from(layer)).cuda()
    assert mod.unit_offset.is_cuda and mod.qweight.is_cuda
    x = torch.randn(7, 192, generator=torch.Generator().manual_seed(5)).half()
    y = mod(x.cuda())
    assert y.is_cuda and y.dtype == torch.float16
    assert rel_err(y.float().cpu(), reference_y(x.float(), w64, layer["bias"])) < 2e-3
