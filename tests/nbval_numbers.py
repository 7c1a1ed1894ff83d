"""Numbers in nbval's comparison at a stated precision, so the smoke references hold on any CPU.

nbval compares a cell's fresh outputs with the stored ones as strings. A float printed with all its digits
(a myst-nb `glue` record, a dataclass repr) differs in its 7th digit when another CPU, thread count or BLAS
kernel sums in another order, and the string comparison fails although nothing changed. This module makes the
comparison numeric where, and only where, a number carries more digits than the book ever states:

- a *long* number is a decimal with at least `LONG_DIGITS` (5) significant digits; two long numbers at the same
  place agree when `math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)` (1e-4 relative, i.e. about four
  significant digits; 1e-5 absolute for values that are zero up to float noise);
- every other number (a rounded printout such as ``5.55 [4.67, 6.47]``, a head such as ``23.3``, a count, a
  verdict's threshold) and all the text around the numbers must be identical (runs of spaces count as one, so a
  table whose column widths follow a number's length still compares).

So a flipped sign, a moved head, another circuit size or verdict still fails; a difference in the 7th digit of
a glue record does not. When two outputs agree in this sense the fresh one is replaced by the stored one before
nbval's own comparison, which therefore still reports every real difference in its usual form.
"""

from __future__ import annotations

import copy
import math
import re

LONG_DIGITS = 5
REL_TOL = 1e-4
ABS_TOL = 1e-5

# a decimal number not glued to a word or a dotted name (so "ipykernel_123" or "v1.2.3" stay text)
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.]*\w)")
SPACES = re.compile(r"[ \t]+")


def significant_digits(token: str) -> int:
    """Significant digits of a decimal literal: its mantissa's digits without leading zeros ("0.0031" -> 2)."""
    mantissa = re.split(r"[eE]", token.lstrip("+-"))[0]
    digits = mantissa.replace(".", "").lstrip("0")
    return len(digits)


def is_long(token: str) -> bool:
    """A number printed with more digits than the book states anywhere (a glue record, a repr)."""
    return ("." in token or "e" in token.lower()) and significant_digits(token) >= LONG_DIGITS


def _split(text: str) -> tuple[list[str], list[str]]:
    """(the text between numbers with runs of spaces collapsed, the numbers) of a string."""
    numbers = NUMBER.findall(text)
    skeleton = [SPACES.sub(" ", part) for part in NUMBER.split(text)]
    return skeleton, numbers


def numbers_agree(a: str, b: str) -> bool:
    """Two number tokens at the same place: equal as text, or both long and close (module docstring)."""
    if a == b:
        return True
    if not (is_long(a) and is_long(b)):
        return False
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=ABS_TOL)


def texts_agree(fresh: str, stored: str) -> bool:
    """Whether two output strings are the same up to the precision stated in the module docstring."""
    if fresh == stored:
        return True
    (skel_f, nums_f), (skel_s, nums_s) = _split(fresh), _split(stored)
    if skel_f != skel_s or len(nums_f) != len(nums_s):
        return False
    return all(numbers_agree(a, b) for a, b in zip(nums_f, nums_s))


def _agree(fresh, stored, sanitize) -> bool:
    return isinstance(fresh, str) and isinstance(stored, str) and texts_agree(sanitize(fresh), sanitize(stored))


def reconcile(fresh_outputs: list, stored_outputs: list, sanitize=lambda s: s) -> list:
    """A copy of a cell's fresh outputs in which every string that agrees with the stored one at the stated
    precision (after `sanitize`, nbval's regex replacements) is replaced by the stored string. Outputs are paired
    in order (nbval has coalesced the streams); when their number or kinds differ nothing is replaced."""
    if len(fresh_outputs) != len(stored_outputs):
        return fresh_outputs
    out = []
    for fresh, stored in zip(fresh_outputs, stored_outputs):
        fresh = copy.deepcopy(fresh)
        if fresh.get("output_type") == stored.get("output_type"):
            for key in set(fresh) & set(stored):
                if key == "data":
                    for mime in set(fresh[key]) & set(stored[key]):
                        if _agree(fresh[key][mime], stored[key][mime], sanitize):
                            fresh[key][mime] = stored[key][mime]
                elif key != "output_type" and _agree(fresh[key], stored[key], sanitize):
                    fresh[key] = stored[key]
        out.append(fresh)
    return out


def patch_nbval() -> None:
    """Route nbval's per-cell comparison through `reconcile` (nbval 0.11's `IPyNbCell.compare_outputs`)."""
    try:
        import nbval.plugin as plugin
    except ImportError:
        return
    original = plugin.IPyNbCell.compare_outputs
    if getattr(original, "_ioi_numbers", False):
        return
    transform = plugin.transform_streams_for_comparison

    def transform_once(outputs):
        """nbval's stream transform ({"output_type": "stream", <name>: text}), leaving transformed ones as they are."""
        return [o if o.get("output_type") == "stream" and "name" not in o else transform([o])[0] for o in outputs]

    def compare_outputs(self, test, ref, skip_compare=None):
        test, ref = transform_once(test), transform_once(ref)
        return original(self, reconcile(test, ref, self.sanitize), ref, skip_compare)

    compare_outputs._ioi_numbers = True
    plugin.transform_streams_for_comparison = transform_once
    plugin.IPyNbCell.compare_outputs = compare_outputs
