"""Matplotlib figures for the book: head heat maps with circuit classes, checkpoint curves, bar charts.

Importing this module applies `style()`: fonts of 10-13 pt and constrained layout for every figure. Sizes
are chosen for the book's text column (about 8 inches at 100 dpi), so text stays readable when the page
scales a figure to its width.

Every figure shows its data: nothing is written over a heat map's cells (a circuit head is an outlined cell,
its class named in a legend below the figure), legends sit outside the data, a value beyond a line plot's
limits is marked at the edge with its value, a bar too small to see is labelled, and every axis has a label.
`figure_check.figure_problems` checks these rules on a drawn figure; the tests apply it to every figure function here.
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
from matplotlib.legend import Legend
from matplotlib.lines import Line2D

from ioi_utils.report import class_outlines

Head = tuple[int, int]  # (layer, query head)
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
CELL_VALUE_GID = "cell-value"  # gid of a value written in its own cell: the only text allowed over an image
OFFSCALE_GID = "offscale"  # gid of the edge marker of a line's value beyond the axes' limits
NOTE_PT = 8  # off-scale markers and the labels of bars too small to see


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


# ---------------------------------------------------------------- figures


def head_heatmap(values, title: str, classes: Mapping[str, Sequence[Head]] | None = None, ax: Axes | None = None,
                 cbar_label: str = "", symmetric: bool = True, vmax: float | None = None) -> Figure:
    """A [n_layers, n_heads] map (layer on y, head on x); circuit heads outlined in their class colour, the
    classes named in one legend below the figure (shared by every head map drawn on that figure)."""
    arr = _array(values)
    if arr.ndim != 2:
        raise ValueError(f"head_heatmap needs a [n_layers, n_heads] array, got shape {arr.shape}")
    fig, ax = _new_ax(ax, _heatmap_size(*arr.shape))
    kw = _limits(arr, symmetric)
    if vmax is not None:
        kw.update(vmin=-vmax if symmetric else kw.get("vmin"), vmax=vmax)
    im = ax.imshow(arr, aspect="auto", origin="upper", interpolation="nearest", **kw)
    width = ax.get_position().width * fig.get_figwidth()
    _head_ticks(ax, arr.shape[0], arr.shape[1], width / arr.shape[1])
    ax.set(xlabel="head", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.08, pad=0.03)
    if classes:
        class_outlines.legend(fig, class_outlines.outline(ax, classes, arr.shape))
    return fig


def _x_positions(x: Sequence) -> tuple[np.ndarray, list[str] | None]:
    """Numeric x values, or 0..n-1 with tick labels when x holds strings."""
    if any(isinstance(v, str) for v in x):
        return np.arange(len(x)), [str(v) for v in x]
    return np.asarray(x, dtype=float), None


def legend_below(ax: Axes) -> Legend:
    """The axes' legend under its x label, outside the data, in as many columns as fit the axes' width
    (estimated from the labels' lengths at the legend font size)."""
    handles, labels = ax.get_legend_handles_labels()
    points = FontProperties(size=plt.rcParams["legend.fontsize"]).get_size_in_points()
    entry = max((len(label) * 0.5 + 3.0) * points / 72 for label in labels)  # text + handle, inches
    width = ax.get_position().width * ax.figure.get_figwidth()
    ncol = max(1, min(len(labels), int(width // entry)))
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def _offscale_points(ax: Axes) -> list[tuple[Line2D, float, float, bool]]:
    """(line, x, y, above) for every finite point of a data line beyond the axes' current y limits."""
    lo, hi = sorted(ax.get_ylim())
    points = []
    for line in ax.get_lines():
        if line.get_transform() != ax.transData or not line.get_visible():
            continue
        for x, y in zip(np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)):
            if np.isfinite(y) and not lo <= y <= hi:
                points.append((line, float(x), float(y), y > hi))
    return points


def mark_offscale(ax: Axes) -> None:
    """Write every line value beyond the y limits at the edge it leaves by, in the line's colour
    ("▲ 4.1" at the top, "▼ -3" at the bottom), replacing earlier marks. checkpoint_lines calls this
    whenever the limits change, so a chapter's later `set_ylim` is marked too."""
    for text in [t for t in ax.texts if t.get_gid() == OFFSCALE_GID]:
        text.remove()
    edge = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for line, x, y, above in _offscale_points(ax):
        ax.text(x, 0.98 if above else 0.02, f"{'▲' if above else '▼'} {y:.3g}", transform=edge, ha="center",
                va="top" if above else "bottom", fontsize=NOTE_PT, color=line.get_color(), gid=OFFSCALE_GID,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": line.get_color(), "lw": 0.6})


def checkpoint_lines(x: Sequence[float | int | str], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
                     ylabel: str, ax: Axes | None = None,
                     bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> Figure:
    """One line per series across checkpoints/epochs, with optional (lower, upper) bands per series. The
    legend sits below the axes; values beyond later-set y limits are marked at the edge (mark_offscale)."""
    xs, ticks = _x_positions(x)
    fig, ax = _new_ax(ax, (7.5, 4.2))
    unknown = set(bands or {}) - set(series)
    if unknown:
        raise ValueError(f"bands for unknown series {sorted(unknown)}")
    for name, ys in series.items():
        ys = _array(ys)
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x positions")
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=name)
        if bands and name in bands:
            lo, hi = (_array(b) for b in bands[name])
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    if ticks is not None:
        ax.set_xticks(xs, ticks, rotation=30 if max(map(len, ticks), default=0) > 4 else 0)
    ax.axhline(0, color="grey", linewidth=0.6, zorder=0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        legend_below(ax)
    ax.grid(alpha=0.3)
    if not getattr(ax, "_marks_offscale", False):  # one callback per axes, however many calls draw on it
        ax.callbacks.connect("ylim_changed", mark_offscale)
        ax._marks_offscale = True
    return fig


def samples_seen(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 paper: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, ylabel: str,
                 ax: Axes | None = None, paper_epoch: int = 6360) -> Figure:
    """Training curves against samples seen (symlog x: 0 is the starting model), one line per run (e.g. per
    training seed), with the paper's reported points as large markers, and the paper's epochs as vertical
    ticks: how far our training goes on the paper's own axis. curves / paper: name -> (samples, values)."""
    fig, ax = _new_ax(ax, (7.5, 4.2))
    for name, (xs, ys) in curves.items():
        if len(xs) != len(ys):
            raise ValueError(f"curve {name!r} has {len(xs)} x values and {len(ys)} y values")
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=name)
    for name, (xs, ys) in paper.items():
        ax.plot(xs, ys, marker="*", markersize=12, linestyle=":", color="black", label=name)
    top = max([max(xs, default=0) for xs, _ in (*curves.values(), *paper.values())], default=paper_epoch)
    for e in (1, 10, 100):
        if e * paper_epoch <= top * 1.5:
            ax.axvline(e * paper_epoch, color="grey", linestyle="--", linewidth=0.6, zorder=0)
            ax.annotate(f"{e} paper epoch{'s' if e > 1 else ''}", (e * paper_epoch, 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="grey")
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(0, top * 2)
    ax.axhline(0, color="grey", linewidth=0.6, zorder=0)
    ax.set(title=title, xlabel="samples seen (symlog; the paper's epoch is 6,360 prompts)", ylabel=ylabel)
    legend_below(ax)
    ax.grid(alpha=0.3)
    return fig


def _label_small_bars(ax: Axes, bars, values: np.ndarray, span: float) -> None:
    """Give bars shorter than 2% of the value range an outline and their value, so a bar at ~0 is seen."""
    small = np.abs(values) < 0.02 * span
    for bar, is_small in zip(bars, small):
        if is_small:
            bar.set_edgecolor(bar.get_facecolor())
            bar.set_linewidth(2.0)
    ax.bar_label(bars, labels=[f"{v:.2g}" if s else "" for v, s in zip(values, small)], padding=2,
                 fontsize=NOTE_PT)


def bar_compare(labels: Sequence[str], values: Mapping[str, Sequence[float]], title: str, ylabel: str,
                ax: Axes | None = None, xlabel: str = "", reference: Mapping[str, float] | None = None) -> Figure:
    """Grouped bars: one group per label (named by xlabel), one bar per series in values; a bar too small
    to see is outlined and labelled with its value; `reference` draws labelled dashed lines (e.g. the
    unablated model)."""
    width = 0.6 * len(labels) * max(1, len(values)) ** 0.5 + 2
    fig, ax = _new_ax(ax, (min(max(5.0, width), MAX_WIDTH), 4.2))
    ax.use_sticky_edges = False  # a margin below 0 (set before drawing), so a bar at ~0 clears the spine
    arrays = {name: _array(v) for name, v in values.items()}
    for name, vals in arrays.items():
        if len(vals) != len(labels):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(labels)} labels")
    every = np.concatenate([*arrays.values(), _array(list((reference or {}).values())), np.zeros(1)])
    span = float(np.nanmax(every) - np.nanmin(every)) or 1.0
    n, width = len(arrays), 0.8 / max(1, len(arrays))
    xs = np.arange(len(labels))
    for i, (name, vals) in enumerate(arrays.items()):
        bars = ax.bar(xs + (i - (n - 1) / 2) * width, vals, width, label=name)
        _label_small_bars(ax, bars, vals, span)
    for (name, y), style in zip((reference or {}).items(), ("--", ":", "-.")):
        ax.axhline(y, color="black", linestyle=style, linewidth=1, label=name)
    ax.set_xticks(xs, [str(l) for l in labels], rotation=30 if max(map(len, map(str, labels)), default=0) > 6 else 0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if n + len(reference or {}) > 1:
        legend_below(ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


def cmap_heatmaps(effects: Mapping[str, object], classes: Mapping[str, Sequence[Head]] | None = None,
                  title: str = "", cbar_label: str = "") -> Figure:
    """Side-by-side [n_layers, n_heads] heat maps sharing one diverging colour scale centred at 0; circuit
    heads outlined, their classes named below the figure."""
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
    fig, axes = plt.subplots(1, len(arrays), figsize=(panel * len(arrays) + 1.6, h + 0.6), squeeze=False,
                             sharey=True, constrained_layout=True)
    present: list[str] = []
    for ax, (name, arr) in zip(axes[0], arrays.items()):
        im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap=DIVERGING, vmin=-m, vmax=m)
        _head_ticks(ax, n_l, n_h, (panel - 0.6) / n_h)
        ax.set(title=_wrap(name, panel), xlabel="head")
        present = class_outlines.outline(ax, classes, arr.shape) if classes else []
    axes[0][0].set_ylabel("layer")
    fig.colorbar(im, ax=list(axes[0]), label=cbar_label, fraction=0.05, pad=0.02)
    class_outlines.legend(fig, present)
    if title:
        fig.suptitle(title)
    return fig


def _annotate_cells(ax: Axes, arr: np.ndarray) -> None:
    """Write each finite value in its cell (gid CELL_VALUE_GID: the text is the cell's data, not a label)."""
    for i, j in zip(*np.nonzero(np.isfinite(arr))):
        ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=7, color="black", gid=CELL_VALUE_GID)


def head_rows_heatmaps(heads: Sequence[str], columns: Sequence[str], panels: Mapping[str, object], title: str = "",
                       symmetric: Mapping[str, bool] | None = None, annotate: bool = True,
                       xlabel: str = "checkpoint") -> Figure:
    """Side-by-side [n_heads, n_columns] heat maps (one row per named head, one column per checkpoint or
    model, named by xlabel), each panel with its own colour bar: diverging around 0 (symmetric, e.g. DLA) or
    sequential (attention). Values are written in the cells when annotate and the grid is small enough to read."""
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
    long_names = max(map(len, map(str, columns))) > 3
    for ax, (name, arr) in zip(axes[0], arrays.items()):
        sym = symmetric.get(name, True)
        kw = _limits(arr, sym)
        if not sym:
            finite = arr[np.isfinite(arr)]
            kw.update(vmin=0.0, vmax=max(float(finite.max()) if finite.size else 1.0, 1e-6))
        im = ax.imshow(arr, aspect="auto", interpolation="nearest", **kw)
        ax.set_xticks(range(len(columns)), [str(c) for c in columns], rotation=45 if long_names else 0,
                      ha="right" if long_names else "center")
        ax.set_yticks(range(len(heads)), list(heads))
        ax.set(title=_wrap(name, panel_w), xlabel=xlabel)
        if annotate and len(heads) * len(columns) <= 200 and panel_w / max(1, len(columns)) >= 0.35:
            _annotate_cells(ax, arr)
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


# ---------------------------------------------------------------- the figure check


