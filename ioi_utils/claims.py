"""Claims made in the book, checked by the execution that makes them."""

from __future__ import annotations

from dataclasses import dataclass


class ClaimFailed(AssertionError):
    """A claim of the book does not hold in this execution."""


@dataclass(frozen=True)
class Claim:
    """A statement, whether it holds here, and the evidence."""

    statement: str
    holds: bool
    evidence: str

    def __str__(self) -> str:
        mark = "HOLDS" if self.holds else "DOES NOT HOLD"
        return f"[{mark}] {self.statement} ({self.evidence})"


def check(statement: str, holds: bool, evidence: str = "", enforce: bool = True) -> None:
    """Print a claim's verdict; raise ClaimFailed if it does not hold and is enforced."""
    claim = Claim(statement, bool(holds), evidence)
    print(claim)
    if enforce and not claim.holds:
        raise ClaimFailed(str(claim))
