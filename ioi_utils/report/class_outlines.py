"""A circuit's classes on a head map: each class's heads outlined in the class colour, one legend per figure.

An outline has no fill and no text, so the cell's value stays visible (a white halo keeps it visible on dark
cells); a head in several classes takes its first class's colour. `outline` draws a map's classes and returns the
classes present; `legend` puts one legend below the whole figure, merged with what earlier panels listed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.patheffects as path_effects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

Head = tuple[int, int]  # (layer, query head)
CLASS_COLORS: dict[str, str] = {
    "NM": "#2ca02c", "NNM": "#d62728", "BNM": "#17becf", "SIN": "#9467bd",
    "IND": "#ff7f0e", "DT": "#8c564b", "PT": "#e377c2", "SS": "#bcbd22", "OTH": "#7f7f7f",
    "DW": "#1f77b4", "NSS": "#ff9896", "NDW": "#393b79",
}
CLASS_LEGEND_TITLE = "circuit class (outlined cells)"
OUTLINE_INSET = 0.07  # a class outline sits this far (in cells) inside its cell, so neighbours stay apart


def _class_of_heads(classes: Mapping[str, Sequence[Head]], shape: tuple[int, int]) -> dict[Head, list[str]]:
    """Each head's classes (a head may be in several), checking that every head lies on the map."""
    labels: dict[Head, list[str]] = {}
    for cls, heads in classes.items():
        for layer, head in heads:
            if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
                raise ValueError(f"head {layer}.{head} of class {cls} is outside a {shape[0]}x{shape[1]} map")
            labels.setdefault((int(layer), int(head)), []).append(cls)
    return labels


def outline(ax: Axes, classes: Mapping[str, Sequence[Head]], shape: tuple[int, int]) -> list[str]:
    """Outline each class's heads in the class colour (no fill, no text: the cell's value stays visible);
    return the classes present, for the legend. A white halo keeps an outline visible on dark cells."""
    halo = [path_effects.Stroke(linewidth=4.0, foreground="white"), path_effects.Normal()]
    side = 1 - 2 * OUTLINE_INSET
    for (layer, head), cls in _class_of_heads(classes, shape).items():
        corner = (head - 0.5 + OUTLINE_INSET, layer - 0.5 + OUTLINE_INSET)
        ax.add_patch(Rectangle(corner, side, side, fill=False, edgecolor=CLASS_COLORS.get(cls[0], "black"),
                               linewidth=2.0, path_effects=halo))
    return [c for c in classes if classes[c]]


def legend(fig: Figure, present: Sequence[str]) -> None:
    """One class legend for the whole figure, below it (outside every map): merged with the classes an
    earlier panel of the same figure already listed, in the order of CLASS_COLORS."""
    old = [lg for lg in fig.legends if lg.get_title().get_text() == CLASS_LEGEND_TITLE]
    listed = {t.get_text() for lg in old for t in lg.get_texts()} | set(present)
    for legend in old:
        legend.remove()
    if not listed:
        return
    order = [c for c in CLASS_COLORS if c in listed] + sorted(listed - set(CLASS_COLORS))
    handles = [Patch(facecolor="none", edgecolor=CLASS_COLORS.get(c, "black"), linewidth=2, label=c) for c in order]
    fig.legend(handles=handles, title=CLASS_LEGEND_TITLE, loc="outside lower center", ncol=min(len(handles), 9),
               frameon=False)
