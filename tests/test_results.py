"""Results on disk: memo keys hold the weights and the code version; records cannot mix executions."""

import collections
import dataclasses
import errno
import hashlib
import math
import pathlib
import struct
import subprocess

import numpy as np
import pytest
import torch

import ioi_utils
from ioi_utils.storage import checked_files, results
from ioi_utils.finetuning import runs
from ioi_utils.circuits import checks as CC
from ioi_utils import circuits as C, models


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
    package = pathlib.Path(ioi_utils.__file__).resolve().parent
    assert results.PACKAGE == package
    assert v == results.sources_hash(package)  # every layer's sources, not only storage/'s


def test_run_provenance_asks_git_about_the_whole_package(monkeypatch):
    """A run's dirty flag covers uncommitted changes anywhere under ioi_utils/, not only in finetuning/."""
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="abc\n" if "rev-parse" in cmd else " M x.py\n")

    monkeypatch.setattr(runs.subprocess, "run", fake_run)
    runs.git_version.cache_clear()
    try:
        out = runs.git_version()
    finally:
        runs.git_version.cache_clear()
    assert out["git_commit"] == "abc" and out["git_dirty"] is True
    assert all(cmd[cmd.index("-C") + 1] == str(results.PACKAGE) for cmd in calls) and len(calls) == 2


def test_sources_hash_sees_subpackages(tmp_path):
    """A change in a subpackage's module changes the code version (memos are keyed by it); a flat folder hashes
    as the package's top-level sources always did (name and content of each file, sorted by name)."""
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    flat = results.sources_hash(tmp_path)
    old = hashlib.sha256()
    for p in sorted(tmp_path.glob("*.py")):
        old.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    assert flat == old.hexdigest()[:16]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("z = 3\n")
    with_sub = results.sources_hash(tmp_path)
    assert with_sub != flat
    (tmp_path / "sub" / "c.py").write_text("z = 4\n")
    assert results.sources_hash(tmp_path) not in (flat, with_sub)
    (tmp_path / "sub" / "c.py").rename(tmp_path / "sub" / "d.py")  # same content, another path
    assert results.sources_hash(tmp_path) not in (flat, with_sub)
    before = results.sources_hash(tmp_path)
    (tmp_path / "sub" / "notes.txt").write_text("not code")
    assert results.sources_hash(tmp_path) == before  # only .py files count


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


# ---------------------------------------------------------------- memos carry no code, and are checked


def _same(a, b) -> bool:
    """Exactly equal: the same types all the way down (tuple is not list), tensors equal in dtype, shape, device,
    requires_grad and every element (NaN where NaN), floats equal bit for bit (NaN, -0.0), dict keys in order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.shape, a.device, a.requires_grad) == (b.dtype, b.shape, b.device, b.requires_grad) and \
            bool(((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


def test_same_sees_every_difference():
    """The round-trip tests below are only as strict as _same."""
    t = torch.ones(2)
    assert _same({"a": (1, t)}, {"a": (1, t.clone())})
    for a, b in [((1,), [1]), (1, 1.0), (True, 1), (-0.0, 0.0), ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
                 (t, t.half()), (t, t[None]), (t, t.clone().requires_grad_()), (t, t + 1),
                 (C.Circuit({"NM": [(1, 0)]}), C.Circuit({"NM": [(1, 1)]}))]:
        assert not _same(a, b), (a, b)


def test_checked_files_round_trip_every_kind_of_value(root):
    t = torch.arange(6.0).reshape(2, 3)
    value = {"int": 2**70, "float": 0.1, "nan": float("nan"), "neg0": -0.0, "inf": float("-inf"), "bool": True,
             "none": None, "str": "é\n$x", "list": [1, [2.5, "x"]], "tuple": (1, (2,), ()), "$dollar": 1,
             (0, 1): "tuple key", 3: {"int key": t}, "tensors": [t, t, t[0], t.half(), t.bfloat16(), t.int(),
                                                                 t > 2, torch.tensor(1.5), torch.zeros(0, 3)],
             "grad": torch.ones(2, requires_grad=True), "circuit": C.Circuit({"NM": [(1, 0)]}, everywhere=True),
             "thresholds": C.Thresholds(max_heads=4), "faith": CC.Faithfulness(1.0, 0.5, t[0], None),
             "discovery": C.Discovery(C.Circuit(), {"attribution": t}, C.Thresholds(), [{"heads": 3}], 1.5)}
    checked_files.write_checked(root / "v.safetensors", value)
    back = checked_files.read_checked(root / "v.safetensors")
    assert _same(back, value)
    assert back["tensors"][0] is back["tensors"][1]  # one tensor object stays one


def test_unregistered_types_are_refused_not_pickled(root):
    class Opaque:
        pass

    for value in ({"x": Opaque()}, {"x": {1, 2}}, np.float64(1.0), collections.OrderedDict(a=1)):
        with pytest.raises(TypeError, match="cannot be stored without code: register it with checked_files.register_type"):
            checked_files.write_checked(root / "v.safetensors", value)
    assert not list(root.rglob("*"))


def _memo_twice(name, fn, model, **key):
    """(the computed value, the value read back from its memo); fails if the second call computes."""
    first = results.memo(name, fn, model, **key)
    second = results.memo(name, lambda: pytest.fail(f"memo {name} was recomputed"), model, **key)
    return first, second


def test_every_memo_call_site_round_trips_exactly(root, capsys):
    """Each results.memo call of the package and the chapters (book/*.py), on the tiny models: the value read back
    is the value computed, exactly."""
    from ioi_utils.study import analyses, cmap_analyses, greater_than_study as gts
    from ioi_utils import study
    from ioi_utils.mechanisms import activation_patching, knockouts

    torch.set_num_threads(1)
    th = C.Thresholds(max_heads=4, n_describe=8)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    found = analyses.discover_cached(s, s.model, "base", th)
    assert _same(found, analyses.discover_cached(s, s.model, "base", th))
    circuit = C.Circuit({"NM": [(1, 0)], "OTH": [(0, 1)]}, everywhere=True)
    row = analyses.checkpoint_row(s, s.model, "base", circuit, 0, rediscover=True, n_rediscover=6)  # + discovery
    assert _same(row, analyses.checkpoint_row(s, s.model, "base", circuit, 0, rediscover=True, n_rediscover=6))
    small = cmap_analyses.cmap_subset(s.test, 4)
    assert _same(cmap_analyses.cmap_cached(s.model, s.model, small, "output", tags=("a", "b")),
                 cmap_analyses.cmap_cached(s.model, s.model, small, "output", tags=("a", "b")))
    assert _same(study.selection_cached(s, 0, 10, th, resamples=2), study.selection_cached(s, 0, 10, th, resamples=2))
    assert _same(study.discovery_seed_cached(s, 1, 10, th), study.discovery_seed_cached(s, 1, 10, th))
    assert _same(study.admission_seed_cached(s, 0, 10, th), study.admission_seed_cached(s, 0, 10, th))
    assert _same(analyses.held_out_logit_diff(s, s.model), analyses.held_out_logit_diff(s, s.model))
    signal = lambda: analyses.query_signal(s.model, small, cmap_analyses.cmap_subset(s.abc, 4), [(1, 0)], [(0, 1)])  # noqa: E731
    assert _same(vars(signal()), vars(signal()))
    checks = {  # chapter 2's checks of the base circuit (analyses.*_cached), each computed once, then read back
        "faithfulness": lambda: analyses.faithfulness_cached(s, circuit),
        "completeness": lambda: analyses.completeness_cached(s, circuit),
        "minimality": lambda: analyses.minimality_cached(s, circuit, threshold=0.01),
        "single_head_effects": lambda: analyses.single_head_effects_cached(s, [(0, 1), (1, 0)]),
        "mlp_knockout": lambda: analyses.mlp_knockout_cached(s),
        "mlp_group_knockout": lambda: analyses.mlp_knockout_cached(s, 3),
        "faithfulness_curve": lambda: analyses.faithfulness_curve_cached(s, [(1, 0), (0, 1)]),
        "minimal_subset": lambda: analyses.minimal_subset_cached(s, th),
    }
    for name, fn in checks.items():
        first = fn()
        with pytest.MonkeyPatch.context() as mp:  # the second call must read the memo: computing fails
            for mod in (C, activation_patching, knockouts):
                for fname in ("faithfulness", "faithfulness_curve", "completeness", "minimality", "minimal_subset",
                              "activation_patch_heads", "mlp_knockout"):
                    if hasattr(mod, fname):
                        mp.setattr(mod, fname, lambda *a, _n=fname, **k: pytest.fail(f"memo {_n} was recomputed"))
            assert _same(first, fn()), name
    g = gts.prepare("tiny-digits", 8, 8, 8, 8, device="cpu")
    heads = gts.discover(g, th)["heads"]
    assert _same(gts.discover(g, th), gts.discover(g, th))
    for once in (lambda: gts.checkpoint_row(g, g.model, "base", heads or [(0, 0)], 0, 8),
                 lambda: gts.mlp_knockout(g, g.model, 4), lambda: gts.cmap_effects(g, g.model, g.model, 4, ("a", "b"))):
        assert _same(once(), once())
    assert "warning" not in capsys.readouterr().err
    names = {p.name.split("-")[0] for p in results.memo_folder().iterdir()}
    assert names == {"discovery", "checkpoint_row", "checkpoint_own", "admission", "cmap_per_prompt", "held_out_logit_diff",
                     "selection_frequency", "query_signal",
                     "gt_discovery", "gt_checkpoint_row", "gt_mlp_knockout", "gt_cmap_attribution", *checks}


def _corrupt(path, how: str) -> None:
    """Damage a memo file one way."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "tensor byte":  # the last byte of the tensor data
        data[-1] ^= 1
    elif how == "json value":  # one digit of the stored float, inside the header's JSON
        i = data.index(b"0.25")
        data[i + 3:i + 4] = b"6"
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "tensor byte", "json value", "empty"])
def test_corrupt_memo_is_recomputed_with_one_line(root, tiny, capsys, how):
    value = {"x": 0.25, "t": torch.arange(4.0)}
    calls = []
    fn = lambda: calls.append(1) or value  # noqa: E731
    results.memo("m", fn, tiny)
    [path] = results.memo_folder().iterdir()
    _corrupt(path, how)
    assert _same(results.memo("m", fn, tiny), value) and len(calls) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: memo m: {path.name} ") and line.endswith("; recomputing it")
    assert _same(checked_files.read_checked(path), value) and len(calls) == 2  # stored afresh


def test_memo_files_never_run_code(root, tiny, capsys):
    """A pickle dropped where a memo or an old pickle memo would be is never unpickled: the value is recomputed."""
    import io

    results.memo("m", lambda: 1, tiny)
    [path] = results.memo_folder().iterdir()
    marker = root / "pwned"
    buf = io.BytesIO()
    torch.save(_Plant(str(marker)), buf)
    path.write_bytes(buf.getvalue())
    assert results.memo("m", lambda: 2, tiny) == 2
    path.unlink()
    path.with_suffix(".pt").write_bytes(buf.getvalue())
    assert results.memo("m", lambda: 3, tiny) == 3
    assert not marker.exists()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: memo m: ") and "does not load" in err[0]
    assert err[1] == f"warning: memo m: {path.stem}.pt is an old pickle memo, never read; recomputing it"


class _Plant:
    """Unpickled, it creates a file (code run from a memo file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_memo_on_a_full_disk_still_returns_its_value(root, tiny, monkeypatch, capsys):
    def full(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checked_files, "save_file", full)
    assert _same(results.memo("m", lambda: {"t": torch.ones(2)}, tiny), {"t": torch.ones(2)})
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: memo m not stored ([Errno 28] disk full while writing ") and line.endswith(
        "(nothing half-written was kept)); it will be recomputed next time")
    assert not list(root.rglob("*.safetensors")) and not list(root.rglob(".*.tmp"))


def test_unreadable_record_is_refused_in_one_line(root):
    results.record("p", "intro", {"a": 1}, execution="e")
    (root / "p" / "intro.json").write_text('{"execution": ')
    with pytest.raises(results.StaleRecord, match=r"^intro.json of profile 'p' is unreadable: rerun chapter 'intro'$"):
        results.load("p", "e")


def test_a_cmap_memo_is_keyed_by_the_weights_not_by_the_names(root, monkeypatch):
    """Chapter 4's benign source is chapter 3's fine-tuned model under another name: the second call reads the memo."""
    from ioi_utils.study import cmap_analyses
    from ioi_utils import study
    from ioi_utils.mechanisms import activation_patching

    torch.set_num_threads(1)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    small = cmap_analyses.cmap_subset(s.test, 4)
    first = cmap_analyses.cmap_cached(s.model, s.model, small, "output", tags=("tuned", "base"))
    monkeypatch.setattr(activation_patching, "cmap", lambda *a, **k: pytest.fail("the CMAP memo was recomputed"))
    assert torch.equal(first, cmap_analyses.cmap_cached(s.model, s.model, small, "output", tags=("clean (benign)", "base")))
