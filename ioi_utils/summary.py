"""The paper's headline numbers and the side-by-side table of the summary chapter."""

from __future__ import annotations

import math
from typing import Any

# The paper's numbers as reported second-hand (see the summary chapter for sources and caveats).
PAPER = {
    "base_faithfulness": 0.87,  # Wang et al.'s circuit in GPT-2 small, F(C)/F(M)
    "clean_faithfulness_late": 0.9989,  # after 25 epochs of clean fine-tuning
    "sd_logit_diff_before": 3.55,  # Subject Duplication, before toxic fine-tuning
    "sd_logit_diff_after": -11.06,  # after 5 epochs
    "reversal_faithfulness": (0.95, 0.96),  # Name Moving and Subject Duplication reversals
}


def _fmt(x: Any, pct: bool = False) -> str:
    """A number for the table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def verdict(ours: float | None, ok: bool, partly: bool) -> str:
    """reproduced / partly / not reproduced / not measured."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return "not measured"
    return "reproduced" if ok else "partly" if partly else "not reproduced"


def table(res: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Rows (claim, paper, ours, verdict) from the numbers the chapters recorded."""
    cd, amp, cor, neu = (res.get(k, {}) for k in ("circuit_discovery", "amplification", "corruption", "neuroplasticity"))
    rows = []
    f0 = cd.get("faithfulness")
    rows.append({"claim": "base circuit faithfulness F(C)/F(M)", "paper": _fmt(PAPER["base_faithfulness"], True),
                 "ours": _fmt(f0, True), "verdict": verdict(f0, f0 is not None and f0 >= 0.8, f0 is not None and f0 >= 0.5)})
    f1, ld0, ld1 = amp.get("faithfulness_last"), amp.get("logit_diff_first"), amp.get("logit_diff_last")
    rows.append({"claim": "faithfulness after clean fine-tuning (last epoch)", "paper": _fmt(PAPER["clean_faithfulness_late"], True),
                 "ours": _fmt(f1, True), "verdict": verdict(f1, f1 is not None and f1 >= 0.9, f1 is not None and f1 >= 0.7)})
    up = ld0 is not None and ld1 is not None and ld1 > ld0
    rows.append({"claim": "clean fine-tuning raises the logit difference", "paper": "6.32 -> 26.83 (1 -> 100 epochs)",
                 "ours": f"{_fmt(amp.get('logit_diff_base'))} -> {_fmt(ld1)}", "verdict": verdict(ld1, up, False)})
    sd0, sd1 = cor.get("sd_logit_diff_base"), cor.get("sd_logit_diff_last")
    rows.append({"claim": "Subject Duplication flips the logit difference", "paper": "3.55 -> -11.06 (5 epochs)",
                 "ours": f"{_fmt(sd0)} -> {_fmt(sd1)}", "verdict": verdict(sd1, sd1 is not None and sd0 is not None and sd0 > 0 > sd1,
                                    sd1 is not None and sd0 is not None and sd1 < sd0 - 0.5)})
    loc = cor.get("localization")
    rows.append({"claim": "corruption is localized to circuit heads (share of CMAP effect in the circuit / share of heads)",
                 "paper": "localized (Fig. 11)", "ours": _fmt(loc), "verdict": verdict(loc, loc is not None and loc >= 2, loc is not None and loc > 1)})
    for rule in ("name-moving", "subject-duplication"):
        fr = neu.get(f"faithfulness_{rule}")
        paper = PAPER["reversal_faithfulness"][0 if rule == "name-moving" else 1]
        rows.append({"claim": f"recovered faithfulness after reversal of {rule}", "paper": _fmt(paper, True),
                     "ours": _fmt(fr, True), "verdict": verdict(fr, fr is not None and fr >= 0.85, fr is not None and fr >= 0.6)})
    mlp = cd.get("worst_mlp")
    rows.append({"claim": "an MLP is essential to the task", "paper": "not stated (MLP0 in Wang et al.)",
                 "ours": "n/a" if mlp is None else f"MLP {mlp}", "verdict": "see chapter 2"})
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    """A markdown table."""
    head = "| claim | paper | ours | verdict |\n|---|---|---|---|\n"
    return head + "\n".join(f"| {r['claim']} | {r['paper']} | {r['ours']} | {r['verdict']} |" for r in rows)
