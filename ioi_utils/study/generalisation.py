"""Does it generalise? The paper's headline experiments on a second model, beside the book's main model.

The paper studies one model, GPT-2 small. Its findings are statements about *a* circuit: fine-tuning on the
task amplifies it, a toxic dataset corrupts it, clean retraining restores it. Whether they hold for another
architecture (or for a base model rather than an instruction-tuned one) is an empirical question, so this
module runs the three headline experiments on any model with the code, statistics and thresholds the chapters
use for the main model:

1. **the base circuit** (`circuits.discover`): the share of its heads that no role explains, and its
   faithfulness F(C)/F(M) on held-out prompts with a bootstrap interval;
2. **amplification**: clean fine-tuning repeated over training seeds; the relative gain of the held-out logit
   difference after the last epoch, mean over seeds with a two-level bootstrap interval (`seeds.across_seeds`);
3. **corruption and neuroplasticity**: Subject Duplication over the same seeds (held-out logit difference after
   it; <= 0 means the model now prefers S), then clean retraining of each corrupted run, judged against its
   control, the clean run of the same seed after the same number of epochs (retrained / control);
4. **the paper's head-level claims** (`head_level`): the base circuit's Name Movers and Negative Name Movers in the
   base model, after clean fine-tuning and after Subject Duplication (the first seed's runs, as the main model's
   chapters read theirs): END->IO attention and DLA gains, and the Name Mover / Negative Name Mover inversion.

Each check uses the *statement* its chapter uses (`HEADLINES`), so the main model's verdicts are read from that
chapter's record (`main_model_claims`) instead of being recomputed, and `side_by_side` lays the paper's value,
the main model's verdict and the second model's verdict in one row per claim.

    runs = headline_runs(study_, clean_epochs=[1, 2], toxic_epochs=2, reversal_epochs=2, batch_size=16,
                         training_seeds=[0, 1, 2])
    est = headline_estimates(study_, runs)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ioi_utils.report import claims
from ioi_utils.measures import metrics
from ioi_utils.storage import results
from ioi_utils.finetuning import runs
from ioi_utils.study import analyses, seeds
from ioi_utils import study

# key -> (the chapter that checks the claim on the main model, its statement there, threshold, direction), in the
# order of the side-by-side table: the base circuit, amplification, corruption, recovery; the paper's head-level
# claims (Name Movers, Negative Name Movers, their twinning) sit beside the behaviour they explain
HEADLINES: dict[str, tuple[str, str, float, str]] = {
    "roles": ("circuit_discovery", "every circuit head has a role: Other is at most 20% of the heads (our goal)",
              0.2, "<="),
    "faithfulness": ("circuit_discovery", "the mechanism is as faithful as Wang et al.'s GPT-2 circuit (F(C)/F(M) >= "
                     "87%, held out)", 0.87, ">="),
    "clean_gain": ("amplification", "clean fine-tuning raises the logit difference by at least 10% of the base "
                   "model's (relative gain at the last epoch, mean over training seeds)", 0.10, ">="),
    "nm_attention": ("amplification", "clean fine-tuning makes the Name Movers attend more to IO (summed END→IO, last "
                     "epoch minus base)", 0.0, ">="),
    "nm_dla": ("amplification", "clean fine-tuning raises the Name Movers' DLA (summed, last epoch minus base)", 0.0,
               ">="),
    "nnm_amplify": ("amplification", "Negative Name Movers amplify alongside (summed NNM DLA, last epoch minus base, "
                    "more negative)", 0.0, "<="),
    "sd_corrupts": ("corruption", "Subject Duplication training makes the model prefer S (held-out logit difference "
                    "<= 0, mean over training seeds)", 0.0, "<="),
    "twinning": ("corruption", "Subject Duplication inverts Name Movers and Negative Name Movers together (fewest "
                 "significant flips of the two roles)", 1.0, ">="),
    "sd_recovers": ("neuroplasticity", "clean retraining after Subject Duplication restores the behaviour the same "
                    "clean training gives the base model (held-out logit diff, retrained / control)", 0.9, ">="),
}
PAPER_VALUES = {  # the paper's (or, for faithfulness, Wang et al.'s) value for each headline, as the chapters state it
    "roles": "every head of Wang et al.'s 26-head circuit has a class",
    "faithfulness": "87% (Wang et al., GPT-2 small)",
    "clean_gain": "6.32 -> 26.83 (epoch 1 -> 100)",
    "nm_attention": "Name Movers' attention to IO increases (§4.1)",
    "nm_dla": "L10H10 logit attribution 0.4 -> 1.8 (§4.1)",
    "nnm_amplify": "Negative Name Movers amplify with the Name Movers (§4.1)",
    "sd_corrupts": "3.55 -> -11.06 (5 epochs)",
    "twinning": "L9H9 flips sign; Negative Name Movers flip to suppress S (§4.2)",
    "sd_recovers": "behaviour recovers (§5)",
}
HEAD_LEVEL = ("nm_attention", "nm_dla", "nnm_amplify", "twinning")  # measured on the first training seed's runs
SUBJECT_DUPLICATION = "subject-duplication"


@dataclass
class HeadlineRuns:
    """The fine-tuning runs of the three headline experiments, each keyed by training seed."""

    clean: dict[int, runs.Run]  # clean fine-tuning, checkpoints at clean_epochs
    corrupted: dict[int, runs.Run]  # Subject Duplication from the base model
    retrained: dict[int, runs.Run]  # clean retraining of each corrupted run (same seed)
    clean_epochs: list[int]
    toxic_epochs: int
    reversal_epochs: int


def headline_runs(study_: study.Study, clean_epochs: list[int], toxic_epochs: int, reversal_epochs: int,
                  batch_size: int, training_seeds: list[int]) -> HeadlineRuns:
    """Train (or reuse from the run cache) every run of the three experiments for each training seed.

    The control of a retraining is the clean run of the same seed after `reversal_epochs` epochs, so that epoch
    must be one of `clean_epochs` (a one-line ValueError otherwise, before anything trains)."""
    clean_config = study.train_config(study_, "clean", max(clean_epochs), clean_epochs, batch_size)
    study.check_seed_plan(clean_config, reversal_epochs, training_seeds, study_)
    sd_config = study.toxic_configs(study_.config, toxic_epochs, batch_size)[SUBJECT_DUPLICATION]
    clean = study.seed_runs(clean_config, training_seeds)
    corrupted = study.seed_runs(sd_config, training_seeds)
    retrained = study.reversal_runs(study_, corrupted, reversal_epochs, batch_size)
    return HeadlineRuns(clean, corrupted, retrained, list(clean_epochs), toxic_epochs, reversal_epochs)


@dataclass
class HeadlineEstimates:
    """The headline numbers over training seeds (each a seeds.SeedEstimate) and the per-seed logit differences
    they come from (seed -> [n_eval] held-out logit differences)."""

    clean_gain: seeds.SeedEstimate  # relative gain of the mean logit difference, last clean epoch vs base
    sd_logit_diff: seeds.SeedEstimate  # mean logit difference after Subject Duplication
    recovery: seeds.SeedEstimate  # retrained / control (ratio of mean logit differences)
    base: torch.Tensor  # [n_eval]
    tuned: dict[int, torch.Tensor]
    corrupted: dict[int, torch.Tensor]
    retrained: dict[int, torch.Tensor]
    control: dict[int, torch.Tensor]


def headline_estimates(study_: study.Study, runs: HeadlineRuns) -> HeadlineEstimates:
    """Held-out logit differences of every checkpoint the headlines need, and the three estimates over seeds."""
    base = analyses.held_out_logit_diff(study_, study_.model)
    tuned = study.seed_logit_diffs(study_, runs.clean, max(runs.clean_epochs))
    corrupted = study.seed_logit_diffs(study_, runs.corrupted, runs.toxic_epochs)
    retrained = study.seed_logit_diffs(study_, runs.retrained, runs.reversal_epochs)
    control = study.seed_logit_diffs(study_, runs.clean, runs.reversal_epochs)
    return HeadlineEstimates(
        clean_gain=seeds.across_seeds({sd: (ld, base) for sd, ld in tuned.items()}, stat=seeds.relative_change),
        sd_logit_diff=seeds.across_seeds(corrupted),
        recovery=seeds.across_seeds({sd: (retrained[sd], control[sd]) for sd in retrained}, stat=metrics.ratio_of_means),
        base=base, tuned=tuned, corrupted=corrupted, retrained=retrained, control=control)


@dataclass
class HeadLevel:
    """The paper's head-level claims on the second model, as chapters 3 and 4 measure them on the main model: the
    base circuit's Name Movers (NM) and Negative Name Movers (NNM) read in the base model, after clean fine-tuning
    and after Subject Duplication (the first training seed's runs, held-out prompts; analyses.checkpoint_row)."""

    roles: dict[str, list]  # "NM" / "NNM" -> the base circuit's heads of that role
    rows: dict[str, dict]  # "base" / "clean" / "subject-duplication" -> checkpoint row
    nm_attention: tuple[float, tuple[float, float]]  # summed END->IO change of the NMs, clean minus base, [95% CI]
    nm_dla: tuple[float, tuple[float, float]]  # summed DLA change of the NMs
    nnm_dla: tuple[float, tuple[float, float]]  # summed DLA change of the NNMs (amplifying: more negative)
    twins: list[dict]  # analyses.role_changes of every NM and NNM, base -> Subject Duplication
    flipped: dict[str, list]  # role -> its heads whose DLA sign flipped significantly


def head_level(study_: study.Study, circuit, runs: HeadlineRuns) -> HeadLevel:
    """Checkpoint rows of the base model, the first seed's clean run at its last epoch and its Subject Duplication
    run at the last toxic epoch, and the head-level changes of the base circuit's NMs and NNMs between them."""
    first = min(runs.clean)
    clean_run, sd_run = runs.clean[first], runs.corrupted[first]
    last, toxic = max(runs.clean_epochs), runs.toxic_epochs
    rows = {"base": analyses.checkpoint_row(study_, study_.model, "base", circuit, 0),
            "clean": analyses.checkpoint_row(study_, clean_run.model(last)[0], f"{clean_run.id}-{last}", circuit, last),
            SUBJECT_DUPLICATION: analyses.checkpoint_row(study_, sd_run.model(toxic)[0], f"{sd_run.id}-{toxic}",
                                                         circuit, toxic)}
    roles = {c: list(circuit.classes[c]) for c in ("NM", "NNM")}
    twins = analyses.role_changes(rows["base"], rows[SUBJECT_DUPLICATION], roles["NM"] + roles["NNM"])
    flipped = {c: [t["head"] for t in twins if t["flip"] and t["head"] in hs] for c, hs in roles.items()}
    return HeadLevel(roles, rows, analyses.summed_change(rows["base"], rows["clean"], roles["NM"], "attn_io"),
                     analyses.summed_change(rows["base"], rows["clean"], roles["NM"], "dla"),
                     analyses.summed_change(rows["base"], rows["clean"], roles["NNM"], "dla"), twins, flipped)


def head_lines(hl: HeadLevel, circuit) -> str:
    """One line per NM / NNM head of the base circuit: DLA with its 95% interval and END attention, in the base
    model, after clean fine-tuning and after Subject Duplication (FLIP: a significant sign flip under the latter)."""
    base, clean, sd = hl.rows["base"], hl.rows["clean"], hl.rows[SUBJECT_DUPLICATION]
    out = []
    for t in hl.twins:
        h = t["head"]
        (a0, b0), (a1, b1) = analyses.dla_interval(base, h), analyses.dla_interval(sd, h)
        out.append(f"{circuit.class_of(h):>4} {h[0]}.{h[1]}: DLA {t['dla_before']:+.2f} [{a0:+.2f}, {b0:+.2f}] -> clean "
                   f"{float(clean['dla'][h]):+.2f} | SD {t['dla_after']:+.2f} [{a1:+.2f}, {b1:+.2f}]; END->IO "
                   f"{t['attn_io_before']:.2f} -> clean {float(clean['attn_io'][h]):.2f} | SD {t['attn_io_after']:.2f}; "
                   f"END->S {t['attn_s_before']:.2f} -> SD {t['attn_s_after']:.2f}{'  FLIP' if t['flip'] else ''}")
    return "\n".join(out) or "the base circuit has no Name Mover and no Negative Name Mover"


def check(key: str, ours: float, interval: tuple[float, float] | None, record: dict, enforce: bool = False,
          per_seed: dict[int, float] | None = None, training: str = "",
          precondition: tuple[bool, str] | None = None) -> claims.Claim:
    """claims.check of headline `key` with its chapter's statement, threshold and direction."""
    _, statement, threshold, direction = HEADLINES[key]
    return claims.check(statement, ours, interval, threshold, direction, paper=PAPER_VALUES[key],
                        precondition=precondition, enforce=enforce, record=record, per_seed=per_seed,
                        training=training)


def main_model_claims(profile: str, model: str, published: str | Path | None = None
                      ) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The main model's headline claim records: (key -> the claim's record, for the headlines found; where they
    come from, one line per source).

    First the chapters' records of this profile in the results store (the execution that wrote them is named:
    results.load refuses another execution's, here the caller is told). A headline with no record there is read
    from the executed notebook of its chapter in `published` (the book's folder), if that notebook is an
    execution of this profile on `model`: its printed claim line (`claims.parse_lines`, 3 significant digits).
    A chapter neither executed nor published simply has no row."""
    found: dict[str, dict[str, Any]] = {}
    sources: set[str] = set()
    for key, (chapter, statement, _, _) in HEADLINES.items():
        path = results.results_root() / profile / f"{chapter}.json"
        try:
            stored = json.loads(path.read_text())
            found[key] = stored["values"]["claims"][statement]
            sources.add(f"execution {stored.get('execution')}")
            continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        record, source = _published_claim(Path(published) / f"{chapter}.ipynb", statement, profile, model) \
            if published is not None else (None, "")
        if record is not None:
            found[key] = record
            sources.add(source)
    return found, sources


def _published_claim(notebook: Path, statement: str, profile: str, model: str) -> tuple[dict | None, str]:
    """The claim `statement` as printed in an executed notebook of this profile and model, and the source line."""
    try:
        nb = json.loads(notebook.read_text())
    except (OSError, ValueError):
        return None, ""
    meta = nb.get("metadata", {}).get("ioi_utils_execution", {})
    if meta.get("profile") != profile or meta.get("model") != model:
        return None, ""
    text = "\n".join("".join(o["text"]) for cell in nb.get("cells", []) for o in cell.get("outputs", []) if "text" in o)
    record = claims.parse_lines(text).get(statement)
    return record, f"the published notebooks (commit {meta.get('commit')}, printed claim lines)"


def _ours(c: dict[str, Any] | None) -> str:
    """'value [lo, hi] — verdict' of a claim record (or 'not run')."""
    if c is None:
        return "not run"
    f = lambda x: f"{x:.3g}"  # noqa: E731
    interval = "" if not c.get("interval") else f" [{f(c['interval'][0])}, {f(c['interval'][1])}]"
    return f"{f(c['ours'])}{interval} — **{c['verdict']}**"


def side_by_side(main: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], main_name: str,
                 second_name: str) -> str:
    """A markdown table, one row per headline: the claim, threshold, the paper's value (GPT-2 small), the main
    model's value and verdict, the second model's. main / second: key -> claim record (main_model_claims; the
    `record` dict that `check` filled, keyed by statement)."""
    head = (f"| claim | threshold | GPT-2 small (paper) | {main_name} | {second_name} |\n"
            "|---|---|---|---|---|\n")
    rows = []
    for key, (_, statement, threshold, direction) in HEADLINES.items():
        cell = statement.replace("|", "\\|")
        rows.append(f"| {cell} | {'≥' if direction == '>=' else '≤'} {threshold:g} | {PAPER_VALUES[key]} "
                    f"| {_ours(main.get(key))} | {_ours(second.get(statement))} |")
    return head + "\n".join(rows)


def compare(main: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], main_name: str,
            second_name: str) -> str:
    """One sentence per headline, written from the two verdicts: holds on both models, on one only, on neither,
    or cannot be compared (a claim not run or not testable on a model)."""
    out = []
    for key, (_, statement, _, _) in HEADLINES.items():
        a, b = main.get(key), second.get(statement)
        va, vb = (c["verdict"] if c else "not run" for c in (a, b))
        if "not run" in (va, vb) or claims.NOT_TESTABLE in (va, vb) or claims.INCONCLUSIVE in (va, vb):
            what = f"cannot be compared yet ({main_name}: {va}; {second_name}: {vb})"
        elif va == vb == claims.REPRODUCED:
            what = "holds on both models"
        elif va == vb:
            what = "holds on neither model"
        else:
            what = f"holds on {main_name if va == claims.REPRODUCED else second_name} only"
        out.append(f"- *{statement}*: {what}.")
    return "\n".join(out)
