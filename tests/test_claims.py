"""Claims: every verdict branch, the printed line, enforcement and recording."""

import math

import pytest

from ioi_utils.report import claims


@pytest.mark.parametrize("interval,direction,verdict", [
    ((0.90, 0.95), ">=", "reproduced"),
    ((0.80, 0.86), ">=", "not reproduced"),
    ((0.85, 0.90), ">=", "inconclusive"),
    ((0.80, 0.86), "<=", "reproduced"),
    ((0.90, 0.95), "<=", "not reproduced"),
    ((0.85, 0.90), "<=", "inconclusive"),
    ((0.87, 0.95), ">=", "reproduced"),  # the threshold itself is on the claimed side
])
def test_interval_verdicts(interval, direction, verdict):
    c = claims.check("s", 0.88, interval, 0.87, direction)
    assert c.verdict == verdict and c.interval == interval and c.direction == direction


@pytest.mark.parametrize("ours,direction,verdict", [(0.9, ">=", "reproduced"), (0.8, ">=", "not reproduced"),
                                                    (0.8, "<=", "reproduced"), (0.9, "<=", "not reproduced"),
                                                    (math.nan, ">=", "not reproduced")])
def test_point_verdicts_without_interval(ours, direction, verdict):
    assert claims.check("s", ours, None, 0.87, direction).verdict == verdict


def test_failed_precondition_is_not_testable_with_reason():
    c = claims.check("ratio", 0.95, (0.9, 0.99), 0.5, ">=", precondition=(False, "F(M) = -1.2 <= 0"))
    assert c.verdict == "not testable" and "F(M) = -1.2 <= 0" in c.evidence
    assert claims.check("ratio", 0.95, (0.9, 0.99), 0.5, ">=", precondition=(True, "F(M) > 0")).verdict == "reproduced"


def test_printed_line(capsys):
    c = claims.check("faithful", 0.93, (0.90, 0.95), 0.87, ">=", paper="98.4-99.9%")
    line = capsys.readouterr().out.strip()
    assert line == "[REPRODUCED] faithful — paper: 98.4-99.9%; ours: 0.93 [0.9, 0.95] vs threshold ≥ 0.87"
    assert str(c) == line and c.paper == "98.4-99.9%" and c.ours == 0.93 and c.threshold == 0.87


def test_enforce_raises_only_when_not_reproduced():
    with pytest.raises(claims.ClaimFailed, match="NOT REPRODUCED"):
        claims.check("s", 0.1, (0.0, 0.2), 0.5, ">=", enforce=True)
    assert claims.check("s", 0.5, (0.4, 0.6), 0.5, ">=", enforce=True).verdict == "inconclusive"
    assert claims.check("s", 0.7, None, 0.5, ">=", enforce=True).verdict == "reproduced"


def test_record_and_bad_direction():
    rec = {}
    claims.check("s", 0.7, None, 0.5, ">=", paper="p", record=rec)
    assert rec["s"]["verdict"] == "reproduced" and rec["s"]["paper"] == "p" and rec["s"]["ours"] == 0.7
    with pytest.raises(ValueError, match="direction"):
        claims.check("s", 0.7, None, 0.5, ">")
