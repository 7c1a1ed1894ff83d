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

from ioi_utils import book, profiles
from ioi_utils.runner import chapter_run, publication
from ioi_utils.storage import timings

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
    nb = publication.strip_volatile(_executed_notebook())
    assert "papermill" not in nb.metadata
    assert [c.id for c in nb.cells] == [f"cell-{i}" for i in range(4)]
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert nb.cells[2].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    nbformat.validate(nb)


def test_strip_volatile_is_idempotent() -> None:
    """Stripping twice gives the same notebook (no duplicated remove-cell tag)."""
    once = nbformat.writes(publication.strip_volatile(_executed_notebook()))
    twice = nbformat.writes(publication.strip_volatile(nbformat.reads(once, as_version=4)))
    assert once == twice


RAW_STDERR = [  # a fresh kernel's stderr: a warning from a notebook cell, a package's warning, a progress bar
    "/tmp/ipykernel_123/456.py:1: UserWarning: w\n",
    "/home/u/.venv/lib/python3.12/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n",
    "\r  0%|          | 0/9 [00:00<?, ?it/s]",
    "\r100%|##########| 9/9 [00:01<00:00, 8.12it/s]\n",
    "/home/u/repo/ioi_utils/prompts/data.py:259: UserWarning: kept 82 names\n",
]
OLDER_STDERR = ("IPYKERNEL_CELL:1: UserWarning: w\nSITE-PACKAGES/tqdm/auto.py:21: TqdmWarning: IProgress not found\n"
                "100%|##########| 9/9 [TQDM-TIME]\nioi_utils/data.py:259: UserWarning: kept 82 names\n")  # older runner


def _scrubbed(texts: list[str], plain: str = "<Foo at 0x7f00deadbeef>") -> list[str]:
    """The output texts of one cell with these stderr writes and an execute_result, as the runner stores them."""
    outputs = [new_output("stream", name="stderr", text=t) for t in texts]
    outputs.append(new_output("execute_result", data={"text/plain": plain}, execution_count=1))
    nb = publication.scrub_outputs(new_notebook(cells=[new_code_cell("x", outputs=outputs)]))
    return [o.get("text") or o["data"]["text/plain"] for o in nb.cells[0].outputs]


def test_scrub_outputs_merges_streams_drops_bars_and_writes_no_placeholder() -> None:
    """Streams merge, the progress bar goes, absolute paths shrink; temp paths and addresses stay as they are."""
    assert _scrubbed(RAW_STDERR) == [
        "/tmp/ipykernel_123/456.py:1: UserWarning: w\ntqdm/auto.py:21: TqdmWarning: IProgress not found\n"
        "ioi_utils/prompts/data.py:259: UserWarning: kept 82 names\n", "<Foo at 0x7f00deadbeef>"]
    assert _scrubbed(["\r100%|#| 9/9 [00:01<00:00, 8.12it/s]\n"]) == ["<Foo at 0x7f00deadbeef>"]  # emptied: dropped


def _nbval_sanitize(text: str) -> str:
    """What nbval compares: the text after every pair of tests/nbval_sanitize.cfg, in order."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text


def test_sanitize_cfg_compares_raw_published_and_older_outputs_equal() -> None:
    """nbval sees the same text in a fresh run (raw), a notebook the runner published, and one an older runner
    stored with placeholders; the cfg holds every pair the runner applies."""
    from nbval.plugin import get_sanitize_patterns

    cfg = get_sanitize_patterns((ROOT / "tests" / "nbval_sanitize.cfg").read_text())
    assert set(publication.PUBLISHED_CLEANUP) <= set(cfg)
    settled = "".join(RAW_STDERR).replace("\r  0%|          | 0/9 [00:00<?, ?it/s]\r", "")  # as nbval settles \r
    raw = _nbval_sanitize(settled)
    assert raw == _nbval_sanitize(_scrubbed(RAW_STDERR)[0]) == _nbval_sanitize(OLDER_STDERR)
    assert "IPYKERNEL_CELL" in raw and "9/9" not in raw


def test_profiles_share_keys() -> None:
    """Every profile defines the same parameters, and names itself."""
    keys = {name: set(params) for name, params in profiles.PROFILES.items()}
    assert set(profiles.PROFILES) == {"smoke", "offline", "paper"}
    assert len({frozenset(k) for k in keys.values()}) == 1, keys
    assert all(params["profile"] == name for name, params in profiles.PROFILES.items())
    assert [profiles.PROFILES[n]["model_name"] for n in ("smoke", "offline", "paper")] == ["smollm2-135m"] * 2 + ["gpt2"]
    assert profiles.PROFILES["smoke"]["n_prompts"] < profiles.PROFILES["offline"]["n_prompts"]


def test_unknown_profile_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits with code 2 and lists the valid profiles."""
    with pytest.raises(SystemExit) as exc:
        book.parse_args(["--profile", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(name in err for name in profiles.PROFILES)


def test_toc_order_and_chapter_selection() -> None:
    """The TOC gives root then chapters; --chapters keeps TOC order and rejects unknown names."""
    pages = book.toc_chapters(ROOT / book.TOC_FILE)
    # the summary gathers the SmolLM2 chapters' claims; the second model's chapter follows it, then the appendix
    assert pages[0] == "intro" and pages[-3:] == ["summary", "second_model", "paper"]
    chapters = book.executable_chapters(ROOT, pages)
    assert chapters == pages[:-1]  # the appendix is markdown, not executed
    assert book.select_chapters(chapters, None) == chapters
    assert book.select_chapters(chapters, ["summary", "intro"]) == ["intro", "summary"]
    with pytest.raises(ValueError, match="nope"):
        book.select_chapters(chapters, ["nope"])


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    """write_atomic produces exactly the target file."""
    target = tmp_path / "ch.ipynb"
    publication.write_atomic(publication.strip_volatile(_executed_notebook()), target)
    assert [p.name for p in tmp_path.iterdir()] == ["ch.ipynb"]
    assert nbformat.read(target, as_version=4).cells[0].id == "cell-0"


def test_attention_view_snippet_is_small_and_deterministic() -> None:
    """attention_view emits a div + CircuitsVis.render call with a content-derived id, no inlined library."""
    import torch

    from ioi_utils.report import display

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


def _fake_executor(calls: list[dict], fail: str | None = None, exc: type[BaseException] = chapter_run.ChapterFailed):
    """A stand-in for execute_chapter: writes a small notebook, or a partial one and raises for `fail`."""

    def run(src: Path, out: Path, params: dict, log: Path, on_cell=None) -> None:
        calls.append({"name": src.stem, "out": out, "params": params, "log": log})
        nb = new_notebook(cells=[new_code_cell(f"# new {src.stem}")])
        if on_cell is not None:
            on_cell(nb, nb.cells[0], 0)
        nbformat.write(nb, out)
        if src.stem == fail:
            raise exc(f"chapter '{src.stem}' failed: boom")

    return run


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("exc", [chapter_run.ChapterFailed, KeyboardInterrupt])
def test_failed_or_interrupted_run_leaves_target_untouched(tmp_path, monkeypatch, capsys, exc) -> None:
    """A chapter that fails (or Ctrl-C/SIGTERM) publishes nothing; the partial notebooks stay in staging."""
    root = _mini_repo(tmp_path, monkeypatch)
    before = _snapshot(root / "book")
    calls: list[dict] = []
    monkeypatch.setattr(chapter_run, "execute_chapter", _fake_executor(calls, fail="b", exc=exc))
    code = book.main(["--profile", "smoke", "--root", str(root), "--no-build"])
    assert code == (1 if exc is chapter_run.ChapterFailed else 130)
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
    monkeypatch.setattr(chapter_run, "execute_chapter", _fake_executor(calls))
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 0
    assert sorted(_snapshot(root / "book")) == ["a.ipynb", "a.py", "b.ipynb", "b.py", "notes.md"]  # no temp files
    assert all(nbformat.read(root / "book" / f"{n}.ipynb", as_version=4).cells[0].source == f"# new {n}" for n in "ab")
    assert not calls[0]["out"].parent.exists()
    assert [c["log"] for c in calls] == [root / "_build" / "logs" / f"{n}.log" for n in "ab"]
    out = capsys.readouterr().out
    assert "[1/2] a: running (no estimate of what is left); log: _build/logs/a.log" in out
    assert "[2/2] b: cell 1/1 at " in out and ": new b\n" in out  # the cell's progress line
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
    monkeypatch.setattr(chapter_run, "execute_chapter", _fake_executor([]))
    out_dir = tmp_path / "elsewhere" / "nbs"
    assert book.main(["--profile", "smoke", "--root", str(root), "--out-dir", str(out_dir), "--chapters", "b"]) == 0
    assert _snapshot(root / "book") == before and sorted(_snapshot(out_dir)) == ["b.ipynb"]


def test_strict_maps_to_enforce_claims(tmp_path, monkeypatch) -> None:
    """Profiles only report claims; --strict passes strict=enforce_claims=True to every chapter."""
    assert all(p["enforce_claims"] is False for p in profiles.PROFILES.values())
    params = book.chapter_parameters("smoke", False, {"model": "tiny"})
    assert params["strict"] is params["enforce_claims"] is False and params["execution_info"] == {"model": "tiny"}
    root = _mini_repo(tmp_path, monkeypatch)
    calls: list[dict] = []
    monkeypatch.setattr(chapter_run, "execute_chapter", _fake_executor(calls))
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
    assert publication.publish([staging / "a.ipynb", staging / "b.ipynb"], target) == [target / "a.ipynb", target / "b.ipynb"]
    assert _snapshot(target) == {"a.ipynb": b"new a", "b.ipynb": b"new b", "keep.txt": b"other"}


def test_estimates_and_durations() -> None:
    """Estimates need a recorded time for every remaining chapter; totals only for complete runs."""
    previous = {"a": 10.0, "b": 50.0}
    assert timings.estimate_left(previous, ["a", "b"]) == 60.0 and timings.estimate_left(previous, []) == 0.0
    assert timings.estimate_left(previous, ["a", "c"]) is None
    assert timings.previous_total({"seconds_per_chapter": previous}, ["a", "b"]) == 60.0
    assert timings.previous_total({"seconds_per_chapter": previous}, ["a", "b", "c"]) is None
    assert [timings.fmt_seconds(s) for s in (3.25, 65, 3725)] == ["3.2 s", "1 min 05 s", "1 h 02 min"]


def test_git_commit_marks_dirty_trees(tmp_path) -> None:
    """The commit is a short hash, with +dirty when the work tree has changes."""
    import subprocess

    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = timings.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{4,}", clean)
    (tmp_path / "f").write_text("2")
    assert timings.git_commit(tmp_path) == f"{clean}+dirty"


def test_log_stream_puts_output_after_a_bar_on_its_own_line() -> None:
    """Kernel output that follows a progress bar starts a new line; bar redraws do not."""
    import io

    raw = io.StringIO()
    log = chapter_run.LogStream(raw)
    for text in ("start\n", "\r 10%|#", "\r 50%|#####", "[HOLDS] x\n", "\r100%|##########|", "\n", "end\n"):
        log.write(text)
    assert raw.getvalue() == "start\n\r 10%|#\r 50%|#####\n[HOLDS] x\n\r100%|##########|\nend\n"


def test_chapter_parameter_defaults_are_the_smoke_profile() -> None:
    """Run by hand (no runner), a chapter executes the smoke profile: its parameters cell holds those values."""
    chapters = book.executable_chapters(ROOT, book.toc_chapters(ROOT / book.TOC_FILE))
    for name in chapters:
        src = (ROOT / "book" / f"{name}.py").read_text()
        cell = re.split(r'# %% tags=\[[^\]\n]*"parameters"[^\]\n]*\]\n', src, maxsplit=1)[1].split("\n# %%", 1)[0]
        values = {t.id: ast.literal_eval(node.value) for node in ast.parse(cell).body
                  for t in node.targets if isinstance(node, ast.Assign)}
        shared = {k: v for k, v in values.items() if k in profiles.PROFILES["smoke"]}
        assert shared == {k: profiles.PROFILES["smoke"][k] for k in shared}, name
        assert {"profile", "model_name"} <= set(shared), name


def test_slowest_cells_names_the_longest_cells_first() -> None:
    """The log's closing line lists the cells by papermill duration, longest first, cells without one as 0."""
    nb = new_notebook(cells=[new_code_cell("a"), new_code_cell("b"), new_markdown_cell("m"), new_code_cell("c")])
    for cell, d in zip(nb.cells, (1.5, 30.25, None, 4.0)):
        if d is not None:
            cell.metadata["papermill"] = {"duration": d}
    assert chapter_run.slowest_cells(nb, n=3) == "cell 1: 30.2 s, cell 3: 4.0 s, cell 0: 1.5 s"
    assert chapter_run.slowest_cells(new_notebook()) == "none"


# ---------------------------------------------------------------- progress in the terminal, first-run estimates


def _timed_notebook(profile: str = "smoke", model: str = "smollm2-135m", seconds: float = 30.0) -> dict:
    """A published notebook's JSON with the runner's timing metadata (two code cells of 10 and 20 s)."""
    nb = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("a = 1"), new_code_cell("b = 2")])
    nb.metadata[timings.TIMING_KEY] = {"profile": profile, "model": model, "commit": "abc1234", "seconds": seconds,
                                    "cell_seconds": [10.0, 20.0]}
    return nb


def test_timing_of_keeps_the_chapter_and_cell_times() -> None:
    """The published notebook keeps profile, model, commit, the chapter's seconds and each code cell's."""
    nb = _executed_notebook()
    timing = timings.timing_of(nb, {"profile": "smoke", "model_name": "tiny", "execution_info": {"commit": "c0ffee"}})
    assert timing == {"profile": "smoke", "model": "tiny", "commit": "c0ffee", "seconds": 1.2,
                      "cell_seconds": [0.1, 0.1, 0.1]}
    assert timings.published_timing(Path("/nonexistent"), "a", "smoke", "tiny") is None


@pytest.mark.parametrize("profile, model, expected", [
    ("smoke", "smollm2-135m", "running (about 1 min 00 s left by the published execution (abc1234))"),
    ("offline", "smollm2-135m", "running (no estimate of what is left)"),  # another profile's times
    ("smoke", "gpt2", "running (no estimate of what is left)"),  # another model's
])
def test_first_run_estimates_from_the_published_execution(tmp_path, monkeypatch, capsys, profile, model,
                                                          expected) -> None:
    """Without a record of an earlier run, the published notebooks' own times (same profile and model) give the
    estimate and the cells' published times; a record of an earlier run takes precedence."""
    root = _mini_repo(tmp_path, monkeypatch)
    for name in "ab":
        nbformat.write(_timed_notebook(profile, model), root / "book" / f"{name}.ipynb")
    seen: list = []
    monkeypatch.setattr(chapter_run, "execute_chapter", lambda src, out, params, log, on_cell=None: (
        seen.append(on_cell), _fake_executor([])(src, out, params, log)))
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 0
    assert f"[1/2] a: {expected}" in capsys.readouterr().out
    assert seen[0].hints == ([10.0, 20.0] if expected.startswith("running (about") else None)
    for name in "ab":  # the fake run published notebooks without timing; the record now holds this run's
        nbformat.write(_timed_notebook(), root / "book" / f"{name}.ipynb")
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 0
    assert "[1/2] a: running (about " in (out := capsys.readouterr().out) and "published execution" not in out


def test_cell_progress_names_code_cells_by_their_first_comment() -> None:
    """One line per code cell: k/n over all code cells, elapsed, the published time if the cells match, the title;
    parameters cells are counted but not shown."""
    import io

    nb = new_notebook(cells=[
        new_code_cell("seed = 0", metadata={"tags": ["parameters"]}), new_markdown_cell("text"),
        new_code_cell("x = 1\n# stability selection: admission on halves\ny = 2"),
        new_code_cell("print('a very long first line ' + 'of code without any comment in it at all, cut')")])
    out = io.StringIO()
    progress = chapter_run.CellProgress("[2/7] circuit_discovery", hints=[0.1, 400.0, 2.0], out=out)
    for index, cell in enumerate(nb.cells):
        progress(nb, cell, index)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[2/7] circuit_discovery: cell 2/3 at ")
    assert lines[0].endswith(" (published run: 6 min 40 s): stability selection: admission on halves")
    assert lines[1].endswith("): print('a very long first line ' + 'of code without any comment in it at…")
    progress.hints = [1.0]  # the chapter changed since: no published times
    progress(nb, nb.cells[2], 2)
    assert "published run" not in out.getvalue().splitlines()[-1]


def test_reporting_engine_calls_on_cell_as_each_cell_starts(monkeypatch) -> None:
    """The registered papermill engine wraps the execution manager's cell_start (no kernel: nbclient is faked)."""
    from papermill.engines import NBClientEngine, papermill_engines

    def fake_execute(cls, nb_man, kernel_name, **kwargs):
        for index, cell in enumerate(nb_man.nb.cells):
            nb_man.cell_start(cell, index)
            nb_man.cell_complete(cell, cell_index=index)
        return nb_man.nb

    monkeypatch.setattr(NBClientEngine, "execute_managed_notebook", classmethod(fake_execute))
    nb = new_notebook(cells=[new_code_cell("a = 1"), new_markdown_cell("m"), new_code_cell("b = 2")])
    nb.metadata["papermill"] = {}
    for cell in nb.cells:
        cell.metadata["papermill"] = {}  # as papermill's prepare_notebook_metadata leaves them
    seen: list = []
    papermill_engines.execute_notebook_with_engine(chapter_run.register_engine(), nb, kernel_name=chapter_run.KERNEL,
                                                   progress_bar=False, on_cell=lambda nb, c, i: seen.append(i))
    assert seen == [0, 1, 2] and chapter_run.register_engine() == chapter_run.register_engine()


@pytest.mark.slow
def test_execute_chapter_reports_cells_and_stores_times(tmp_path) -> None:
    """With a real kernel (a few seconds): progress for each code cell, times in the published notebook."""
    src = tmp_path / "ch.py"
    src.write_text('# %% tags=["parameters"]\nprofile = "smoke"\n\n# %%\n# first step\nx = 1\n\n# %%\nprint(x)\n')
    seen: list = []
    chapter_run.execute_chapter(src, tmp_path / "ch.ipynb", {"profile": "smoke", "model_name": "tiny"}, tmp_path / "ch.log",
                         on_cell=lambda nb, cell, index: seen.append(chapter_run.cell_title(cell)))
    assert seen == ["profile = \"smoke\"", "Parameters", "first step", "print(x)"]
    timing = nbformat.read(tmp_path / "ch.ipynb", as_version=4).metadata[timings.TIMING_KEY]
    assert timing["profile"] == "smoke" and len(timing["cell_seconds"]) == 4 and timing["seconds"] > 0


_KILLED_PUBLISHER = """
import os, sys
from pathlib import Path
from ioi_utils.runner import publication

calls, real = [0], os.replace


def replace(src, dst):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os._exit(9)  # a hard kill: no finally, no cleanup
    real(src, dst)


os.replace = replace
publication.publish([Path(p) for p in sys.argv[3:]], Path(sys.argv[2]))
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
    monkeypatch.setattr(chapter_run, "execute_chapter", _fake_executor([], fail="a"))
    assert book.main(["--profile", "smoke", "--root", str(root), "--no-build"]) == 1  # the next run fails...
    out = capsys.readouterr().out
    if kill_at == 3:  # ...but first completes the publication the kill interrupted
        assert notebooks() == {"a.ipynb": b"new a", "b.ipynb": b"new b"}
        assert "completed an interrupted publication: 1 notebook(s) replaced in book/" in out
    else:
        assert notebooks() == after_kill and "interrupted publication" not in out
    assert sorted(_snapshot(target)) == ["a.ipynb", "a.py", "b.ipynb", "b.py", "notes.md"]
