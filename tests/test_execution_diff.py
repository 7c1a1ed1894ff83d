"""runner.execution_diff and `python -m ioi_utils.compare`: two executions compared by what they print."""

import json
import subprocess

import nbformat
import pytest

from ioi_utils import compare
from ioi_utils.runner import execution_diff as X


def _nb(lines: list[str], glue: dict[str, str] | None = None, table: str = "| a | b |") -> dict:
    """An executed notebook: one cell printing `lines` (stdout and a stderr line), one displaying a markdown table and
    a figure, one gluing values."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print(...)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="".join(f"{l}\n" for l in lines)),
            nbformat.v4.new_output("stream", name="stderr", text="a warning that is not a result\n")]),
        nbformat.v4.new_code_cell("display(...)", outputs=[
            nbformat.v4.new_output("display_data", data={"text/markdown": table, "text/plain": "<Markdown>"}),
            nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("glue(...)", outputs=[
            nbformat.v4.new_output("display_data", data={X.GLUE_MIME: v},
                                   metadata={"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}})
            for k, v in (glue or {}).items()]),
        nbformat.v4.new_markdown_cell("prose is not an output"),
    ]
    return json.loads(nbformat.writes(nb))


def test_printed_lines_are_stdout_text_and_glue_with_durations_masked():
    nb = _nb(["F(C)/F(M) 91.4% [87.0%, 95.2%]", "setup took 12.5 s", "trained in 4 min 05 s"], {"ld": "5.084"})
    assert X.printed_lines(nb) == ["F(C)/F(M) 91.4% [87.0%, 95.2%]", "setup took <duration>", "trained in <duration>",
                                   "| a | b |", "glue ld = 5.084"]


def test_same_prints_are_same_and_a_changed_number_is_shown():
    old = {"intro": _nb(["x 1.25"]), "summary": _nb(["y"], {"n": "3"})}
    assert X.diff_chapters(old, old) == {"intro": [], "summary": []}
    new = {"intro": _nb(["x 1.26"]), "summary": _nb(["y"], {"n": "4"}), "extra": _nb([])}
    assert X.diff_chapters(old, new) == {"intro": ["- x 1.25", "+ x 1.26"], "summary": ["- glue n = 3", "+ glue n = 4"]}


def test_relative_tolerance_compares_numbers_not_text():
    a, b = "ld 5.084073066711426 [4.1, 6.0]", "ld 5.084073066711429 [4.1, 6.0]"
    assert X.lines_differ(a, b) and not X.lines_differ(a, b, rel_tol=1e-9)
    assert X.lines_differ("ld 5.08", "ld 5.18", rel_tol=1e-3)
    assert X.lines_differ("NM 5.08", "NNM 5.08", rel_tol=0.5)  # text around the numbers must match
    assert X.diff_lines(["a 1.0000001", "b"], ["a 1.0000002", "b"], rel_tol=1e-6) == []
    assert X.diff_lines(["a 1", "b"], ["a 1", "c", "b"], rel_tol=1e-6) == ["+ c"]  # an added line stays a difference
    assert X.diff_lines(["a 1.0"], ["a 1.0000001", "extra"], rel_tol=1e-6) == ["- a 1.0", "+ a 1.0000001", "+ extra"]


def test_the_command_line_reads_folders_and_git_revisions(tmp_path, capsys):
    for name, lines in (("old", ["x 1.25"]), ("new", ["x 1.26"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "intro.ipynb").write_text(json.dumps(_nb(lines)))
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "old")]) == 0
    assert "intro: same (2 vs 2 printed lines)" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    assert "+ x 1.26" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new"), "--rel-tol", "0.01"]) == 0
    assert compare.main([str(tmp_path / "nope"), str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no folder of executed notebooks at {tmp_path / 'nope'}"
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path / "old"), str(tmp_path / "new"), "--rel-tol", "1"])

    repo = tmp_path / "repo"
    (repo / "book").mkdir(parents=True)
    committed = _nb(["x 1.25"])
    (repo / "book" / "intro.ipynb").write_text(json.dumps(committed))
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "book")
    assert X.load_execution("git:HEAD", repo) == {"intro": committed}
    with pytest.raises(FileNotFoundError, match="git ls-tree"):
        X.load_execution("git:no-such-rev", repo)
