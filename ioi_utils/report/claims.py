"""Claims made in the book, checked by the execution that makes them, with a three-way verdict.

A claim compares our value (and, where we have one, its bootstrap interval) with a threshold:
"reproduced" when the whole interval is on the claimed side, "not reproduced" when it is wholly on the
other side, "inconclusive" when the interval straddles the threshold, and "not testable" when a precondition
fails (e.g. F(M) > 0 before a ratio F(C)/F(M) means anything; a role the claim is about is absent).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = "reproduced", "not reproduced", "inconclusive", "not testable"
DIRECTIONS = (">=", "<=")


class ClaimFailed(AssertionError):
    """A claim of the book is not reproduced in this execution."""


@dataclass(frozen=True)
class Claim:
    """A statement, the paper's value, ours (with its interval), the threshold, the verdict and why."""

    statement: str
    paper: str
    ours: float
    interval: tuple[float, float] | None
    threshold: float
    direction: str
    verdict: str
    evidence: str

    def __str__(self) -> str:
        paper = f"paper: {self.paper}; " if self.paper else ""
        return f"[{self.verdict.upper()}] {self.statement} — {paper}{self.evidence}"


def _fmt(x: float) -> str:
    """A number for a claim line."""
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def _side(x: float, threshold: float, direction: str) -> bool:
    """Whether x is on the claimed side of the threshold."""
    return x >= threshold if direction == ">=" else x <= threshold


def verdict_of(ours: float, interval: tuple[float, float] | None, threshold: float, direction: str) -> str:
    """reproduced / not reproduced / inconclusive from a point value or an interval (nan: not reproduced)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    lo, hi = (ours, ours) if interval is None else (min(interval), max(interval))
    if any(math.isnan(float(x)) for x in (ours, lo, hi)):
        return NOT_REPRODUCED
    ok_lo, ok_hi = _side(lo, threshold, direction), _side(hi, threshold, direction)
    return REPRODUCED if ok_lo and ok_hi else NOT_REPRODUCED if not (ok_lo or ok_hi) else INCONCLUSIVE


def check(statement: str, ours: float, interval: tuple[float, float] | None, threshold: float, direction: str,
          paper: str = "", precondition: tuple[bool, str] | None = None, enforce: bool = False,
          record: dict | None = None, per_seed: dict[int, float] | None = None, training: str = "") -> Claim:
    """Judge a claim, print one line, store it in `record[statement]` if given; raise ClaimFailed if enforced
    and not reproduced. A claim measured over training seeds passes `per_seed` (seed -> value; ours is their
    mean, the interval the seeds.across_seeds one) and `training`, the amount of training beside the paper's."""
    ours = float(ours)
    interval = None if interval is None else (float(interval[0]), float(interval[1]))
    verdict = verdict_of(ours, interval, threshold, direction)
    evidence = f"ours: {_fmt(ours)}" + ("" if interval is None else f" [{_fmt(interval[0])}, {_fmt(interval[1])}]")
    if per_seed:
        evidence += f" (mean of {len(per_seed)} training seed{'s' * (len(per_seed) != 1)}: " + ", ".join(
            f"{_fmt(float(v))}" for v in per_seed.values()) + ")"
    evidence += f" vs threshold {'≥' if direction == '>=' else '≤'} {_fmt(threshold)}"
    if training:
        evidence += f"; training: {training}"
    if precondition is not None and not precondition[0]:
        verdict, evidence = NOT_TESTABLE, f"{evidence}; precondition failed: {precondition[1]}"
    claim = Claim(statement, paper, ours, interval, float(threshold), direction, verdict, evidence)
    print(claim)
    if record is not None:
        record[statement] = {"paper": paper, "ours": ours, "interval": interval, "threshold": float(threshold),
                             "direction": direction, "verdict": verdict, "evidence": evidence,
                             "per_seed": None if not per_seed else {str(k): float(v) for k, v in per_seed.items()},
                             "training": training}
    if enforce and verdict == NOT_REPRODUCED:
        raise ClaimFailed(str(claim))
    return claim


# a printed claim line (Claim.__str__): "[VERDICT] statement — paper: ...; ours: x [lo, hi] ..." (paper optional)
_LINE = re.compile(r"^\[(?P<verdict>REPRODUCED|NOT REPRODUCED|INCONCLUSIVE|NOT TESTABLE)\] (?P<statement>.*?) — "
                   r"(?:paper: (?P<paper>.*?); )?(?P<evidence>ours: (?P<ours>[^\s\[]+)"
                   r"(?: \[(?P<lo>[^,\]]+), (?P<hi>[^\]]+)\])?.*)$", re.M)


def parse_lines(text: str) -> dict[str, dict[str, Any]]:
    """The claim lines printed in `text`, read back: statement -> {verdict, paper, ours, interval, evidence}.

    The inverse of `check`'s printed line, at its printed precision (3 significant digits): for reading the
    verdicts of an executed notebook whose records are not at hand. Lines that are not claim lines are skipped."""
    found = {}
    for m in _LINE.finditer(text):
        interval = None if m["lo"] is None else (float(m["lo"]), float(m["hi"]))
        found[m["statement"]] = {"verdict": m["verdict"].lower(), "paper": m["paper"] or "", "ours": float(m["ours"]),
                                 "interval": interval, "evidence": m["evidence"]}
    return found
