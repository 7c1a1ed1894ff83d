"""The paper's headline numbers (with where each comes from) and the summary chapter's one table of claims.

The chapters state every claim with `claims.check(..., paper=...)`, taking the paper's words from `PAPER`; the
summary is built only from those records (`claim_rows`), one row per claim with the chapter's own verdict.
"""

from __future__ import annotations

import math
from typing import Any

SECOND_HAND = "second-hand reading"
# Everything the summary says about the paper (Chhabra, Zhu & Khalili 2025), each with its source. We have
# only second-hand readings of the paper. It studies GPT-2 small; a summary of it states 6,360 training prompts,
# learning rate 1e-5 and weight decay 0.1 (book/paper.md), and no optimizer or batch size.
PAPER: dict[str, dict[str, Any]] = {
    "clean_faithfulness": {"value": (0.984, 0.999), "text": "98.4-99.9% across 1-100 epochs",
                           "source": f"Table 1, clean fine-tuning, epochs 1-100, no per-epoch value ({SECOND_HAND})"},
    "clean_logit_diff": {"value": (6.32, 26.83), "text": "6.32 -> 26.83 (epoch 1 -> 100)",
                         "source": f"Table 1, clean fine-tuning ({SECOND_HAND})"},
    "clean_sparsity": {"value": (0.0192, 0.0268), "text": "1.92% -> 2.68% of components",
                       "source": f"Table 1, clean fine-tuning ({SECOND_HAND})"},
    "l10h10_attribution": {"value": (0.4, 1.8), "text": "L10H10 logit attribution 0.4 -> 1.8",
                           "source": f"§4.1 ({SECOND_HAND})"},
    "sd_logit_diff": {"value": (3.55, -11.06), "text": "3.55 -> -11.06 (5 epochs)", "source": f"§4.2 ({SECOND_HAND})"},
    "sd_mechanism": {"value": None, "text": "L9H9 flips sign; Negative Name Movers flip to suppress S",
                     "source": f"§4.2 ({SECOND_HAND})"},
    "corruption_localized": {"value": None, "text": "localized to circuit components, with a few additional components",
                             "source": f"Figure 11 caption ({SECOND_HAND})"},
    "reversal_faithfulness": {"value": {"name-moving": 0.95, "subject-duplication": 0.96},
                              "text": "95% (Name Moving -> clean), 96% (Subject Duplication -> clean)",
                              "source": f"§5 ({SECOND_HAND})"},
}
# Not the paper's: Wang et al. (2022)'s faithfulness of their IOI circuit in GPT-2 small.
WANG_FAITHFULNESS = {"value": 0.87, "text": "87% (Wang et al., GPT-2 small)", "source": "Wang et al. 2022, not this paper"}


CHAPTERS = ("intro", "circuit_discovery", "amplification", "corruption", "neuroplasticity", "greater_than")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not testable")


def _fmt(x: Any) -> str:
    """A number for the table (3 significant digits; n/a for a missing value)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}"


def claim_rows(recorded: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per claim the chapters checked, in chapter order, built only from their claim records: chapter,
    claim, the paper's value as the chapter stated it, ours with its interval, the threshold and the verdict."""
    rows = []
    for chapter in CHAPTERS:
        for statement, c in recorded.get(chapter, {}).get("claims", {}).items():
            interval = "" if not c["interval"] else f" [{_fmt(c['interval'][0])}, {_fmt(c['interval'][1])}]"
            seeds = c.get("per_seed") or {}
            each = "" if not seeds else " (seeds " + ", ".join(f"{k}: {_fmt(v)}" for k, v in seeds.items()) + ")"
            rows.append({"chapter": chapter, "claim": statement, "paper": c["paper"] or "-",
                         "ours": f"{_fmt(c['ours'])}{interval}{each}", "training": c.get("training") or "-",
                         "threshold": f"{'≥' if c['direction'] == '>=' else '≤'} {_fmt(c['threshold'])}",
                         "verdict": c["verdict"]})
    return rows


def counts(rows: list[dict[str, str]]) -> dict[str, int]:
    """How many claims have each verdict."""
    return {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}


def markdown(rows: list[dict[str, str]]) -> str:
    """The claims as a markdown table (a literal | inside a cell is escaped)."""
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    head = ("| chapter | claim | paper | ours [95% interval] | training (ours vs the paper's) | threshold | verdict |\n"
            "|---|---|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['chapter']} | {cell(r['claim'])} | {cell(r['paper'])} | {r['ours']} "
                            f"| {cell(r.get('training', '-'))} | {r['threshold']} | **{r['verdict']}** |" for r in rows)
