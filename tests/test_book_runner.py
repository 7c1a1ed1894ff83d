"""Fast tests of ioi_utils.book (no kernel is started)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
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
    assert [book.PROFILES[n]["model_name"] for n in ("smoke", "offline", "paper")] == ["smollm2-135m"] * 2 + ["gpt2"]
    assert book.PROFILES["smoke"]["n_prompts"] < book.PROFILES["offline"]["n_prompts"]


def test_unknown_profile_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits with code 2 and lists the valid profiles."""
    with pytest.raises(SystemExit) as exc:
        book.parse_args(["--profile", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in book.PROFILES)


def test_toc_order_and_chapter_selection() -> None:
    """The TOC gives root then chapters; --chapters keeps TOC order and rejects unknown names."""
    pages = book.toc_chapters(ROOT / book.TOC_FILE)
    assert pages[0] == "intro" and pages[-2:] == ["summary", "paper"]
    chapters = book.executable_chapters(ROOT, pages)
    assert chapters == pages[:-1]  # the appendix is markdown, not executed
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


# ---------------------------------------------------------------- staging, publication, records


def _mini_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repo root with a two-chapter TOC, their sources, old published notebooks and a results folder."""
    root = tmp_path / "repo"
    (root / "book").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: a\nchapters:\n  - file: b\n  - file: notes\n")
    (root / "book" / "notes.md").write_text("# Notes\n")  # a markdown page: not executed
    for name in ("a", "b"):
        (root / "book" / f"{name}.py").write_text("# %%\nx = 1\n")
        (root / "book" / f"{name}.ipynb").write_text(f"old {name}\n")
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PYTHONPATH", "")
    return root


def _fake_executor(calls: list[dict], fail: str | None = None, exc: type[BaseException] = book.ChapterFailed):
    """A stand-in for execute_chapter: writes a small notebook, or a partial one and raises for `fail`."""

    def run(src: Path, out: Path, params: dict, log: Path) -> None:
        calls.append({"name": src.stem, "out": out, "params": params, "log": log})
        nb = new_notebook(cells=[new_code_cell(f"# new {src.stem}")])
        nbformat.write(nb, out)
        if src.stem == fail:
            raise exc(f"chapter '{src.stem}' failed: boom")

    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exc", [book.ChapterFailed, KeyboardInterrupt])
def test_failed_or_interrupted_run_leaves_target_untouched(tmp_path, monkeypatch, capsys, exc) -> None:
    """A chapter that fails (or Ctrl-C/SIGTERM) publishes nothing; the partial notebooks stay in staging."""
    root = _mini_repo(tmp_path, monkeypatch)
    before = _snapshot(root / "book")
    calls: list[dict] = []
    monkeypatch.setattr(book, "execute_chapter", _fake_executor(calls, fail="b", exc=exc))
    code = book.main(["--profile", "smoke", "--root", str(root), "--no-build"])
    assert code == (1 if exc is book.ChapterFailed else 130)
    assert _snapshot(root / "book") == before
    staging = calls[0]["out"].parent
    assert staging.parent == root / book.STAGING_DIR and staging.name.startswith("smoke-")
    assert sorted(p.name for p in staging.iterdir()) == ["a.ipynb", "b.ipynb"]
    assert str(staging.relative_to(root)) in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not list((root / "_build").glob("execution-*.json"))


def test_successful_run_publishes_all_and_writes_the_record(tmp_path, monkeypatch, capsys) -> None:
    """All chapters succeed: every target notebook is replaced, staging is removed, execution.json is written."""
    root = _mini_repo(tmp_path, monkeypatch)
    calls: list[dict] = []
    monkeypatch.setattr(book, "execute_chapter", _fake_executor(calls))
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 0
    assert sorted(_snapshot(root / "book")) == ["a.ipynb", "a.py", "b.ipynb", "b.py", "notes.md"]  # no temp files
    assert all(nbformat.read(root / "book" / f"{n}.ipynb", as_version=4).cells[0].source == f"# new {n}" for n in "ab")
    assert not calls[0]["out"].parent.exists()
    assert [c["log"] for c in calls] == [root / "_build" / "logs" / f"{n}.log" for n in "ab"]
    out = capsys.readouterr().out
    assert "[1/2] a: running (no estimate of what is left); log: _build/logs/a.log" in out
    record = json.loads((tmp_path / "results" / "execution-smoke.json").read_text())
    assert set(record) == {"model", "profile", "commit", "date", "seconds_per_chapter", "total_seconds"}
    assert record["model"] == "smollm2-135m" and record["profile"] == "smoke"
    assert set(record["seconds_per_chapter"]) == {"a", "b"}
    in_build = (root / "_build" / "execution-smoke.json").read_text()
    assert in_build == (tmp_path / "results" / "execution-smoke.json").read_text()
    info = calls[0]["params"]["execution_info"]
    assert set(info) == {"model", "profile", "commit", "date", "previous_total_seconds"}
    assert info["previous_total_seconds"] is None and info["commit"] == "unknown"  # tmp_path is not a git repo
    assert [c["name"] for c in calls] == ["a", "b"]
    calls.clear()
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 0  # second run: an estimate
    previous = calls[0]["params"]["execution_info"]["previous_total_seconds"]
    assert previous == pytest.approx(record["total_seconds"], abs=0.2)
    assert "[1/2] a: running (about" in capsys.readouterr().out


def test_out_dir_receives_the_notebooks_and_book_is_untouched(tmp_path, monkeypatch) -> None:
    """--out-dir publishes there (created if needed) and leaves book/ as it was."""
    root = _mini_repo(tmp_path, monkeypatch)
    before = _snapshot(root / "book")
    monkeypatch.setattr(book, "execute_chapter", _fake_executor([]))
    out_dir = tmp_path / "elsewhere" / "nbs"
    assert book.main(["--profile", "smoke", "--root", str(root), "--out-dir", str(out_dir), "--chapters", "b"]) == 0
    assert _snapshot(root / "book") == before and sorted(_snapshot(out_dir)) == ["b.ipynb"]


def test_strict_maps_to_enforce_claims(tmp_path, monkeypatch) -> None:
    """Profiles only report claims; --strict passes strict=enforce_claims=True to every chapter."""
    assert all(p["enforce_claims"] is False for p in book.PROFILES.values())
    params = book.chapter_parameters("smoke", False, {"model": "tiny"})
    assert params["strict"] is params["enforce_claims"] is False and params["execution_info"] == {"model": "tiny"}
    root = _mini_repo(tmp_path, monkeypatch)
    calls: list[dict] = []
    monkeypatch.setattr(book, "execute_chapter", _fake_executor(calls))
    assert book.main(["--profile", "offline", "--root", str(root), "--no-build", "--strict"]) == 0
    assert all(c["params"]["strict"] is c["params"]["enforce_claims"] is True for c in calls)
    assert calls[0]["params"]["model_name"] == "smollm2-135m"


def test_publish_replaces_every_file(tmp_path) -> None:
    """publish copies then atomically replaces, leaving exactly the destination files."""
    staging, target = tmp_path / "staging", tmp_path / "target"
    staging.mkdir()
    target.mkdir()
    (target / "a.ipynb").write_text("old")
    (target / "keep.txt").write_text("other")
    for name in ("a", "b"):
        (staging / f"{name}.ipynb").write_text(f"new {name}")
    assert book.publish([staging / "a.ipynb", staging / "b.ipynb"], target) == [target / "a.ipynb", target / "b.ipynb"]
    assert _snapshot(target) == {"a.ipynb": b"new a", "b.ipynb": b"new b", "keep.txt": b"other"}


def test_estimates_and_durations() -> None:
    """Estimates need a recorded time for every remaining chapter; totals only for complete runs."""
    previous = {"a": 10.0, "b": 50.0}
    assert book.estimate_left(previous, ["a", "b"]) == 60.0 and book.estimate_left(previous, []) == 0.0
    assert book.estimate_left(previous, ["a", "c"]) is None
    assert book.previous_total({"seconds_per_chapter": previous}, ["a", "b"]) == 60.0
    assert book.previous_total({"seconds_per_chapter": previous}, ["a", "b", "c"]) is None
    assert [book.fmt_seconds(s) for s in (3.25, 65, 3725)] == ["3.2 s", "1 min 05 s", "1 h 02 min"]


def test_git_commit_marks_dirty_trees(tmp_path) -> None:
    """The commit is a short hash, with +dirty when the work tree has changes."""
    import subprocess

    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = book.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{4,}", clean)
    (tmp_path / "f").write_text("2")
    assert book.git_commit(tmp_path) == f"{clean}+dirty"


def test_log_stream_puts_output_after_a_bar_on_its_own_line() -> None:
    """Kernel output that follows a progress bar starts a new line; bar redraws do not."""
    import io

    raw = io.StringIO()
    log = book.LogStream(raw)
    for text in ("start\n", "\r 10%|#", "\r 50%|#####", "[HOLDS] x\n", "\r100%|##########|", "\n", "end\n"):
        log.write(text)
    assert raw.getvalue() == "start\n\r 10%|#\r 50%|#####\n[HOLDS] x\n\r100%|##########|\nend\n"


def test_chapter_parameter_defaults_are_the_smoke_profile() -> None:
    """Run by hand (no runner), a chapter executes the smoke profile: its parameters cell holds those values."""
    chapters = book.executable_chapters(ROOT, book.toc_chapters(ROOT / book.TOC_FILE))
    for name in chapters:
        src = (ROOT / "book" / f"{name}.py").read_text()
        cell = src.split('# %% tags=["parameters"]\n', 1)[1].split("\n# %%", 1)[0]
        values = {t.id: ast.literal_eval(node.value) for node in ast.parse(cell).body
                  for t in node.targets if isinstance(node, ast.Assign)}
        shared = {k: v for k, v in values.items() if k in book.PROFILES["smoke"]}
        assert shared == {k: book.PROFILES["smoke"][k] for k in shared}, name
        assert {"profile", "model_name"} <= set(shared), name


def test_slowest_cells_names_the_longest_cells_first() -> None:
    """The log's closing line lists the cells by papermill duration, longest first, cells without one as 0."""
    nb = new_notebook(cells=[new_code_cell("a"), new_code_cell("b"), new_markdown_cell("m"), new_code_cell("c")])
    for cell, d in zip(nb.cells, (1.5, 30.25, None, 4.0)):
        if d is not None:
            cell.metadata["papermill"] = {"duration": d}
    assert book.slowest_cells(nb, n=3) == "cell 1: 30.2 s, cell 3: 4.0 s, cell 0: 1.5 s"
    assert book.slowest_cells(new_notebook()) == "none"


_KILLED_PUBLISHER = """
import os, sys
from pathlib import Path
from ioi_utils import book

calls, real = [0], os.replace


def replace(src, dst):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os._exit(9)  # a hard kill: no finally, no cleanup
    real(src, dst)


os.replace = replace
book.publish([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
"""


@pytest.mark.parametrize("kill_at, after_kill", [
    (1, {"a.ipynb": b"old a", "b.ipynb": b"old b"}),  # the journal's own rename: nothing published yet
    (3, {"a.ipynb": b"new a", "b.ipynb": b"old b"}),  # between the two notebooks: a mixed book until completed
])
def test_book_run_killed_during_publication(tmp_path, monkeypatch, capsys, kill_at, after_kill) -> None:
    """A hard kill in the middle of `publish`: the next run of the book (even one that fails) leaves the target
    holding the notebooks of one run, never a mix, and no temp files."""
    root = _mini_repo(tmp_path, monkeypatch)
    target, staging = root / "book", tmp_path / "staged"
    staging.mkdir()
    for name in "ab":
        (target / f"{name}.ipynb").write_bytes(f"old {name}".encode())
        (staging / f"{name}.ipynb").write_bytes(f"new {name}".encode())
    done = subprocess.run([sys.executable, "-c", _KILLED_PUBLISHER, str(kill_at), str(target),
                           str(staging / "a.ipynb"), str(staging / "b.ipynb")],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    notebooks = lambda: {k: v for k, v in _snapshot(target).items() if k.endswith(".ipynb")}  # noqa: E731
    assert notebooks() == after_kill and any(p.name.endswith(".tmp") for p in target.iterdir())
    monkeypatch.setattr(book, "execute_chapter", _fake_executor([], fail="a"))
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 1  # the next run fails...
    out = capsys.readouterr().out
    if kill_at == 3:  # ...but first completes the publication the kill interrupted
        assert notebooks() == {"a.ipynb": b"new a", "b.ipynb": b"new b"}
        assert "completed an interrupted publication: 1 notebook(s) replaced in book/" in out
    else:
        assert notebooks() == after_kill and "interrupted publication" not in out
    assert sorted(_snapshot(target)) == ["a.ipynb", "a.py", "b.ipynb", "b.py", "notes.md"]
