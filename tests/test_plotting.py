"""Figures: shapes, axes, colour scales, class outlines, and the figure check (figure_check.figure_problems) applied
to every figure function of the module."""

import matplotlib

matplotlib.use("Agg")  # tests only; the library never sets a backend

import inspect

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ioi_utils.report import class_outlines, figure_check, plotting as P

SHAPES = [(2, 4), (30, 9)]  # tiny GPT-2, SmolLM2-135M


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(ax):
    """The one image drawn on an axes."""
    (im,) = ax.get_images()
    return im


def _outlined(ax) -> list[tuple[int, int]]:
    """(layer, head) of every cell outlined on a head map."""
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    return [(round(p.get_y() + p.get_height() / 2), round(p.get_x() + p.get_width() / 2)) for p in boxes]


def _class_legend(fig) -> list[str]:
    """The classes listed by the figure's one class legend."""
    (legend,) = [lg for lg in fig.legends if lg.get_title().get_text() == class_outlines.CLASS_LEGEND_TITLE]
    return [t.get_text() for t in legend.get_texts()]


@pytest.mark.parametrize("shape", SHAPES)
def test_head_heatmap_marks_classes_and_centres_signed_data(shape):
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) + 0.3
    classes = {"NM": [(shape[0] - 1, 0)], "SIN": [(0, 1), (shape[0] - 1, 0)], "PT": []}
    fig = P.head_heatmap(values, "DLA", classes=classes, cbar_label="logit diff")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # map + colour bar
    ax = fig.axes[0]
    im = _image(ax)
    assert im.get_cmap().name == P.DIVERGING and im.norm.vmin == -im.norm.vmax == -float(values.abs().max())
    assert im.get_array().shape == shape and ax.get_ylabel() == "layer" and ax.get_title() == "DLA"
    assert not ax.texts  # nothing written over the cells: the heads are outlined
    assert sorted(_outlined(ax)) == sorted({(shape[0] - 1, 0), (0, 1)})
    assert _class_legend(fig) == ["NM", "SIN"]  # one legend, below the figure


def test_head_heatmap_sequential_and_on_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    got = P.head_heatmap(np.random.default_rng(0).random((2, 4)), "attention", ax=b, symmetric=False)
    assert got is fig and len(fig.axes) == 3 and _image(b).get_cmap().name == P.SEQUENTIAL
    assert b.get_legend() is None and not b.texts and not fig.legends
    P.head_heatmap(np.ones((2, 4)), "classes", classes={"IND": [(0, 0)]}, ax=a)
    P.head_heatmap(np.ones((2, 4)), "more classes", classes={"NM": [(1, 1)], "IND": [(0, 1)]}, ax=b)
    assert a.get_legend() is None and _class_legend(fig) == ["NM", "IND"]  # merged, in CLASS_COLORS order


def test_head_heatmap_rejects_bad_input():
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        P.head_heatmap(np.zeros(5), "x")
    with pytest.raises(ValueError, match="outside a 2x4 map"):
        P.head_heatmap(np.zeros((2, 4)), "x", classes={"NM": [(2, 0)]})


def test_checkpoint_lines_with_labels_and_bands():
    x = ["base", "ep1", "ep2"]
    series = {"clean": [3.0, 4.0, 5.0], "toxic": [3.0, 1.0, -1.0]}
    fig = P.checkpoint_lines(x, series, "Logit difference", "checkpoint", "logit diff",
                             bands={"clean": ([2.5, 3.5, 4.5], [3.5, 4.5, 5.5])})
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.get_lines()) == 3  # two series + the zero line
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "toxic"]
    assert [t.get_text() for t in ax.get_xticklabels()] == x and len(ax.collections) == 1
    fig2 = P.checkpoint_lines([0, 1, 2], {"a": np.array([0.1, 0.2, 0.3])}, "t", "epoch", "y")
    assert fig2.axes[0].get_legend() is None
    with pytest.raises(ValueError, match="has 2 values"):
        P.checkpoint_lines(x, {"a": [1, 2]}, "t", "x", "y")
    with pytest.raises(ValueError, match="unknown series"):
        P.checkpoint_lines(x, series, "t", "x", "y", bands={"other": ([0, 0, 0], [1, 1, 1])})


def test_bar_compare_groups_bars():
    labels = ["NM", "SIN", "IND", "DT"]
    fig = P.bar_compare(labels, {"base": [1, 2, 3, 4], "tuned": torch.tensor([2.0, 1.0, 0.0, -1.0])}, "F(C)", "ld")
    ax = fig.axes[0]
    assert len(ax.patches) == 8 and [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.texts if t.get_text()] == ["0"]  # the one bar too small to see is labelled
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "tuned"]
    with pytest.raises(ValueError, match="has 3 values"):
        P.bar_compare(labels, {"base": [1, 2, 3]}, "t", "y")


@pytest.mark.parametrize("shape", SHAPES)
def test_cmap_heatmaps_share_one_scale(shape):
    g = torch.Generator().manual_seed(1)
    effects = {"output": torch.randn(*shape, generator=g), "query": 3 * torch.randn(*shape, generator=g),
               "key": torch.zeros(shape)}
    fig = P.cmap_heatmaps(effects, classes={"NM": [(1, 1)]}, title="CMAP")
    assert len(fig.axes) == 4  # three maps + one shared colour bar
    limits = {(_image(ax).norm.vmin, _image(ax).norm.vmax) for ax in fig.axes[:3]}
    m = float(effects["query"].abs().max())
    assert limits == {(-m, m)}
    assert [ax.get_title() for ax in fig.axes[:3]] == ["output", "query", "key"]
    assert _class_legend(fig) == ["NM"] and all(_outlined(ax) == [(1, 1)] and not ax.texts for ax in fig.axes[:3])
    with pytest.raises(ValueError, match="share one"):
        P.cmap_heatmaps({"a": torch.zeros(2, 4), "b": torch.zeros(3, 4)})


# ---------------------------------------------------------------- the figure check


def _maps(shape=(4, 3), seed=0):
    """A signed [n_layers, n_heads] map and classes on it."""
    values = np.random.default_rng(seed).normal(size=shape)
    return values, {"NM": [(shape[0] - 1, 0)], "SIN": [(1, 1)], "IND": [(0, 2)]}


def _head_heatmaps_on_given_axes() -> Figure:
    """Two head maps on a chapter's own 1x2 figure, as chapter 2 draws its path-patching maps."""
    values, classes = _maps()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    P.head_heatmap(values, "attributed share", classes, ax=axes[0])
    return P.head_heatmap(values.clip(0), "attention", classes, ax=axes[1], symmetric=False)


def _lines_with_limits_set_later() -> Figure:
    """Faithfulness curves whose y limits a chapter narrows afterwards: values beyond them are marked."""
    fig = P.checkpoint_lines([0, 1, 2], {"subject duplication": [0.9, 4.1, -3.0], "name moving": [0.9, 1.1, 1.2]},
                             "Faithfulness", "toxic epoch", "F(C)/F(M)",
                             bands={"name moving": ([0.8, 1.0, 1.1], [1.0, 1.2, 1.3])})
    fig.axes[0].set_ylim(-0.5, 1.5)
    return fig


FIGURES = {  # every figure function of plotting, on small synthetic inputs
    "head_heatmap": lambda: P.head_heatmap(_maps()[0], "DLA", _maps()[1], cbar_label="logit diff"),
    "head_heatmap on given axes": _head_heatmaps_on_given_axes,
    "checkpoint_lines": lambda: P.checkpoint_lines(["base", "e1"], {"a": [1.0, 2.0], "b": [0.5, -1.0]}, "LD",
                                                   "checkpoint", "logit diff", bands={"a": ([0.5, 1.5], [1.5, 2.5])}),
    "checkpoint_lines, limits set later": _lines_with_limits_set_later,
    "samples_seen": lambda: P.samples_seen({"seed 0": ([0, 320, 640, 960], [5.0, 7.5, 9.1, 10.2]),
                                            "seed 1": ([0, 320, 640, 960], [5.0, 7.2, 9.4, 10.0])},
                                           {"paper": ([6360, 636000], [6.32, 26.83])}, "LD", "logit diff"),
    "bar_compare": lambda: P.bar_compare([str(l) for l in range(6)], {"ablated": [0.01, 5, 5.2, 4.8, 5.1, 5.0]},
                                         "MLP knockouts", "logit diff", xlabel="MLP layer", reference={"none": 5.1}),
    "cmap_heatmaps": lambda: P.cmap_heatmaps({"output": _maps()[0], "pattern": P.masked(_maps(seed=1)[0], [(1, 1)])},
                                             _maps()[1], "CMAP", cbar_label="change"),
    "head_rows_heatmaps": lambda: P.head_rows_heatmaps(
        ["NM 3.0", "SIN 1.1"], ["base", "e1", "e2"], {"DLA": np.arange(6.0).reshape(2, 3) - 2, "attn": np.ones((2, 3))},
        "heads", symmetric={"attn": False}),
    "checkpoint_heads": lambda: P.checkpoint_heads(
        [{k: torch.full((4, 3), float(i)) for k in ("dla", "attn_io", "attn_s")} for i in range(3)],
        [(3, 0), (1, 1)], ["NM 3.0", "SIN 1.1"], ["base", "e1", "e2"], "heads"),
}


def test_every_figure_function_is_checked():
    """A new figure function of plotting must join FIGURES (and so the figure check)."""
    functions = {name for name, f in inspect.getmembers(P, inspect.isfunction)
                 if f.__module__ == P.__name__ and inspect.signature(f).return_annotation in (Figure, "Figure")}
    assert functions == {name.split(" ")[0].rstrip(",") for name in FIGURES}


@pytest.mark.parametrize("name", FIGURES)
def test_figure_shows_its_data(name):
    """No label over cells, no legend inside the data, every axis labelled, nothing off the axes unmarked."""
    assert figure_check.figure_problems(FIGURES[name]()) == []


def test_values_beyond_later_limits_are_marked_at_the_edge():
    ax = _lines_with_limits_set_later().axes[0]
    ax.figure.canvas.draw()
    marks = sorted(t.get_text() for t in ax.texts if t.get_gid() == P.OFFSCALE_GID)
    assert marks == ["▲ 4.1", "▼ -3"]
    ax.set_ylim(-5, 5)  # the limits change again: the marks follow
    assert not [t for t in ax.texts if t.get_gid() == P.OFFSCALE_GID]


def _old_style_heatmap() -> Figure:
    """A head map that writes its class labels in boxes over the heads' cells, its legend inside the map."""
    values, classes = _maps()
    fig = P.head_heatmap(values, "DLA")
    ax = fig.axes[0]
    for cls, heads in classes.items():
        for layer, head in heads:
            ax.text(head, layer, cls, ha="center", va="center", bbox={"fc": "white", "alpha": 0.6})
    ax.legend(handles=[Rectangle((0, 0), 1, 1, label="NM")], loc="upper right")
    return fig


def test_the_check_fails_on_labels_over_cells():
    problems = figure_check.figure_problems(_old_style_heatmap())
    covered = {p.split(" covers")[0] for p in problems if " covers the cells of the map 'DLA'" in p}
    assert covered == {"text 'NM'", "text 'SIN'", "text 'IND'", "legend ''"}
    assert "legend '' lies inside the axes 'DLA'" in problems


def test_the_check_fails_on_missing_labels_lines_off_the_axes_and_legends_inside():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [0.5, 9.0, 0.7], label="curve")
    ax.plot([0, 2], [0.5, 0.5], label="flat")
    ax.set_ylim(0, 1)
    ax.legend(loc="center")
    problems = figure_check.figure_problems(fig)
    assert "line 'curve' of '' leaves the axes at (1, 9)" in problems
    assert "axes '' has no x label" in problems and "axes '' has no y label" in problems
    assert "legend '' lies inside the axes ''" in problems
    unlabelled = P.bar_compare(["0", "1"], {"a": [1, 2]}, "t", "y")  # bar_compare's x label is the caller's
    assert figure_check.figure_problems(unlabelled) == ["axes 't' has no x label"]
