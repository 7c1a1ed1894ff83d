"""What a reader sees (nothing is re-exported here: import the module).

- `claims`: a claim checked against a threshold fixed in advance, with its verdict.
- `summary`: the paper-vs-ours table, built only from the chapters' claim records.
- `plotting`: the book's figures; `class_outlines`: a circuit's classes outlined on head maps; `figure_check`:
  checks that a figure shows what it should (nothing off-scale, nothing hidden); `display`: attention patterns
  with circuitsvis.
"""
