"""The per-layer API (radio.layer): statistics -> allocate across layers -> quantize_weight ->
dequantize / pack / unpack, with the bad-input errors."""
import numpy as np
import pytest
import torch

from radio import _core, layer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weight(seed, n, k):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=gen) + 0.5  # rows of different spread
    return torch.randn(n, k, generator=gen) * 0.02 * scale


def _sensitivity(seed, n, k):
    gen = torch.Generator().manual_seed(seed + 100)
    return torch.rand(n, 1, generator=gen) * torch.rand(1, k, generator=gen) + 1e-3


def test_round_trip_two_layers_meets_the_budget():
    # Big enough that one unit increment (16 rows x 32 columns) is < 0.01 bits per weight.
    shapes = [(256, 200), (190, 300)]
    weights = [_weight(i, *s) for i, s in enumerate(shapes)]
    stats = [layer.layer_statistics(w, _sensitivity(i, *w.shape), rows_per_group=16)
             for i, w in enumerate(weights)]
    alloc = layer.allocate(stats, bits=6.0)  # ~2.5 index bits + ~3.5 side
    assert 6.0 - 0.01 <= alloc.bits_per_weight <= 6.0
    packed = [layer.quantize_weight(w, d, stats=s, bias=torch.zeros(w.shape[0]))
              for w, d, s in zip(weights, alloc.depths, stats)]
    total = sum(p.nbytes() for p in packed)
    assert total == alloc.total_bytes  # the allocation's size is exactly what is stored
    weights_total = sum(w.numel() for w in weights)
    assert abs(8.0 * total / weights_total - 6.0) <= 0.01
    for w, p in zip(weights, packed):
        w_hat = layer.dequantize(p)
        assert w_hat.shape == w.shape
        _core.validate_layer(p.to_numpy_dict())
        np.testing.assert_array_equal(_core.dequantize(p.to_numpy_dict()), w_hat.numpy())
        rel = float((w_hat - w).norm() / w.norm())
        assert 0.0 < rel < 0.45  # sensitivity-weighted, so plain MSE is not minimal
    # More sensitive layer columns get more bits: depth follows G^2 S^2.
    s0 = stats[0]
    order = s0.unit_coef.flatten().argsort()
    depth0 = alloc.depths[0].flatten()[order]
    assert depth0[-5:].float().mean() > depth0[:5].float().mean()


def test_distortion_falls_with_bits_and_target_distortion_is_met():
    w = _weight(7, 128, 96)
    stats = [layer.layer_statistics(w, _sensitivity(7, 128, 96), rows_per_group=32)]
    by_rate = [layer.allocate(stats, bits=b) for b in (2.5, 3.5, 4.5)]
    dists = [a.relative_distortion for a in by_rate]
    assert dists[0] > dists[1] > dists[2] > 0
    alloc = layer.allocate(stats, max_distortion=dists[1])
    assert alloc.relative_distortion <= dists[1] * (1 + 1e-9)
    # The least rate within that distortion is the rate-target allocation itself.
    assert alloc.bits_per_weight == by_rate[1].bits_per_weight


def test_quantize_weight_with_bits_and_bias_correction():
    w = _weight(11, 70, 45)
    x_mean = torch.randn(45)
    bias = torch.randn(70) * 0.1
    packed = layer.quantize_weight(w, bits=5.0, rows_per_group=32, bias=bias, x_mean=x_mean)
    assert packed.bits_per_weight() <= 5.0
    w_hat = layer.dequantize(packed)
    # The corrected layer has the original mean output: W_hat x_mean + b_new = W x_mean + b.
    got = w_hat @ x_mean + packed.bias.float()
    want = w @ x_mean + bias
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    # Without correction the mean output moves by more than the f16 rounding of the bias.
    assert float((w_hat @ x_mean + bias - want).abs().max()) > 2e-3


def test_per_group_sensitivity_needs_row_perm_and_matches_per_weight():
    w = _weight(13, 64, 64)
    sens = _sensitivity(13, 64, 64)
    full = layer.layer_statistics(w, sens, rows_per_group=16)
    group = full.sensitivity
    again = layer.layer_statistics(w, group, rows_per_group=16, row_perm=full.row_perm)
    torch.testing.assert_close(again.unit_coef, full.unit_coef)
    with pytest.raises(ValueError, match="row_perm"):
        layer.layer_statistics(w, group, rows_per_group=16)


def test_pack_unpack_round_trip():
    gen = torch.Generator().manual_seed(3)
    n, kp, gs = 50, 96, 16
    depth = torch.randint(0, 9, (4, 3), generator=gen, dtype=torch.uint8)
    depth_pos = depth.repeat_interleave(32, dim=1)[torch.arange(n) // gs]  # [N, Kp]
    limit = (2 ** depth_pos.long()).float()
    indices = (torch.rand(n, kp, generator=gen) * limit).long().to(torch.uint8)
    qweight = layer.pack(indices, depth, gs)
    assert qweight.dtype == torch.int32
    assert torch.equal(layer.unpack(qweight, depth, n, gs), indices)


@pytest.mark.parametrize("bad,match", [
    (torch.full((4, 4), float("nan")), "non-finite"),
    (torch.zeros(3), "2-D"),
    (torch.zeros(4, 4, dtype=torch.int32), "floating-point"),
])
def test_bad_weights(bad, match):
    with pytest.raises(ValueError, match=match):
        layer.layer_statistics(bad)


def test_bad_targets_and_depths():
    w = _weight(1, 64, 64)
    stats = [layer.layer_statistics(w, rows_per_group=16)]
    with pytest.raises(ValueError, match=r"expected bits in \("):
        layer.allocate(stats, bits=0.5)  # below the side information (~3.5 bits at gs=16)
    with pytest.raises(ValueError, match="expected bits in"):
        layer.allocate(stats, bits=8.5)
    with pytest.raises(ValueError, match="exactly one"):
        layer.allocate(stats, bits=4.0, size=1000)
    with pytest.raises(ValueError, match="max_distortion"):
        layer.allocate(stats, max_distortion=1.5)
    with pytest.raises(ValueError, match="depth must have shape"):
        layer.quantize_weight(w, torch.zeros(3, 2, dtype=torch.uint8), stats=stats[0])
    with pytest.raises(ValueError, match="0..8"):
        layer.quantize_weight(w, torch.full((4, 2), 9, dtype=torch.uint8), stats=stats[0])
    with pytest.raises(ValueError, match="rows_per_group"):
        layer.layer_statistics(w, rows_per_group=0)
