"""Figures: the rate-distortion curve and where the bits went.

Both functions return a ``matplotlib.figure.Figure`` built without pyplot (no global figure
state; a notebook shows the returned figure inline) and write a PNG when given ``path``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .format import MAX_DEPTH, PackedLayer

__all__ = ["rd_curve", "allocation_heatmap", "unit_depth_map"]

Point = Union[Tuple[float, float], Mapping[str, float]]


def _figure(size):
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _finish(fig, path):
    if path is not None:
        fig.savefig(Path(path), dpi=150)
    return fig


def _xy(points: Iterable[Point], x_key: str, y_key: str) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in points:
        if isinstance(p, Mapping):
            if x_key not in p or y_key not in p:
                raise ValueError(f"a point needs keys {x_key!r} and {y_key!r}, got {sorted(p)}")
            xs.append(float(p[x_key]))
            ys.append(float(p[y_key]))
        else:
            x, y = p
            xs.append(float(x))
            ys.append(float(y))
    order = np.argsort(xs)
    return np.asarray(xs)[order], np.asarray(ys)[order]


def rd_curve(series: Union[Sequence[Point], Dict[str, Sequence[Point]]], *,
             x: str = "bits_per_weight", y: str = "perplexity",
             reference: Optional[float] = None, reference_label: str = "unquantized",
             logy: bool = True, title: Optional[str] = None, path=None):
    """Rate-distortion curve: bits per weight (all-in) against perplexity or distortion.

    ``series`` is a list of points or ``{label: points}`` (several methods on one plot); a point
    is ``(bpw, value)`` or a dict with keys ``x`` and ``y`` (e.g. report entries).
    ``reference`` draws a horizontal line (the unquantized model's value).
    """
    if not isinstance(series, Mapping):
        series = {"radio": series}
    if not series:
        raise ValueError("rd_curve needs at least one series of points")
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot()
    for label, points in series.items():
        xs, ys = _xy(points, x, y)
        if xs.size == 0:
            raise ValueError(f"series {label!r} has no points")
        ax.plot(xs, ys, marker="o", label=label)
    if reference is not None:
        ax.axhline(reference, color="0.4", linestyle="--", linewidth=1, label=reference_label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight (all-in)" if x == "bits_per_weight" else x)
    ax.set_ylabel(y.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def _packed_layers(source) -> Dict[str, PackedLayer]:
    """PackedLayers from a model (RadioLinear modules), a dict, or a radio directory/file."""
    if isinstance(source, (str, Path)):
        from .io import read_packed_layers

        return read_packed_layers(source)[0]
    if isinstance(source, Mapping):
        if not all(isinstance(v, PackedLayer) for v in source.values()):
            raise ValueError("a dict source must map layer names to PackedLayer")
        return dict(source)
    if hasattr(source, "named_modules"):
        from .nn import RadioLinear

        layers = {n: m.to_packed() for n, m in source.named_modules()
                  if isinstance(m, RadioLinear)}
        if not layers:
            raise ValueError(f"{type(source).__name__} has no RadioLinear layers")
        return layers
    raise TypeError(f"expected a model, a dict of PackedLayer or a radio path, got "
                    f"{type(source).__name__}")


def allocation_heatmap(source, *, path=None, title: Optional[str] = None, short_names=True):
    """Layers x depth: the share of each layer's weights stored at depth 0..8.

    ``source``: a quantized model, ``{name: PackedLayer}``, or a radio directory/file. The
    right-hand labels give each layer's all-in bits per weight.
    """
    from .report import depth_histogram

    layers = _packed_layers(source)
    names = list(layers)
    hist = np.array([depth_histogram(layers[n]) for n in names], dtype=np.float64)
    share = hist / hist.sum(axis=1, keepdims=True)
    fig = _figure((6.5, max(2.5, 0.18 * len(names) + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    ax.set_xticks(range(MAX_DEPTH + 1))
    ax.set_xlabel("bit depth")
    labels = [n.replace("model.layers.", "").replace("model.decoder.layers.", "")
              if short_names else n for n in names]
    ax.set_yticks(range(len(names)), labels, fontsize=6 if len(names) > 40 else 8)
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(len(names)),
                     [f"{layers[n].bits_per_weight():.2f}" for n in names],
                     fontsize=6 if len(names) > 40 else 8)
    right.set_ylabel("bits per weight")
    fig.colorbar(image, ax=ax, label="share of the layer's weights", location="bottom",
                 shrink=0.6)
    ax.set_title(title or "radio bit allocation")
    return _finish(fig, path)


def unit_depth_map(packed: PackedLayer, *, path=None, title: Optional[str] = None):
    """One layer: the depth of every unit (rows: row chunks, columns: 32-column units in the
    chunk's sensitivity order)."""
    if not isinstance(packed, PackedLayer):
        raise TypeError(f"expected a PackedLayer, got {type(packed).__name__}")
    depth = packed.depth.detach().cpu().numpy()
    fig = _figure((7.0, max(2.0, 0.3 * depth.shape[0] + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(depth, aspect="auto", cmap="magma", vmin=0, vmax=MAX_DEPTH,
                      interpolation="nearest")
    ax.set_xlabel("unit (32 columns, in the chunk's column order)")
    ax.set_ylabel(f"row chunk ({packed.rows_per_group} rows)")
    fig.colorbar(image, ax=ax, label="bit depth")
    ax.set_title(title or f"[{packed.out_features} x {packed.in_features}] "
                          f"{packed.bits_per_weight():.2f} bpw")
    return _finish(fig, path)
