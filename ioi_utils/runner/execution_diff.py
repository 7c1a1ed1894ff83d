"""Two executions of the book compared by what they print: did a rerun reproduce the published numbers?

An executed chapter is a notebook whose outputs hold every number the book states: the lines its cells print
(stdout), the tables and text they display (markdown or plain text; figures and HTML widgets are left out), and
the values glued into the prose (myst-nb `glue`, stored as `application/papermill.record/text/plain`). This
module reads those as lines, per chapter,

* ``printed_lines(nb)``: the printed lines of one notebook, glue values as ``glue <name> = <value>``;
* ``lines_differ(a, b, rel_tol)``: two lines equal in their text and, number by number, within a relative
  tolerance (0: exactly; a rerun on other hardware changes the last digits of full-precision glue values);
* ``diff_chapters(old, new, rel_tol)``: per chapter present in both, the lines only one side prints, in order;

and ``load_execution`` reads an execution: a folder of executed notebooks (the published ``book/``, a
``--out-dir`` of ``python -m ioi_utils.book``) or ``git:REV``, the book committed at a revision. Durations
("12.3 s", "4 min 05 s") are written as ``<duration>`` first: they are the machine's, not results. The command
line is ``python -m ioi_utils.compare OLD NEW``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

GLUE_MIME = "application/papermill.record/text/plain"
_DURATION = re.compile(r"\b\d+(?:\.\d+)?\s?(?:h|min|s|ms)\b(?:\s\d+(?:\.\d+)?\s?(?:min|s)\b)*")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def printed_lines(nb: dict[str, Any]) -> list[str]:
    """The lines a notebook's code cells print, display as text, and glue (stderr and images left out)."""
    out: list[str] = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                out += _text(o.get("text", "")).splitlines()
            elif o.get("output_type") in ("execute_result", "display_data"):
                data, name = o.get("data", {}), o.get("metadata", {}).get("scrapbook", {}).get("name")
                if name is not None and GLUE_MIME in data:
                    out.append(f"glue {name} = {_text(data[GLUE_MIME])}")
                elif "text/markdown" in data:
                    out += _text(data["text/markdown"]).splitlines()
                elif "text/plain" in data and not {"image/png", "text/html"} & set(data):
                    out += _text(data["text/plain"]).splitlines()
    return [_DURATION.sub("<duration>", line) for line in out]


def _text(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def lines_differ(a: str, b: str, rel_tol: float = 0.0) -> bool:
    """True unless the two lines have the same text around their numbers and each pair of numbers agrees to
    `rel_tol` (relative to the larger magnitude; 0 compares the printed digits exactly)."""
    if rel_tol == 0.0 or a == b:
        return a != b
    if _NUMBER.split(a) != _NUMBER.split(b):
        return True
    xs, ys = _NUMBER.findall(a), _NUMBER.findall(b)
    return len(xs) != len(ys) or any(not math.isclose(float(x), float(y), rel_tol=rel_tol) for x, y in zip(xs, ys))


def diff_lines(old: list[str], new: list[str], rel_tol: float = 0.0) -> list[str]:
    """The lines only one side prints ("- old", "+ new"), in order; pairs equal within rel_tol are dropped."""
    out: list[str] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        a, b = old[i1:i2], new[j1:j2]
        if op == "replace" and len(a) == len(b) and not any(lines_differ(x, y, rel_tol) for x, y in zip(a, b)):
            continue
        out += [f"- {x}" for x in a] + [f"+ {y}" for y in b]
    return out


def diff_chapters(old: dict[str, dict], new: dict[str, dict], rel_tol: float = 0.0) -> dict[str, list[str]]:
    """chapter -> the printed lines that differ, for every chapter in both executions."""
    return {ch: diff_lines(printed_lines(old[ch]), printed_lines(new[ch]), rel_tol) for ch in sorted(set(old) & set(new))}


def load_execution(where: str, root: Path | None = None) -> dict[str, dict]:
    """chapter -> notebook, from a folder of executed notebooks or `git:REV` (book/*.ipynb at that revision)."""
    if where.startswith("git:"):
        rev, root = where[4:], root or Path.cwd()
        listing = _git(root, "ls-tree", "--name-only", rev, "book/")
        names = [n for n in listing.splitlines() if n.endswith(".ipynb")]
        return {Path(n).stem: json.loads(_git(root, "show", f"{rev}:{n}")) for n in names}
    folder = Path(where)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder of executed notebooks at {folder}")
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.ipynb"))}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise FileNotFoundError(f"git {' '.join(args)}: {done.stderr.strip() or 'failed'}")
    return done.stdout
