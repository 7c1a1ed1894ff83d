"""Command line: check every run and memo on disk, and say what would be recomputed.

    python -m ioi_utils.verify [--runs DIR] [--results DIR]

Every run folder is compared with what was recorded when it was written (`run_checks.check`, deep: each
checkpoint's sha256 and every tensor of a resume state); every memo is read back and checked against its sha256
(`results.verify_memos`), every chapter record parsed (`results.verify_records`). One line per problem, with
its fix; nothing is changed (`python -m ioi_utils.train --run RUN_ID`, or the chapter, applies a run's fixes;
a memo is recomputed when a chapter asks for it). Exit status 1 when something is bad, 0 when all verifies.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from ioi_utils import circuits  # noqa: F401  (registers the dataclasses that memos hold, so they can be read back)
from ioi_utils.storage import results
from ioi_utils.finetuning import run_checks, runs


def check_runs(root: Path | None) -> tuple[int, list[str], list[str]]:
    """(runs seen, one line per fault, one line per incomplete run that is fine: where it resumes)."""
    found, faults, notes = runs.list_runs(root), [], []
    for run in found:
        c = run_checks.check(run, deep=True)
        faults += c.lines()
        if c.faults and all(f.subject != runs.CONFIG for f in c.faults):
            faults.append(f"run {run.id}: `python -m ioi_utils.train --run {run.id}` (or its chapter) applies "
                          "these fixes")
        elif not c.faults and c.resume_from is not None:
            notes.append(f"run {run.id}: incomplete; training resumes from epoch {c.resume_from}")
    return len(found), faults, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Check everything, print what is wrong; the exit status (1: something is bad)."""
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.verify", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=None, help=f"runs folder (default ${runs.RUNS_ENV})")
    ap.add_argument("--results", type=Path, default=None, help="results folder (default $IOI_UTILS_RESULTS)")
    a = ap.parse_args(argv)
    if a.results is not None:
        os.environ["IOI_UTILS_RESULTS"] = str(a.results)
    n_runs, run_faults, notes = check_runs(a.runs)
    n_memos, memo_faults = results.verify_memos()
    n_records, record_faults = results.verify_records()
    bad = run_faults + memo_faults + record_faults
    for line in notes + bad:
        print(line)
    print(f"checked {n_runs} runs, {n_memos} memos, {n_records} records: "
          + (f"{len(bad)} problem line(s)" if bad else "everything verifies"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
