"""The book runner's parts (the command line is `python -m ioi_utils.book`; nothing is re-exported here).

- `chapter_run`: executes one chapter with papermill (its log, a line as each cell starts, one-line failures).
- `publication`: publishes executed notebooks (outputs cleaned of machine paths, written atomically).
"""
