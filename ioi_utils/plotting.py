"""Matplotlib figures for the book: head heat maps with circuit classes, checkpoint curves, bar charts.

Importing this module applies `style()`: fonts of 10-13 pt and constrained layout for every figure. Sizes
are chosen for the book's text column (about 8 inches at 100 dpi), so text stays readable when the page
scales a figure to its width.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch, Rectangle

Head = tuple[int, int]  # (layer, query head)
CLASS_COLORS: dict[str, str] = {
    "NM": "#2ca02c", "NNM": "#d62728", "BNM": "#17becf", "SIN": "#9467bd",
    "IND": "#ff7f0e", "DT": "#8c564b", "PT": "#e377c2", "SS": "#bcbd22", "OTH": "#7f7f7f",
}
DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"
BOOK_WIDTH = 8.0  # inches: the book's text column at 100 dpi
MAX_WIDTH = 10.0  # inches: wider figures are scaled down too much by the page
STYLE: dict[str, object] = {
    "figure.dpi": 100,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "figure.titlesize": 13,
    "figure.constrained_layout.use": True,  # labels, tick labels, colour bars and legends never overlap
}
CLASS_LABEL_PT = 8  # the NM/SIN/... labels drawn inside heat-map cells


def style() -> None:
    """Apply the book's matplotlib defaults (font sizes, constrained layout); called on import."""
    plt.rcParams.update(STYLE)


style()


def _array(values) -> np.ndarray:
    """A float numpy array from a tensor, array or nested sequence."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=float)


def _new_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The axes to draw on and their figure (a new figure if ax is None)."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax


def _heatmap_size(n_layers: int, n_heads: int) -> tuple[float, float]:
    """A figure size that grows with the heads (up to the book width) and layers: 0.3 inch per layer row."""
    return (min(2.4 + 0.45 * n_heads, BOOK_WIDTH), min(max(2.8, 1.4 + 0.3 * n_layers), 12.0))


def _wrap(title: str, inches: float) -> str:
    """Break a title into lines that fit a width in inches at the title font size."""
    points = FontProperties(size=plt.rcParams["axes.titlesize"]).get_size_in_points()
    chars = max(8, int(inches * 72 / (0.55 * points)))
    return "\n".join(textwrap.wrap(title, chars)) or title


def _head_ticks(ax: Axes, n_layers: int, n_heads: int, inches_per_head: float) -> None:
    """A tick per layer and per head; every other head label when columns are narrower than 0.25 inch."""
    step = 1 if inches_per_head >= 0.25 else 2
    ax.set_xticks(range(0, n_heads, step))
    ax.set_yticks(range(n_layers))


def _limits(values: np.ndarray, symmetric: bool) -> dict:
    """imshow colour arguments: a diverging map centred at 0, or a sequential map over the range."""
    finite = values[np.isfinite(values)]
    if not symmetric:
        return {"cmap": SEQUENTIAL}
    m = float(np.abs(finite).max()) if finite.size else 1.0
    m = m if m > 0 else 1.0
    return {"cmap": DIVERGING, "vmin": -m, "vmax": m}


def _draw_classes(ax: Axes, classes: Mapping[str, Sequence[Head]], shape: tuple[int, int]) -> list[Patch]:
    """Outline and label each class's heads; return legend handles for the classes present."""
    labels: dict[Head, list[str]] = {}
    for cls, heads in classes.items():
        for layer, head in heads:
            if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
                raise ValueError(f"head {layer}.{head} of class {cls} is outside a {shape[0]}x{shape[1]} map")
            labels.setdefault((int(layer), int(head)), []).append(cls)
    for (layer, head), cls in labels.items():
        color = CLASS_COLORS.get(cls[0], "black")
        ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=color, linewidth=2.2))
        ax.text(head, layer, "/".join(cls), ha="center", va="center", fontsize=CLASS_LABEL_PT, fontweight="bold",
                color="black", bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6})
    present = [c for c in classes if classes[c]]
    return [Patch(facecolor="none", edgecolor=CLASS_COLORS.get(c, "black"), linewidth=2, label=c) for c in present]


def _legend(fig: Figure, ax: Axes | None, handles: list[Patch]) -> None:
    """A class legend: outside the right edge of a figure we own, else inside the given axes."""
    if not handles:
        return
    kw = {"handles": handles, "title": "class"}
    if ax is None:
        fig.legend(loc="outside right upper", frameon=False, **kw)
    else:
        ax.legend(loc="best", framealpha=0.8, **kw)


def head_heatmap(values, title: str, classes: Mapping[str, Sequence[Head]] | None = None, ax: Axes | None = None,
                 cbar_label: str = "", symmetric: bool = True, vmax: float | None = None) -> Figure:
    """A [n_layers, n_heads] map (layer on y, head on x), classes outlined and labelled (NM, NNM, ...)."""
    arr = _array(values)
    if arr.ndim != 2:
        raise ValueError(f"head_heatmap needs a [n_layers, n_heads] array, got shape {arr.shape}")
    given = ax
    fig, ax = _new_ax(ax, _heatmap_size(*arr.shape))
    kw = _limits(arr, symmetric)
    if vmax is not None:
        kw.update(vmin=-vmax if symmetric else kw.get("vmin"), vmax=vmax)
    im = ax.imshow(arr, aspect="auto", origin="upper", interpolation="nearest", **kw)
    width = ax.get_position().width * fig.get_figwidth()
    _head_ticks(ax, arr.shape[0], arr.shape[1], width / arr.shape[1])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.08, pad=0.03)
    if classes:
        _legend(fig, given, _draw_classes(ax, classes, arr.shape))
    return fig


def _x_positions(x: Sequence) -> tuple[np.ndarray, list[str] | None]:
    """Numeric x values, or 0..n-1 with tick labels when x holds strings."""
    if any(isinstance(v, str) for v in x):
        return np.arange(len(x)), [str(v) for v in x]
    return np.asarray(x, dtype=float), None


def checkpoint_lines(x: Sequence[float | int | str], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
                     ylabel: str, ax: Axes | None = None,
                     bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> Figure:
    """One line per series across checkpoints/epochs, with optional (lower, upper) bands per series."""
    xs, ticks = _x_positions(x)
    fig, ax = _new_ax(ax, (7.5, 4.2))
    for name, ys in series.items():
        ys = _array(ys)
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x positions")
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        if bands and name in bands:
            lo, hi = (_array(b) for b in bands[name])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    unknown = set(bands or {}) - set(series)
    if unknown:
        raise ValueError(f"bands for unknown series {sorted(unknown)}")
    if ticks is not None:
        ax.set_xticks(xs, ticks, rotation=30 if max(map(len, ticks), default=0) > 4 else 0)
    ax.axhline(0, color="grey", linewidth=0.6, zorder=0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def bar_compare(labels: Sequence[str], values: Mapping[str, Sequence[float]], title: str, ylabel: str,
                ax: Axes | None = None) -> Figure:
    """Grouped bars: one group per label, one bar per series in values."""
    width = 0.6 * len(labels) * max(1, len(values)) ** 0.5 + 2
    fig, ax = _new_ax(ax, (min(max(5.0, width), MAX_WIDTH), 4.2))
    n, width = len(values), 0.8 / max(1, len(values))
    xs = np.arange(len(labels))
    for i, (name, vals) in enumerate(values.items()):
        vals = _array(vals)
        if len(vals) != len(labels):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(labels)} labels")
        ax.bar(xs + (i - (n - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(xs, [str(l) for l in labels], rotation=30 if max(map(len, map(str, labels)), default=0) > 6 else 0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set(title=title, ylabel=ylabel)
    if n > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return fig


def cmap_heatmaps(effects: Mapping[str, object], classes: Mapping[str, Sequence[Head]] | None = None,
                  title: str = "", cbar_label: str = "") -> Figure:
    """Side-by-side [n_layers, n_heads] heat maps sharing one diverging colour scale centred at 0."""
    if not effects:
        raise ValueError("cmap_heatmaps needs at least one map")
    arrays = {k: _array(v) for k, v in effects.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all maps must share one [n_layers, n_heads] shape, got {sorted(shapes)}")
    n_l, n_h = next(iter(shapes))
    m = max(float(np.nanmax(np.abs(a))) for a in arrays.values()) or 1.0
    panel = min(0.8 + 0.38 * n_h, (MAX_WIDTH - 1.6) / len(arrays))  # inches per map
    _, h = _heatmap_size(n_l, n_h)
    fig, axes = plt.subplots(1, len(arrays), figsize=(panel * len(arrays) + 1.6, h + 0.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, (name, arr) in zip(axes[0], arrays.items()):
        im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap=DIVERGING, vmin=-m, vmax=m)
        _head_ticks(ax, n_l, n_h, (panel - 0.6) / n_h)
        ax.set(title=_wrap(name, panel), xlabel="head")
        handles = _draw_classes(ax, classes, arr.shape) if classes else []
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes[0]), label=cbar_label, fraction=0.05, pad=0.02)
    _legend(fig, None, handles)
    if title:
        fig.suptitle(title)
    return fig


def head_rows_heatmaps(heads: Sequence[str], columns: Sequence[str], panels: Mapping[str, object], title: str = "",
                       symmetric: Mapping[str, bool] | None = None, annotate: bool = True) -> Figure:
    """Side-by-side [n_heads, n_columns] heat maps (one row per named head, one column per checkpoint or
    model), each panel with its own colour bar: diverging around 0 (symmetric, e.g. DLA) or sequential
    (attention). Values are written in the cells when annotate and the grid is small enough to read."""
    if not panels:
        raise ValueError("head_rows_heatmaps needs at least one panel")
    arrays = {k: _array(v) for k, v in panels.items()}
    for name, arr in arrays.items():
        if arr.shape != (len(heads), len(columns)):
            raise ValueError(f"panel {name!r} has shape {arr.shape}, expected {(len(heads), len(columns))}")
    symmetric = symmetric or {}
    panel_w = min(max(1.8, 0.55 * len(columns) + 1.2), (MAX_WIDTH - 1.0) / len(arrays))
    height = min(max(2.6, 0.28 * len(heads) + 1.4), 12.0)
    fig, axes = plt.subplots(1, len(arrays), figsize=(panel_w * len(arrays) + 1.0, height), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax, (name, arr) in zip(axes[0], arrays.items()):
        sym = symmetric.get(name, True)
        kw = _limits(arr, sym)
        if not sym:
            finite = arr[np.isfinite(arr)]
            kw.update(vmin=0.0, vmax=max(float(finite.max()) if finite.size else 1.0, 1e-6))
        im = ax.imshow(arr, aspect="auto", interpolation="nearest", **kw)
        ax.set_xticks(range(len(columns)), [str(c) for c in columns], rotation=45 if max(map(len, map(str, columns))) > 3 else 0,
                      ha="right" if max(map(len, map(str, columns))) > 3 else "center")
        ax.set_yticks(range(len(heads)), list(heads))
        ax.set_title(_wrap(name, panel_w))
        if annotate and len(heads) * len(columns) <= 200 and panel_w / max(1, len(columns)) >= 0.35:
            for i in range(len(heads)):
                for j in range(len(columns)):
                    if np.isfinite(arr[i, j]):
                        ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=7, color="black")
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.02)
    axes[0][0].set_ylabel("head")
    if title:
        fig.suptitle(title)
    return fig


HEAD_READOUTS: dict[str, str] = {"DLA (logits)": "dla", "attention END→IO": "attn_io", "attention END→S": "attn_s"}


def checkpoint_heads(rows: Sequence[Mapping], heads: Sequence[Head], labels: Sequence[str], columns: Sequence[str],
                     title: str = "") -> Figure:
    """DLA and END→IO / END→S attention of some heads (one row each, named by labels) across checkpoint rows
    (dicts with [n_layers, n_heads] maps under "dla", "attn_io", "attn_s"; one column each)."""
    panels = {name: np.array([[float(r[key][h]) for r in rows] for h in heads]) for name, key in HEAD_READOUTS.items()}
    return head_rows_heatmaps(labels, columns, panels, title,
                              symmetric={name: name.startswith("DLA") for name in HEAD_READOUTS})

def masked(values, heads: Sequence[Head]) -> np.ndarray:
    """A [n_layers, n_heads] map with every head outside `heads` set to nan (drawn blank): a map measured only
    on some heads."""
    arr = _array(values).copy()
    keep = np.zeros(arr.shape, dtype=bool)
    for l, h in heads:
        keep[l, h] = True
    arr[~keep] = np.nan
    return arr
