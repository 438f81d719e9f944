"""torch_quant (the vectorised quantizers the pipeline runs on the GPU) against its reference twin
radio._core.quantize_layer (C++), on random heavy-tailed layers of awkward shapes."""
import numpy as np
import pytest
import torch

from radio import _core, grouping, torch_quant


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_layer(seed, n, k, gs, heavy=True):
    gen = torch.Generator().manual_seed(seed)
    if heavy:
        w = torch.distributions.StudentT(3.0).sample((n, k)) * 0.02
    else:
        w = torch.randn(n, k, generator=gen) * 0.02
    w = w + 0.003 * torch.randn(1, k, generator=gen)  # columns with their own offsets
    row_perm = torch.randperm(n, generator=gen)
    chunks, units = grouping.chunk_count(n, gs), -(-k // 32)
    col_perm = grouping.column_order(torch.randn(chunks, k, generator=gen))
    depth = torch.randint(0, 9, (chunks, units), generator=gen, dtype=torch.uint8)
    return w.float(), row_perm, col_perm, depth


def _bits(half):
    return half.view(torch.int16).numpy().view(np.uint16)


CASES = [("laplace", False), ("uniform", False), ("uniform", True)]


@pytest.mark.parametrize("quantizer,symmetric", CASES)
@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("shape", [(100, 70, 32), (300, 64, 256), (7, 33, 4)])
def test_matches_core_quantize_layer(quantizer, symmetric, refine, shape):
    n, k, gs = shape
    torch.manual_seed(n * k)
    w, row_perm, col_perm, depth = _random_layer(n + k, n, k, gs)
    ours = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs, quantizer, refine,
                                      symmetric)
    ref = _core.quantize_layer(w.numpy(), row_perm.int().numpy(), col_perm.int().numpy(),
                               depth.numpy(), gs, quantizer, refine, symmetric)
    np.testing.assert_array_equal(_bits(ours.scale), ref["scale"])
    np.testing.assert_array_equal(_bits(ours.loc), ref["loc"])
    qweight = _core.pack(ours.indices.numpy(), depth.numpy(), gs)
    np.testing.assert_array_equal(qweight, ref["qweight"])


@pytest.mark.parametrize("quantizer,symmetric", CASES)
def test_w_hat_is_what_the_format_decodes(quantizer, symmetric):
    n, k, gs = 90, 45, 32
    w, row_perm, col_perm, depth = _random_layer(3, n, k, gs, heavy=False)
    ours = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs, quantizer, True,
                                      symmetric)
    layer = dict(out_features=n, in_features=k, rows_per_group=gs, quantizer=quantizer,
                 row_perm=row_perm.int().numpy(), col_perm=col_perm.int().numpy(),
                 depth=depth.numpy(), scale=_bits(ours.scale), loc=_bits(ours.loc),
                 qweight=_core.pack(ours.indices.numpy(), depth.numpy(), gs))
    ref = torch.from_numpy(_core.dequantize(layer))
    torch.testing.assert_close(ours.w_hat, ref, rtol=0, atol=0)
    back = torch_quant.dequantize_indices(ours.indices, row_perm, col_perm, depth, ours.scale,
                                          ours.loc, gs, quantizer, k)
    torch.testing.assert_close(back, ref, rtol=0, atol=0)


def test_tables_match_core():
    for quantizer in ("laplace", "uniform"):
        for depth in range(9):
            np.testing.assert_array_equal(torch_quant.table(quantizer, depth).numpy(),
                                          _core.table(quantizer, depth))


@pytest.mark.parametrize("quantizer", ["laplace", "uniform"])
def test_refinement_never_increases_group_error(quantizer):
    n, k, gs = 128, 64, 32
    w, row_perm, col_perm, depth = _random_layer(5, n, k, gs)
    depth = depth.clamp(max=5)
    plain = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs, quantizer, False)
    refined = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs, quantizer, True)
    chunk_of_row = torch.empty(n, dtype=torch.int64)
    chunk_of_row[row_perm] = torch.arange(n) // gs
    hot = torch.nn.functional.one_hot(chunk_of_row).double().t()  # [C, N]
    err_plain = hot @ (plain.w_hat - w).double().square()
    err_refined = hot @ (refined.w_hat - w).double().square()
    assert bool((err_refined <= err_plain + 1e-12).all())
    assert float(err_refined.sum()) < 0.9 * float(err_plain.sum())  # and it does help


def test_depth_zero_reconstructs_the_group_median():
    n, k, gs = 64, 32, 16
    w, row_perm, col_perm, _ = _random_layer(9, n, k, gs)
    depth = torch.zeros(4, 1, dtype=torch.uint8)
    out = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs)
    median = w[row_perm].view(4, gs, k).median(dim=1).values.half().float()
    expect = median[torch.arange(n) // gs]  # permuted rows
    torch.testing.assert_close(out.w_hat[row_perm], expect, rtol=0, atol=0)
    assert int(out.indices.count_nonzero()) == 0


def test_stacked_layers_equal_one_at_a_time():
    """The pipeline quantizes stacks of same-shape layers; each must equal the single-layer
    result (which the tests above hold equal to the C++ twin)."""
    n, k, gs = 100, 40, 32
    layers = [_random_layer(20 + i, n, k, gs) for i in range(3)]
    stacked = torch_quant.quantize_layers(*(torch.stack([x[j] for x in layers]) for j in range(4)),
                                          gs, "laplace", True)
    for i, (w, row_perm, col_perm, depth) in enumerate(layers):
        one = torch_quant.quantize_layer(w, row_perm, col_perm, depth, gs, "laplace", True)
        assert torch.equal(stacked.scale[i], one.scale)
        assert torch.equal(stacked.loc[i], one.loc)
        assert torch.equal(stacked.indices[i], one.indices)
        assert torch.equal(stacked.w_hat[i], one.w_hat)


def test_regrouping_keeps_the_statistics_total():
    gen = torch.Generator().manual_seed(4)
    n, k, gs = 70, 8, 16
    sums = torch.rand(2, 5, k, generator=gen, dtype=torch.float64)
    old = torch.stack([torch.randperm(n, generator=gen) for _ in range(2)])
    new = torch.stack([torch.randperm(n, generator=gen) for _ in range(2)])
    row_g2 = torch.rand(2, n, generator=gen, dtype=torch.float64)
    moved = grouping.remap_group_sums(sums, old, new, row_g2, gs)
    torch.testing.assert_close(moved.sum(dim=1), sums.sum(dim=1))
    assert not torch.allclose(moved, sums)
    same = grouping.remap_group_sums(sums, old, old, row_g2, gs)
    torch.testing.assert_close(same, sums)


@pytest.mark.parametrize("quantizer", ["laplace", "uniform"])
def test_coarse_refine_search_is_close_to_the_full_search(quantizer):
    # The coarse search (the cpu preset's) tries a subset of the same grid, including the
    # unrefined code (m = beta = 0): per group it is never worse than no search, and in total
    # close to the full search. (Per group it can beat the full search: scale and shift are
    # searched one after the other, not jointly.)
    gen = torch.Generator().manual_seed(7)
    block = torch.distributions.StudentT(3.0).sample((6, 64, 96)) * 0.02
    block = block + 0.003 * torch.randn(1, 1, 96, generator=gen)
    depth = torch.randint(1, 9, (6, 96), generator=gen)
    mu0 = torch_quant.base_location(block, quantizer, False)
    spread = torch_quant.rms_about(block, mu0)
    s0 = torch_quant.base_scale(block, spread, depth, quantizer, False)
    levels = torch.pow(2.0, depth.float())
    table = torch_quant.lut(quantizer, block.device)

    def error(loc, scale):
        return torch_quant._squared_error(block, loc, scale, levels, depth, table, quantizer)

    full = error(*torch_quant.refine(block, mu0, s0, spread, depth, quantizer, False, "full"))
    coarse = error(*torch_quant.refine(block, mu0, s0, spread, depth, quantizer, False, "coarse"))
    plain = error(torch_quant.to_half(mu0), torch_quant.to_half(s0))
    assert torch.all(coarse <= plain + 1e-12)
    assert float(coarse.sum()) <= 1.01 * float(full.sum())
    assert float(coarse.sum()) < 0.95 * float(plain.sum())


def test_refine_search_name_is_checked():
    block = torch.randn(1, 8, 32)
    depth = torch.full((1, 32), 3)
    mu0 = torch_quant.base_location(block, "laplace", False)
    spread = torch_quant.rms_about(block, mu0)
    s0 = torch_quant.base_scale(block, spread, depth, "laplace", False)
    with pytest.raises(ValueError, match="search must be one of .*'exhaustive'"):
        torch_quant.refine(block, mu0, s0, spread, depth, "laplace", False, "exhaustive")
