"""The paper's headline numbers (with where each comes from) and the side-by-side table of the summary chapter."""

from __future__ import annotations

import math
from typing import Any

SECOND_HAND = "second-hand reading"
# Everything the summary says about the paper (Chhabra, Zhu & Khalili 2025), each with its source. We have
# only second-hand readings of the paper. It studies GPT-2 small and states no optimizer, learning rate,
# weight decay, batch size or dataset size.
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


def _fmt(x: Any, pct: bool = False) -> str:
    """A number for the table."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def _missing(*xs: Any) -> bool:
    """Whether any value is absent or nan."""
    return any(x is None or (isinstance(x, float) and math.isnan(x)) for x in xs)


def verdict(ours: float | None, ok: bool, partly: bool) -> str:
    """reproduced / partly / not reproduced / not measured."""
    if _missing(ours):
        return "not measured"
    return "reproduced" if ok else "partly" if partly else "not reproduced"


def _row(claim: str, paper: dict[str, Any], ours: str, verdict_: str) -> dict[str, str]:
    """One table row."""
    return {"claim": claim, "paper": paper["text"], "source": paper["source"], "ours": ours, "verdict": verdict_}


def table(res: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Rows (claim, paper, source, ours, verdict) from the numbers the chapters recorded."""
    cd, amp, cor, neu = (res.get(k, {}) for k in ("circuit_discovery", "amplification", "corruption", "neuroplasticity"))
    rows = []
    f0 = cd.get("faithfulness")
    rows.append(_row("base circuit faithfulness F(C)/F(M) (the paper's base value is not known to us)", WANG_FAITHFULNESS,
                     _fmt(f0, True), verdict(f0, not _missing(f0) and f0 >= 0.8, not _missing(f0) and f0 >= 0.5)))
    f1 = amp.get("faithfulness_last")
    rows.append(_row("faithfulness after clean fine-tuning (our last epoch)", PAPER["clean_faithfulness"], _fmt(f1, True),
                     verdict(f1, not _missing(f1) and f1 >= 0.9, not _missing(f1) and f1 >= 0.7)))
    ld1, ldn = amp.get("logit_diff_first"), amp.get("logit_diff_last")  # what the verdict compares: epoch 1 -> last
    up = not _missing(ld1, ldn) and ldn > ld1
    rows.append(_row("clean fine-tuning raises the logit difference (epoch 1 -> last epoch)", PAPER["clean_logit_diff"],
                     f"{_fmt(ld1)} -> {_fmt(ldn)}", verdict(None if _missing(ld1) else ldn, up, False)))
    sd0, sd1 = cor.get("sd_logit_diff_base"), cor.get("sd_logit_diff_last")
    ok = not _missing(sd0, sd1)
    rows.append(_row("Subject Duplication flips the logit difference (base -> last toxic epoch)", PAPER["sd_logit_diff"],
                     f"{_fmt(sd0)} -> {_fmt(sd1)}", verdict(None if _missing(sd0) else sd1, ok and sd0 > 0 > sd1,
                                                          ok and sd1 < sd0 - 0.5)))
    gs = amp.get("gain_share_circuit")
    rows.append(_row("the base circuit's heads carry the fine-tuning gain (CMAP gain share, fine-tuned -> base)",
                     {"text": "amplification of the existing circuit", "source": f"§4.1 ({SECOND_HAND})"}, _fmt(gs, True),
                     verdict(gs, not _missing(gs) and gs >= 0.5, not _missing(gs) and gs >= 0.25)))
    loc, ctrl = cor.get("localization"), cor.get("localization_control_p95")
    beats = not _missing(loc) and (_missing(ctrl) or loc > ctrl)  # records without the control: judged on loc alone
    rows.append(_row("corruption is localized to circuit heads (share of |CMAP effect| in the circuit / share of heads)",
                     PAPER["corruption_localized"], _fmt(loc) + ("" if _missing(ctrl) else f" (control p95 {_fmt(ctrl)})"),
                     verdict(loc, beats and loc >= 2, not _missing(loc) and loc > 1)))
    for rule, name in (("name-moving", "Name Moving"), ("subject-duplication", "Subject Duplication")):
        fr = neu.get(f"faithfulness_{rule}")
        paper = dict(PAPER["reversal_faithfulness"], text=_fmt(PAPER["reversal_faithfulness"]["value"][rule], True))
        rows.append(_row(f"faithfulness recovered by clean retraining after {name}", paper, _fmt(fr, True),
                         verdict(fr, not _missing(fr) and fr >= 0.85, not _missing(fr) and fr >= 0.6)))
    rs = neu.get("recovered_share_subject-duplication")
    rows.append(_row("heads corrupted by Subject Duplication recover their DLA after retraining (share)",
                     {"text": "the original mechanism comes back", "source": f"§5 ({SECOND_HAND})"}, _fmt(rs, True),
                     verdict(rs, not _missing(rs) and rs >= 0.5, not _missing(rs) and rs > 0)))
    j0, j1 = neu.get("overlap_corrupted_subject-duplication"), neu.get("overlap_subject-duplication")
    rows.append(_row("the re-discovered circuit returns to the base circuit after Subject Duplication (Jaccard, corrupted "
                     "-> retrained)", {"text": "the original circuit is recovered", "source": f"§5 ({SECOND_HAND})"},
                     f"{_fmt(j0)} -> {_fmt(j1)}", verdict(None if _missing(j0) else j1, not _missing(j0, j1) and j1 >= j0 + 0.1
                                                          and j1 >= 0.5, not _missing(j0, j1) and j1 > j0)))
    mlp = cd.get("worst_mlp")
    rows.append(_row("an MLP is essential to the task", {"text": "not stated (MLP0 in Wang et al.)", "source": "-"},
                     "n/a" if mlp is None else f"MLP {mlp}", "see chapter 2"))
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    """A markdown table."""
    head = "| claim | paper | source | ours | verdict |\n|---|---|---|---|---|\n"
    return head + "\n".join(f"| {r['claim']} | {r['paper']} | {r['source']} | {r['ours']} | {r['verdict']} |" for r in rows)
