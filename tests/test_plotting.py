"""Figures: shapes, axes, colour scales and class annotations."""

import matplotlib

matplotlib.use("Agg")  # tests only; the library never sets a backend

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from ioi_utils import plotting as P

SHAPES = [(2, 4), (30, 9)]  # tiny GPT-2, SmolLM2-135M


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(ax):
    """The one image drawn on an axes."""
    (im,) = ax.get_images()
    return im


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
    assert {t.get_text() for t in ax.texts} == {"NM/SIN", "SIN"}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["NM", "SIN"]  # outside, right of the colour bar


def test_head_heatmap_sequential_and_on_given_axes():
    fig, (a, b) = plt.subplots(1, 2)
    got = P.head_heatmap(np.random.default_rng(0).random((2, 4)), "attention", ax=b, symmetric=False)
    assert got is fig and len(fig.axes) == 3 and _image(b).get_cmap().name == P.SEQUENTIAL
    assert b.get_legend() is None and not b.texts
    P.head_heatmap(np.ones((2, 4)), "classes", classes={"IND": [(0, 0)]}, ax=a)
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["IND"] and not fig.legends


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
    assert len(fig.legends) == 1 and sum(len(ax.texts) for ax in fig.axes[:3]) == 3  # one label per map
    with pytest.raises(ValueError, match="share one"):
        P.cmap_heatmaps({"a": torch.zeros(2, 4), "b": torch.zeros(3, 4)})
