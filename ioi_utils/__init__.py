"""ioi_utils: the book's package, one folder per layer (each imports only from the folders below it).

    storage/      files written whole or not at all, checked values on disk, memos and chapter records, timings
    report/       claims, the summary table, figures and their checks, attention views
    prompts/      the task interface, vocabulary, IOI and Greater-Than datasets
    models/       loading by name, tokenizers, the names of hook points
    measures/     logit difference, accuracy, intervals; a model's behaviour on held-out prompts
    mechanisms/   scoring, path patching, knockouts, activation patching and CMAP, attribution
    circuits/     the mechanism by path patching, its roles, Wang et al.'s checks, a second reading
    finetuning/   what a run is, its folder and checkpoints, the objective, training
    study/        the chapters' layer: setup, checkpoint analyses, CMAP analyses, training seeds, Greater-Than, the
                  second model
    runner/       executing one chapter with papermill, publishing executed notebooks
    profiles.py   every parameter a chapter takes; book.py, compare.py, sweep.py, train.py, evaluate.py, verify.py:
                  the command lines (`python -m ioi_utils.<name>`)

The chapters call the chapters' layer (`study/`) and the report and storage layer only: `from ioi_utils import
study, analyses, plotting`. `CHAPTER_NAMES` below is that list, each short name pointing at its module in its
layer, imported on first use (PEP 562); the lower layers reach a chapter only as the objects `study` returns (a
`Study`, a `Circuit`, a run). Code in the package imports the layers' own paths (`from ioi_utils.prompts import
data`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# short name -> module: what a chapter may import as `from ioi_utils import <name>` (besides the folder `study` and
# the module `profiles`, which it imports by their own paths; tests/test_architecture.py holds the chapters to it)
CHAPTER_NAMES = {
    "analyses": "ioi_utils.study.analyses",
    "claims": "ioi_utils.report.claims",
    "cmap_analyses": "ioi_utils.study.cmap_analyses",
    "display": "ioi_utils.report.display",
    "generalisation": "ioi_utils.study.generalisation",
    "greater_than_study": "ioi_utils.study.greater_than_study",
    "plotting": "ioi_utils.report.plotting",
    "results": "ioi_utils.storage.results",
    "seeds": "ioi_utils.study.seeds",
    "summary": "ioi_utils.report.summary",
}


def __getattr__(name: str):
    """`ioi_utils.<short name>`: the chapter-facing module, imported on first use."""
    if name in CHAPTER_NAMES:
        return importlib.import_module(CHAPTER_NAMES[name])
    raise AttributeError(f"module 'ioi_utils' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *CHAPTER_NAMES])
