"""The nbval comparison at a stated precision (tests/nbval_numbers.py): float noise passes, real changes fail."""

from __future__ import annotations

import nbformat
import pytest

import nbval_numbers as nn


@pytest.mark.parametrize("fresh, stored", [
    ("5.550049781799316", "5.550049304962158"),  # glue record, 7th digit (issue seen on another CPU)
    ("27.7619513651081", "27.76193656713116"),
    ("-0.3159799677746833", "-0.3159816458186131"),
    ("Claim(ours=0.6254453769845378, interval=(0.4509936483429886, 0.8))",
     "Claim(ours=0.6254459999845378, interval=(0.4509931111429886, 0.8))"),
    ("x  = 1.0000012e-07", "x = -2.38418579e-07"),  # zero up to noise; runs of spaces count as one
    ("0.7984957098960876", "0.7983726859092712"),  # a glue record after fine-tuning at threads 1 vs 2 (1.5e-4)
    ("ours: 0.312 [0.192, 0.461]", "ours: 0.311 [0.192, 0.461]"),  # the same gain printed: a rounding flip
    ("F 75.9% [61.6%, 90.4%]", "F 76.0% [61.6%, 90.4%]"),  # a percentage, one unit in its last digit
])
def test_float_noise_agrees(fresh, stored):
    assert nn.texts_agree(fresh, stored)


@pytest.mark.parametrize("fresh, stored", [
    ("5.550049304962158", "-5.550049304962158"),  # flipped sign
    ("heads 23.3, 24.4", "heads 23.3, 24.1"),  # moved head (short numbers compare exactly)
    ("LD 5.55 [4.67, 6.47]", "LD 5.57 [4.67, 6.47]"),  # a rounded printout: at most one unit in its last digit
    ("circuit of 18 heads", "circuit of 19 heads"),
    ("[REPRODUCED] F = 0.9143", "[INCONCLUSIVE] F = 0.9143"),  # a verdict
    ("5.5500493", "5.5610493"),  # long, but 2e-3 apart
    ("0.312", "0.314"),  # two units in the last digit
    ("6.56", "6.6"),  # another number of decimals
    ("75.9%", "75.9"),  # a percentage is not a plain number
    ("NM 23.0 and 24.4", "NM 23.1 and 24.4"),  # a head (one decimal, no percent sign) is exact
    ("a 1.234567 b", "a 1.234567 b 2"),  # one number more
])
def test_real_changes_disagree(fresh, stored):
    assert not nn.texts_agree(fresh, stored)


def test_significant_digits_and_long():
    assert nn.significant_digits("0.0031") == 2
    assert nn.significant_digits("-27.761936") == 8
    assert nn.significant_digits("1.2345e-07") == 5
    assert nn.is_long("5.5500") and not nn.is_long("5.550") and not nn.is_long("123456")


def test_number_pattern_leaves_names_alone():
    assert nn.NUMBER.findall("ipykernel_123/4.py v1.2.3 at 0.5, x2, 7.5%") == ["0.5", "7.5%"]
    assert nn.decimals("6.56") == 2 and nn.decimals("75.9%") == 1 and nn.decimals("18") == 0


def _out(text: str, mime: str = "application/papermill.record/text/plain"):
    return nbformat.from_dict({"output_type": "display_data", "metadata": {}, "data": {mime: text}})


def test_reconcile_replaces_only_agreeing_strings():
    stored = [_out("5.550049304962158"), _out("18")]
    fresh = [_out("5.550049781799316"), _out("19")]
    got = nn.reconcile(fresh, stored)
    assert got[0]["data"]["application/papermill.record/text/plain"] == "5.550049304962158"
    assert got[1]["data"]["application/papermill.record/text/plain"] == "19"  # left for nbval to report
    assert fresh[0]["data"]["application/papermill.record/text/plain"] == "5.550049781799316"  # not mutated


def test_reconcile_applies_the_sanitizer_first():
    stored = [{"output_type": "stream", "stderr": "<obj at 0x7f00> 1.2345678"}]
    fresh = [{"output_type": "stream", "stderr": "<obj at 0x7fff> 1.2345679"}]
    sanitize = lambda s: s.replace("0x7f00", "0xA").replace("0x7fff", "0xA")  # noqa: E731
    assert nn.reconcile(fresh, stored, sanitize)[0]["stderr"] == stored[0]["stderr"]
    assert nn.reconcile(fresh, stored)[0]["stderr"] == fresh[0]["stderr"]


def test_nbval_is_patched():
    import nbval.plugin

    nn.patch_nbval()
    assert getattr(nbval.plugin.IPyNbCell.compare_outputs, "_ioi_numbers", False)
    stream = nbformat.from_dict({"output_type": "stream", "name": "stdout", "text": "x"})
    once = nbval.plugin.transform_streams_for_comparison([stream])
    assert nbval.plugin.transform_streams_for_comparison(once) == once == [{"output_type": "stream", "stdout": "x"}]


def test_blank_streams_are_no_output():
    bar = "Loading weights: 100%|##########| 272/272 [00:00<00:00, 31052.85it/s]\n"
    strip_bars = lambda s: "" if "it/s]" in s else s  # noqa: E731  (the sanitize file's bar rule, in short)
    outs = [{"output_type": "stream", "stderr": bar}, {"output_type": "stream", "stdout": "F = 0.91\n"}]
    assert nn.drop_blank_streams(outs, strip_bars) == outs[1:]
    assert nn.drop_blank_streams(outs) == outs  # without the sanitizer the bar is output


def test_figures_are_neither_sanitized_nor_reconciled():
    """A base64 PNG is never compared; running the sanitize regexes over it took minutes per figure in CI."""
    import base64
    import os
    import time
    from types import SimpleNamespace

    import nbval.plugin

    nn.patch_nbval()
    cell = SimpleNamespace(parent=SimpleNamespace(sanitize_patterns={r"\S*/site-packages/": "", "at 0x[0-9a-f]+": "at 0xA"}))
    cell.sanitize = lambda s: nbval.plugin.IPyNbCell.sanitize(cell, s)
    png = base64.b64encode(os.urandom(150_000)).decode()  # 200 KB: the quadratic pattern alone needs minutes
    outs = [nbformat.from_dict({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": png, "text/plain": "<Figure at 0x7f3a>"}}),
            nbformat.from_dict({"output_type": "stream", "name": "stderr", "text": "/x/site-packages/tqdm/auto.py: w"})]
    t = time.time()
    done = nbval.plugin.IPyNbCell.sanitize_outputs(cell, outs)
    assert time.time() - t < 2
    assert done[0]["data"]["image/png"] is png and done[0]["data"]["text/plain"] == "<Figure at 0xA>"
    assert done[1]["text"] == "tqdm/auto.py: w"
    t = time.time()
    assert nn.reconcile(outs[:1], [dict(outs[0], data=dict(outs[0]["data"], **{"image/png": "other"}))],
                        cell.sanitize)[0]["data"]["image/png"] is png  # not reconciled: left as it came
    assert time.time() - t < 2
