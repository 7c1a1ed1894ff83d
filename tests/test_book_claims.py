"""The summary of an executed book says what its chapters said: every claim a chapter printed appears in the
summary's table once, with the same verdict, and the table holds no claim that no chapter printed. Checked on
the published offline notebooks (book/) and on the smoke references (tests/notebooks/)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ioi_utils.report import claims, summary

REPO = Path(__file__).resolve().parent.parent
# the intro's two checks are of the base model's behaviour (preconditions of the study, not claims of the paper):
# printed, not recorded, so the summary leaves them out
NOT_SUMMARISED = {"intro"}
VERDICT_LINE = re.compile(r"^\[(REPRODUCED|NOT REPRODUCED|INCONCLUSIVE|NOT TESTABLE)\] (.*?) — ", re.M)


def _texts(nb: dict) -> list[str]:
    out = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if "text" in o:
                out.append("".join(o["text"]))
            elif "text/markdown" in o.get("data", {}):
                out.append("".join(o["data"]["text/markdown"]))
    return out


def printed_claims(folder: Path) -> dict[str, dict[str, str]]:
    """chapter -> {statement: verdict} of every claim line a chapter of the summary printed."""
    found = {}
    for chapter in summary.CHAPTERS:
        if chapter in NOT_SUMMARISED:
            continue
        path = folder / f"{chapter}.ipynb"
        if path.exists():
            text = "\n".join(_texts(json.loads(path.read_text())))
            found[chapter] = {m.group(2): m.group(1).lower() for m in VERDICT_LINE.finditer(text)}
    return found


def summary_rows(folder: Path) -> list[tuple[str, str, str]]:
    """(chapter, claim, verdict) of each row of the summary notebook's claims table."""
    rows = []
    for text in _texts(json.loads((folder / "summary.ipynb").read_text())):
        for line in text.splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if len(cells) == 7 and cells[0] in summary.CHAPTERS:
                rows.append((cells[0], cells[1].replace("\\|", "|"), cells[6].strip("*")))
    return rows


@pytest.mark.parametrize("folder", ["book", "tests/notebooks"])
def test_the_summary_table_is_the_chapters_printed_verdicts(folder):
    root = REPO / folder
    if not (root / "summary.ipynb").exists():
        pytest.skip(f"no executed summary in {folder}")
    printed = printed_claims(root)
    rows = summary_rows(root)
    if not rows:
        pytest.skip(f"{folder}/summary.ipynb predates the one-table summary")
    table = {(c, s): v for c, s, v in rows}
    assert len(table) == len(rows), "a claim appears twice in the summary"
    want = {(c, s): v for c, claims_ in printed.items() for s, v in claims_.items()}
    assert set(table.values()) <= set(summary.VERDICTS)
    assert table == want


def test_the_parser_reads_a_claim_line_and_a_table_row():
    line = str(claims.Claim("a | b", "p", 1.0, None, 0.5, ">=", claims.REPRODUCED, "ours: 1"))
    assert VERDICT_LINE.search(line).groups() == ("REPRODUCED", "a | b")
    row = {"chapter": "amplification", "claim": "a | b", "paper": "p", "ours": "1", "training": "-",
           "threshold": "≥ 0.5", "verdict": claims.REPRODUCED}
    text = summary.markdown([row])
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", text.splitlines()[-1])[1:-1]]
    assert (cells[0], cells[1].replace("\\|", "|"), cells[6].strip("*")) == ("amplification", "a | b", "reproduced")
