"""The figure check: what a reader of the book must never see in a figure, found by rendering it.

`figure_problems` lists, one line each: text written over a heat map's image (except a value in its own cell),
axes without a label, plotted points outside their axes (unless marked off-scale, `plotting.mark_offscale`), and
legends drawn over data. The book's figures are built by `plotting`; its tests run every figure through this check.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ioi_utils.report import plotting


def _labels_over_images(fig: Figure, renderer) -> list[str]:
    """Texts and legends whose drawn box overlaps a heat map's cells (values written in their own cell,
    gid plotting.CELL_VALUE_GID, are the data and allowed)."""
    images = [(ax, im.get_window_extent(renderer)) for ax in fig.axes for im in ax.get_images() if im.get_visible()]
    images = [(ax, Bbox.intersection(box, ax.bbox)) for ax, box in images]
    legends = [lg for lg in fig.findobj(Legend) if lg.get_visible()]
    in_legends = {id(t) for lg in legends for t in [*lg.get_texts(), lg.get_title()]}  # checked with their legend
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in in_legends
             and t.get_gid() != plotting.CELL_VALUE_GID]
    problems = []
    for artist in [*texts, *legends]:
        box = artist.get_window_extent(renderer)
        for ax, image in images:
            overlap = image and Bbox.intersection(box, image)
            if overlap and overlap.width > 1 and overlap.height > 1:
                what = f"legend {artist.get_title().get_text()!r}" if isinstance(artist, Legend) else \
                    f"text {artist.get_text()!r}"
                problems.append(f"{what} covers the cells of the map {ax.get_title()!r}")
    return problems


def _has_label(ax: Axes, axis: str) -> bool:
    """An axis is labelled if it, or an axes sharing it (the first panel of a row), has a label."""
    shared = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return any((a.get_xlabel() if axis == "x" else a.get_ylabel()).strip() for a in shared.get_siblings(ax))


def _unlabelled_axes(fig: Figure) -> list[str]:
    """Axes (colour bars apart) without an x or a y label."""
    return [f"axes {ax.get_title()!r} has no {axis} label" for ax in fig.axes
            if ax.get_visible() and ax.axison and not hasattr(ax, "_colorbar")
            for axis in "xy" if not _has_label(ax, axis)]


def _points_outside(ax: Axes, line: Line2D) -> np.ndarray:
    """The finite (x, y) data points of a line that are drawn more than a pixel outside its axes."""
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if not len(xy):
        return xy
    shown, box = line.get_transform().transform(xy), ax.bbox
    inside = ((shown[:, 0] >= box.x0 - 1) & (shown[:, 0] <= box.x1 + 1) &
              (shown[:, 1] >= box.y0 - 1) & (shown[:, 1] <= box.y1 + 1))
    return xy[~inside]


def _lines_off_axes(fig: Figure) -> list[str]:
    """Line points drawn beyond their axes that no off-scale marker (mark_offscale) names; unlabelled guides
    spanning the axes (axhline, axvline) may leave the view."""
    problems = []
    for ax in fig.axes:
        marked = {(round(t.get_position()[0], 6), to_hex(t.get_color())) for t in ax.texts
                  if t.get_gid() == plotting.OFFSCALE_GID}
        for line in ax.get_lines():
            guide = line.get_label().startswith("_") and line.get_transform() != ax.transData  # axhline(0) etc.
            if guide or not line.get_visible():
                continue
            problems += [f"line {line.get_label()!r} of {ax.get_title()!r} leaves the axes at ({x:g}, {y:g})"
                         for x, y in _points_outside(ax, line)
                         if (round(float(x), 6), to_hex(line.get_color())) not in marked]
    return problems


def _legends_over_data(fig: Figure, renderer) -> list[str]:
    """Legends drawn inside the plotting area of an axes (colour bars apart): legends belong outside the data."""
    problems = []
    for legend in [lg for lg in fig.findobj(Legend) if lg.get_visible()]:
        box = legend.get_window_extent(renderer)
        for ax in [a for a in fig.axes if a.get_visible() and not hasattr(a, "_colorbar")]:
            overlap = Bbox.intersection(box, ax.bbox)
            if overlap and overlap.width > 1 and overlap.height > 1:
                problems.append(f"legend {legend.get_title().get_text()!r} lies inside the axes {ax.get_title()!r}")
    return problems


def figure_problems(fig: Figure) -> list[str]:
    """What keeps a figure from showing its data, as sentences (empty: the figure passes). After drawing the
    figure: no text or legend over a heat map's cells (values written in their own cell apart), no legend
    inside an axes' plotting area, an x and a y label on every axes but colour bars (a shared axis may carry
    it once), and no line point beyond its axes unless mark_offscale wrote it at the edge."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [*_labels_over_images(fig, renderer), *_legends_over_data(fig, renderer), *_unlabelled_axes(fig),
            *_lines_off_axes(fig)]
