"""Numbers in nbval's comparison at a stated precision, so the smoke references hold on any CPU.

nbval compares a cell's fresh outputs with the stored ones as strings. A float printed with all its digits
(a myst-nb `glue` record, a dataclass repr) differs in its 7th digit when another CPU, thread count or BLAS
kernel sums in another order, and the string comparison fails although nothing changed. Fine-tuning amplifies
that noise: AdamW's normalised steps turn a 1e-7 difference in a near-zero gradient into a full step, so numbers
measured on fine-tuned checkpoints repeat only to about 1e-4 relative across thread counts (measured: 0.79850
vs 0.79837 for a summed DLA gain at torch threads 2 vs 1). This module makes the comparison numeric where, and
only where, that noise can reach a printed digit:

- a *long* number is a decimal with at least `LONG_DIGITS` (5) significant digits; two long numbers at the same
  place agree when `math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)` (1e-3 relative; 1e-5 absolute for
  values that are zero up to float noise);
- a *rounded* number printed with at least two decimals ("0.312", "6.56") or with a percent sign ("75.9%") may
  differ by one unit in its last printed digit (a rounding-boundary flip), in the same number of decimals;
- every other number (a count, a head such as ``23.3`` — one decimal, no percent sign —, a threshold) and all the
  text around the numbers must be identical (runs of spaces count as one, so a table whose column widths
  follow a number's length still compares).

So a flipped sign, a moved head, another circuit size or verdict still fails; float noise does not. When two
outputs agree in this sense the fresh one is replaced by the stored one before nbval's own comparison, which
therefore still reports every real difference in its usual form. (A head of a model with ten or more heads per
layer prints with two decimals, "10.10": the smoke profile runs SmolLM2, nine heads per layer.)
"""

from __future__ import annotations

import copy
import math
import re

LONG_DIGITS = 5
REL_TOL = 1e-3
ABS_TOL = 1e-5

# a decimal number not glued to a word or a dotted name (so "ipykernel_123" or "v1.2.3" stay text)
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.]*\w)%?")
SPACES = re.compile(r"[ \t]+")


def significant_digits(token: str) -> int:
    """Significant digits of a decimal literal: its mantissa's digits without leading zeros ("0.0031" -> 2)."""
    mantissa = re.split(r"[eE]", token.lstrip("+-").rstrip("%"))[0]
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


def decimals(token: str) -> int:
    """Digits after the decimal point of a plain decimal literal ("6.56" -> 2; 0 without a point)."""
    mantissa = token.rstrip("%")
    return 0 if "." not in mantissa or "e" in mantissa.lower() else len(mantissa.split(".")[1])


def numbers_agree(a: str, b: str) -> bool:
    """Two number tokens at the same place: equal as text, both long and close, or both rounded to the same
    decimals (at least two, or one with a percent sign) and one unit apart in the last (module docstring)."""
    if a == b:
        return True
    if a.endswith("%") != b.endswith("%"):
        return False
    x, y = float(a.rstrip("%")), float(b.rstrip("%"))
    if is_long(a) and is_long(b):
        return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    d = decimals(a)
    if d != decimals(b) or d < (1 if a.endswith("%") else 2):
        return False
    return abs(x - y) <= 1.000001 * 10.0 ** -d


def texts_agree(fresh: str, stored: str) -> bool:
    """Whether two output strings are the same up to the precision stated in the module docstring."""
    if fresh == stored:
        return True
    (skel_f, nums_f), (skel_s, nums_s) = _split(fresh), _split(stored)
    if skel_f != skel_s or len(nums_f) != len(nums_s):
        return False
    return all(numbers_agree(a, b) for a, b in zip(nums_f, nums_s))


# outputs nbval never compares here (images are skipped unless --nbdime; conftest skips HTML and JavaScript): they
# are neither sanitized nor reconciled. Running the sanitize regexes over a base64 PNG costs minutes per figure
# (patterns such as \S*/site-packages/ backtrack quadratically on a long run of non-space characters).
NOT_COMPARED = ("image/", "text/html", "application/javascript")


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
                        if not mime.startswith(NOT_COMPARED) and _agree(fresh[key][mime], stored[key][mime], sanitize):
                            fresh[key][mime] = stored[key][mime]
                elif key != "output_type" and _agree(fresh[key], stored[key], sanitize):
                    fresh[key] = stored[key]
        out.append(fresh)
    return out


def drop_blank_streams(outputs: list, sanitize=lambda s: s) -> list:
    """Transformed outputs without the streams that hold nothing once sanitized (progress bars only): the book
    runner removes such a stream from the notebooks it publishes, so a fresh run that prints one (a model loaded
    from a cold cache shows its loading bar) has no more output than the stored notebook."""
    def blank(o) -> bool:
        return o.get("output_type") == "stream" and all(
            not sanitize(v).strip() for k, v in o.items() if k != "output_type" and isinstance(v, str))
    return [o for o in outputs if not blank(o)]


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
        test = drop_blank_streams(transform_once(test), self.sanitize)
        ref = drop_blank_streams(transform_once(ref), self.sanitize)
        return original(self, reconcile(test, ref, self.sanitize), ref, skip_compare)

    def sanitize_outputs(self, outputs, *args, **kwargs):
        """nbval's sanitize_outputs, leaving the MIME types it does not compare as they are (NOT_COMPARED)."""
        kept = [{k: v for k, v in o.get("data", {}).items() if k.startswith(NOT_COMPARED)} for o in outputs]
        bare = [dict(o, data={k: v for k, v in o["data"].items() if not k.startswith(NOT_COMPARED)}) if "data" in o
                else o for o in outputs]
        done = original_sanitize(self, bare, *args, **kwargs)
        for o, extra in zip(done, kept):
            if extra:
                o["data"].update(extra)
        return done

    original_sanitize = plugin.IPyNbCell.sanitize_outputs
    compare_outputs._ioi_numbers = True
    plugin.transform_streams_for_comparison = transform_once
    plugin.IPyNbCell.compare_outputs = compare_outputs
    plugin.IPyNbCell.sanitize_outputs = sanitize_outputs
