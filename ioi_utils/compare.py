"""Compare two executions of the book by what they print: ``python -m ioi_utils.compare OLD NEW``.

OLD and NEW are folders of executed notebooks (the published ``book/``, a ``--out-dir`` of
``python -m ioi_utils.book``) or ``git:REV`` (the book committed at a revision). Per chapter in both, it prints
"same" or the lines only one side prints (stdout, displayed text and tables, glued values; durations masked;
`runner.execution_diff` says how). ``--rel-tol`` compares numbers within a relative tolerance instead of digit
by digit (another machine changes the last digits of full-precision glue values). Exit status: 0 when every common
chapter prints the same, 1 when one differs, 2 when an execution cannot be read.

    python -m ioi_utils.compare git:HEAD book/            # the book just executed against the committed one
    python -m ioi_utils.compare book/ my_run/ --rel-tol 1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ioi_utils.runner.execution_diff import diff_chapters, load_execution, printed_lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.compare",
                                 description="Compare two executions of the book by what they print.")
    ap.add_argument("old", help="folder of executed notebooks, or git:REV for book/ at a revision")
    ap.add_argument("new", help="folder of executed notebooks, or git:REV")
    ap.add_argument("--rel-tol", type=float, default=0.0, help="relative tolerance per number (default: exact digits)")
    ap.add_argument("--most", type=int, default=20, help="differing lines shown per chapter")
    args = ap.parse_args(argv)
    if not 0 <= args.rel_tol < 1:  # math.isclose's tolerance; 1 would call any two numbers equal
        ap.error(f"--rel-tol must be in [0, 1), got {args.rel_tol}")
    try:
        old, new = load_execution(args.old), load_execution(args.new)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    diffs = diff_chapters(old, new, args.rel_tol)
    for ch, lines in diffs.items():
        n_old, n_new = len(printed_lines(old[ch])), len(printed_lines(new[ch]))
        print(f"{ch}: {'same' if not lines else f'{len(lines)} differing lines'} ({n_old} vs {n_new} printed lines)")
        for line in lines[:args.most]:
            print(f"    {line[:200]}")
    for ch in sorted(set(old) ^ set(new)):
        print(f"{ch}: only in {'old' if ch in old else 'new'}")
    return 1 if any(diffs.values()) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader stopped early (`| head`): no traceback; stdout's flush at exit goes nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
