"""Results on disk: memo keys hold the weights and the code version; records cannot mix executions."""

import pytest
import torch

from ioi_utils import models, results


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    monkeypatch.setattr(results, "_WRITTEN", set())
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return models.load_model("tiny", device="cpu", seed=0)[0]


def _nudged(model):
    """A second tiny model, one weight changed by a float32 step."""
    other = models.load_model("tiny", device="cpu", seed=0)[0]
    with torch.no_grad():
        p = next(other.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1e9))
    return other


def test_model_fingerprint_tracks_weights(tiny):
    fp = results.model_fingerprint(tiny)
    assert fp == results.model_fingerprint(models.load_model("tiny", device="cpu", seed=0)[0])  # same weights
    assert fp != results.model_fingerprint(models.load_model("tiny", device="cpu", seed=1)[0])
    assert fp != results.model_fingerprint(_nudged(tiny))  # one element, one ulp


def test_code_version_is_a_hash_of_the_sources():
    v = results.code_version()
    assert len(v) == 16 and v == results.code_version()


def test_memo_keys_hold_weights_and_code(root, tiny, monkeypatch):
    calls = []
    fn = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert results.memo("x", fn, tiny, a=1) == 1
    assert results.memo("x", fn, tiny, a=1) == 1  # loaded, not recomputed
    assert results.memo("x", fn, _nudged(tiny), a=1) == 2  # other weights, same name and key
    results.code_version.cache_clear()
    monkeypatch.setattr(results, "code_version", lambda: "other-code")
    assert results.memo("x", fn, tiny, a=1) == 3  # other code


def test_record_is_fresh_per_execution_and_load_refuses_others(root, tiny):
    ex = results.execution_id("p", tiny)
    assert ex == results.execution_id("p", tiny) and ex != results.execution_id("q", tiny)
    assert ex != results.execution_id("p", _nudged(tiny))
    for earlier in ("older", ex):  # another execution, or an earlier kernel of this one (e.g. before an edit)
        results._WRITTEN.clear()
        results.record("p", "intro", {"a": 1, "old": 0}, execution=earlier)
        results._WRITTEN.clear()  # a new process (kernel) executes the chapter again
        results.record("p", "intro", {"a": 2}, execution=ex)
        results.record("p", "intro", {"b": 3}, execution=ex)  # same process and execution: added
        assert results.load("p", ex) == {"intro": {"a": 2, "b": 3}}  # nothing of the earlier file
    results.record("q", "intro", {"a": 1}, execution="one")
    results.record("q", "intro", {"c": 4}, execution="other")  # the same process switching execution
    assert results.load("q", "other") == {"intro": {"c": 4}}
    results._WRITTEN.clear()
    results.record("p", "summary_input", {"c": 1}, execution="older")
    with pytest.raises(results.StaleRecord, match="summary_input.json .* from execution older, not the current"):
        results.load("p", ex)
