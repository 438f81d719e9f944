"""bench/bench_gemm.py's layer depths (CPU): the two depth orders hold the same depths per chunk
at the requested size, "sorted" deepest first as radio.quantize writes layers; a bad order is
refused by name. The timings themselves need a GPU (bench/run_gpu_kernels.sh)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench_gemm = pytest.importorskip("bench_gemm")

from radio.format import LayerGeometry  # noqa: E402


@pytest.mark.parametrize("n,k,bpw", [(1024, 4096, 4.0), (1000, 1100, 3.0), (4096, 11008, 2.5)])
def test_depth_orders_hold_the_same_depths(n, k, bpw):
    random = bench_gemm.choose_depths(n, k, 256, bpw, torch.Generator().manual_seed(3))
    ordered = bench_gemm.choose_depths(n, k, 256, bpw, torch.Generator().manual_seed(3),
                                       "sorted")
    geo = LayerGeometry(n, k, 256)
    assert random.shape == ordered.shape == (geo.chunks, geo.units)
    assert random.dtype == ordered.dtype == torch.uint8
    # per chunk the same multiset of depths, sorted deepest first, spread (not all equal)
    assert torch.equal(random.sort(dim=1, descending=True).values, ordered)
    assert (ordered[:, :-1] >= ordered[:, 1:]).all()
    assert not torch.equal(random, ordered)
    assert int(ordered.max()) > int(ordered.min())
    # the all-in size (side information + words) is the requested one, to one depth step of a
    # unit (32 x 256 bits)
    size_bits = 8 * (geo.side_bytes(False) + 4 * geo.qweight_words(ordered.numpy()))
    assert abs(size_bits / (n * k) - bpw) <= 32 * 256 / (n * k)


def test_unknown_depth_order_is_refused():
    with pytest.raises(ValueError, match=r"depth order 'reversed' is not one of \('random', "
                                         r"'sorted'\)"):
        bench_gemm.choose_depths(1024, 1024, 256, 4.0, torch.Generator().manual_seed(0),
                                 "reversed")
