"""radio.plots: figures are built from the data given and saved as PNG."""
from __future__ import annotations

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")

from radio import plots
from test_io import fake_quantize, tiny_llama


def test_rd_curve_plots_sorted_points_and_saves_png(tmp_path):
    fig = plots.rd_curve({"radio": [(4.2, 12.0), (2.6, 40.0), (3.1, 20.0)],
                          "rtn": [{"bits_per_weight": 4.25, "perplexity": 14.0}]},
                         reference=10.5, path=tmp_path / "rd.png")
    ax = fig.axes[0]
    radio_line = ax.get_lines()[0]
    assert list(radio_line.get_xdata()) == [2.6, 3.1, 4.2]
    assert list(radio_line.get_ydata()) == [40.0, 20.0, 12.0]
    assert ax.get_yscale() == "log"
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="perplexity"):
        plots.rd_curve([{"bits_per_weight": 3.0}])


def test_allocation_heatmap_rows_are_depth_shares(tmp_path):
    model = fake_quantize(tiny_llama())
    fig = plots.allocation_heatmap(model, path=tmp_path / "alloc.png")
    share = np.asarray(fig.axes[0].images[0].get_array())
    assert share.shape == (14, 9)
    np.testing.assert_allclose(share.sum(axis=1), 1.0)
    assert (tmp_path / "alloc.png").stat().st_size > 1000
    layer = model.model.layers[0].mlp.up_proj.to_packed()
    fig = plots.unit_depth_map(layer)
    assert np.array_equal(np.asarray(fig.axes[0].images[0].get_array()), layer.depth.numpy())
    with pytest.raises(ValueError, match="no RadioLinear"):
        plots.allocation_heatmap(tiny_llama())
