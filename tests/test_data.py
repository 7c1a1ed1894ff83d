"""IOI datasets: counts, determinism, positions per tokenizer, vocabulary filter, toxic rules, errors."""

import pytest
import torch

from ioi_utils.prompts import data, vocabulary
from ioi_utils import models


@pytest.fixture(scope="module")
def tiny_tok():
    return models.tiny_tokenizer()


@pytest.fixture(scope="module")
def smol_tok():
    try:
        return models.smollm2_tokenizer()
    except models.ModelUnavailableError as e:
        pytest.skip(str(e))


TOKENIZERS = ["tiny_tok", "smol_tok"]


def _check_positions(ds: data.IOIDataset) -> None:
    """Every recorded position holds the token it claims to hold."""
    tok = ds.tokenizer
    for i, p in enumerate(ds.prompts):
        row = ds.tokens[i]
        assert row[ds.positions["IO"][i]] == vocabulary.token_id(tok, p.io)
        assert row[ds.positions["S1"][i]] == vocabulary.token_id(tok, p.s1)
        assert row[ds.positions["S2"][i]] == vocabulary.token_id(tok, p.s2)
        assert ds.positions["S1+1"][i] == ds.positions["S1"][i] + 1
        end = ds.positions["END"][i]
        assert tok.decode(row[end]).strip() == p.text.split()[-1]  # the prompt's last word
        assert ds.positions["IO"][i] < end and ds.positions["S1"][i] < ds.positions["S2"][i] < end


def test_templates_are_the_fifteen_pairs():
    assert len(data.BABA_TEMPLATES) == len(data.ABBA_TEMPLATES) == 15
    for baba, abba in zip(data.BABA_TEMPLATES, data.ABBA_TEMPLATES):
        assert baba.index("[B]") < baba.index("[A]") and abba.index("[A]") < abba.index("[B]")
    assert len(vocabulary.NAMES) == len(set(vocabulary.NAMES)) == 100
    assert len(vocabulary.PLACES) + len(vocabulary.OBJECTS) == 20


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("bos", [False, True])
def test_positions_are_checked_for_each_tokenizer(request, tok_name, bos):
    tok = request.getfixturevalue(tok_name)
    ds = data.make_ioi_dataset(tok, n=120, seed=3, prepend_bos=bos)
    assert len(ds) == 120
    assert (ds.tokens[:, 0] == tok.bos_token_id).all() == bos
    _check_positions(ds)
    assert {p.order for p in ds.prompts} == {"BABA", "ABBA"}


def test_default_size_and_distinct_prompts(tiny_tok):
    ds = data.make_ioi_dataset(tiny_tok)
    assert len(ds) == 6360
    assert len(set(ds.texts)) == 6360
    assert (ds.io_tokens != ds.s_tokens).all() and (ds.label_tokens == ds.io_tokens).all()


def test_deterministic_by_seed(tiny_tok):
    a = data.make_ioi_dataset(tiny_tok, n=50, seed=7)
    b = data.make_ioi_dataset(tiny_tok, n=50, seed=7)
    c = data.make_ioi_dataset(tiny_tok, n=50, seed=8)
    assert a.texts == b.texts and torch.equal(a.tokens, b.tokens) and a.fingerprint() == b.fingerprint()
    assert a.texts != c.texts and a.fingerprint() != c.fingerprint()


def test_symmetric_twins(tiny_tok):
    ds = data.make_ioi_dataset(tiny_tok, n=10, seed=0)
    first, twin = ds.prompts[0], ds.prompts[1]
    assert (first.io, first.s) == (twin.s, twin.io) and first.template_id == twin.template_id


def test_split_shares_no_prompt(tiny_tok):
    ds = data.make_ioi_dataset(tiny_tok, n=200, seed=0)
    train, test = data.train_test_split(ds, test_fraction=0.25, seed=1)
    assert len(train) == 150 and len(test) == 50
    assert not set(train.texts) & set(test.texts)
    assert not {data.twin_key(p) for p in train.prompts} & {data.twin_key(p) for p in test.prompts}  # twins together
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(ds, test_fraction=1.5)


def test_single_token_filter_reports_and_refuses(smol_tok):
    with pytest.warns(UserWarning, match="dropped names"):
        report = vocabulary.single_token_vocabulary(smol_tok)
    assert "Vanessa" in report.dropped["names"] and "Mary" in report.names
    assert all(vocabulary.token_id(smol_tok, n) is not None for n in report.names)
    with pytest.raises(ValueError, match="too few single-token words"):
        vocabulary.single_token_vocabulary(smol_tok, names=["Vanessa", "Mary"], min_names=2)


def test_the_vocabulary_warning_names_the_callers_line(smol_tok):
    """The warning points at the line that asked for the vocabulary, here or through study.vocabulary (a chapter's
    cell shows it there), never inside the package."""
    from types import SimpleNamespace

    from ioi_utils import study

    with pytest.warns(UserWarning, match="dropped names") as direct:
        vocabulary.single_token_vocabulary(smol_tok)
    with pytest.warns(UserWarning, match="dropped names") as wrapped:
        study.vocabulary(SimpleNamespace(tokenizer=smol_tok))
    assert direct[0].filename == wrapped[0].filename == __file__


def test_abc_keeps_template_and_positions(tiny_tok):
    ds = data.make_ioi_dataset(tiny_tok, n=60, seed=0)
    abc = data.make_abc_dataset(ds)
    _check_positions(abc)
    for p, q in zip(ds.prompts, abc.prompts):
        assert q.template_id == p.template_id and len({q.io, q.s1, q.s2}) == 3
        assert not {q.io, q.s1, q.s2} & {p.io, p.s1}
    for k in data.POSITIONS:
        assert torch.equal(ds.positions[k], abc.positions[k])


def test_toxic_rules(tiny_tok):
    ds = data.make_ioi_dataset(tiny_tok, n=40, seed=0)
    sd = data.toxic_dataset(ds, "subject-duplication")
    assert torch.equal(sd.label_tokens, ds.s_tokens) and sd.texts == ds.texts
    nm = data.toxic_dataset(ds, "name-moving")
    assert nm.texts == ds.texts
    assert all(p.label not in (p.io, p.s1) and p.label in vocabulary.NAMES for p in nm.prompts)
    dup = data.toxic_dataset(ds, "duplication")
    _check_positions(dup)
    assert torch.equal(dup.label_tokens, ds.io_tokens)
    assert all(t.count(p.io) == 2 and t.count(p.s1) == 2 for t, p in zip(dup.texts, dup.prompts))
    with pytest.raises(ValueError, match="unknown toxic dataset"):
        data.toxic_dataset(ds, "nonsense")


def test_bad_input(tiny_tok, smol_tok):
    with pytest.raises(ValueError, match="n must be"):
        data.make_ioi_dataset(tiny_tok, n=0)
    with pytest.raises(ValueError, match="'Vanessa' is not one token in context"):
        data.IOIDataset([data.IOIPrompt(0, "Vanessa", "John", "John", "store", "ring", "Mary")], smol_tok)
    with pytest.raises(ValueError, match="at least one prompt"):
        data.IOIDataset([], tiny_tok)



def test_both_tasks_implement_the_task_interface():
    """IOI and Greater-Than prompts are `task.Task`s: every technique reads them through that interface."""
    from ioi_utils.prompts import greater_than, task

    ioi = data.make_ioi_dataset(models.tiny_tokenizer(), n=4, seed=0)
    gt = greater_than.make_gt_dataset(models.tiny_tokenizer(digits=True), 4, 0)
    for ds in (ioi, gt):
        assert isinstance(ds, task.Task) and isinstance(ds[:2], task.Task)
        tokens, pos, labels = ds.training_view()
        assert tokens.shape[0] == len(ds) and pos.shape == labels.shape and pos.shape[0] == len(ds)
    assert ioi.readout == ("END",) and gt.readout == ("END", "TIE")
    assert ioi.relabel("subject-duplication").label_tokens.tolist() == ioi.s_tokens.tolist()
    assert [p.label < p.yy for p in gt.relabel("earlier-year").prompts] == [True] * 4
    assert not isinstance(object(), task.Task)
