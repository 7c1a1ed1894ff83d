"""Fast tests of ioi_utils.book (no kernel is started)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ioi_utils import book

ROOT = Path(__file__).resolve().parent.parent


def _executed_notebook() -> nbformat.NotebookNode:
    """A notebook shaped like papermill's output, volatile metadata included."""
    nb = new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
        new_code_cell("# Parameters\nseed = 1\n", metadata={"tags": ["injected-parameters"]}),
        new_code_cell("print(seed)", outputs=[new_output("stream", name="stdout", text="1\n")]),
    ])
    nb.metadata["papermill"] = {"input_path": "<whole notebook>", "duration": 1.2}
    for cell in nb.cells:
        cell.metadata["papermill"] = {"duration": 0.1, "status": "completed"}
        cell.metadata["execution"] = {"iopub.execute_input": "2025-01-01T00:00:00Z"}
    return nb


def test_strip_volatile_removes_metadata_and_sets_ids() -> None:
    """Papermill/execution metadata go, ids are cell-{i}, the injected cell is hidden."""
    nb = book.strip_volatile(_executed_notebook())
    assert "papermill" not in nb.metadata
    assert [c.id for c in nb.cells] == [f"cell-{i}" for i in range(4)]
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert nb.cells[2].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    nbformat.validate(nb)


def test_strip_volatile_is_idempotent() -> None:
    """Stripping twice gives the same notebook (no duplicated remove-cell tag)."""
    once = nbformat.writes(book.strip_volatile(_executed_notebook()))
    twice = nbformat.writes(book.strip_volatile(nbformat.reads(once, as_version=4)))
    assert once == twice


def test_scrub_outputs_merges_streams_and_removes_noise() -> None:
    """Progress bars settle to their last state; temp paths, addresses and timings are replaced."""
    outputs = [
        new_output("stream", name="stderr", text="/tmp/ipykernel_123/456.py:1: UserWarning: w\n"),
        new_output("stream", name="stderr", text="\r  0%|          | 0/9 [00:00<?, ?it/s]"),
        new_output("stream", name="stderr", text="\r100%|##########| 9/9 [00:01<00:00, 8.12it/s]"),
        new_output("execute_result", data={"text/plain": "<Foo at 0x7f00deadbeef>"}, execution_count=1),
    ]
    nb = book.scrub_outputs(new_notebook(cells=[new_code_cell("x", outputs=outputs)]))
    texts = [o.get("text") or o["data"]["text/plain"] for o in nb.cells[0].outputs]
    assert texts == ["IPYKERNEL_CELL:1: UserWarning: w\n100%|##########| 9/9 [TQDM-TIME]", "<Foo at 0xADDRESS>"]


def test_sanitize_cfg_matches_runner_patterns() -> None:
    """tests/nbval_sanitize.cfg contains every regex/replacement the runner applies."""
    from nbval.plugin import get_sanitize_patterns

    cfg = get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text())
    assert set(book.VOLATILE_OUTPUT) <= set(cfg)


def test_profiles_share_keys() -> None:
    """Every profile defines the same parameters, and names itself."""
    keys = {name: set(params) for name, params in book.PROFILES.items()}
    assert set(book.PROFILES) == {"smoke", "offline", "paper"}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys
    assert all(params["profile"] == name for name, params in book.PROFILES.items())
    assert {p["model_name"] for p in book.PROFILES.values()} == {"tiny", "smollm2-135m", "gpt2"}


def test_unknown_profile_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits with code 2 and lists the valid profiles."""
    with pytest.raises(SystemExit) as exc:
        book.parse_args(["--profile", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in book.PROFILES)


def test_toc_order_and_chapter_selection() -> None:
    """The TOC gives root then chapters; --chapters keeps TOC order and rejects unknown names."""
    chapters = book.toc_chapters(ROOT / book.TOC_FILE)
    assert chapters[0] == "intro" and chapters[-1] == "summary"
    assert book.select_chapters(chapters, None) == chapters
    assert book.select_chapters(chapters, ["summary", "intro"]) == ["intro", "summary"]
    with pytest.raises(ValueError, match="nope"):
        book.select_chapters(chapters, ["nope"])


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    """write_atomic produces exactly the target file."""
    target = tmp_path / "ch.ipynb"
    book.write_atomic(book.strip_volatile(_executed_notebook()), target)
    assert [p.name for p in tmp_path.iterdir()] == ["ch.ipynb"]
    assert nbformat.read(target, as_version=4).cells[0].id == "cell-0"


def test_attention_view_snippet_is_small_and_deterministic() -> None:
    """attention_view emits a div + CircuitsVis.render call with a content-derived id, no inlined library."""
    import torch

    from ioi_utils import display

    attention = torch.full((2, 3, 3), 1 / 3)
    html = display.attention_view(["a", "b", "c"], attention, ["L0H0", "L0H1"]).data
    assert "CircuitsVis.render(" in html and "AttentionHeads" in html and len(html) < 2_000
    uid = html.split('id="', 1)[1].split('"', 1)[0]
    again = display.attention_view(["a", "b", "c"], attention, ["L0H0", "L0H1"]).data
    assert uid.split("-")[-1] == again.split('id="', 1)[1].split('"', 1)[0].split("-")[-1]
    with pytest.raises(ValueError, match="n_heads"):
        display.attention_view(["a", "b"], attention, ["L0H0", "L0H1"])
