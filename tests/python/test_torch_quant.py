"""torch_quant (the vectorised quantizers the pipeline runs on the GPU) against its reference twin
radio._core.quantize_layer (C++), on random heavy-tailed layers of awkward shapes."""
import numpy as np
import pytest
import torch

from radio import _core, grouping, torch_quant


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Two shared cores: torch's thread pool only adds contention for these small tensors.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
