"""Shared pytest setup: offline Hugging Face, nbval output filtering, the `book` marker.

nbval loads this file only when `tests/` is among pytest's arguments, e.g.
`pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg tests/`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

import nbval_numbers

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
# Notebook kernels started by nbval inherit this, so `import ioi_utils` works even without `pip install -e .`.
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys([str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
)

# nbval has no command-line switch to skip MIME types. circuitsvis HTML/JS embeds element ids and
# float-formatted data, so only text outputs (stdout, text/plain, errors) are compared. PNGs are never compared.
_EXTRA_SKIP = ("text/html", "application/javascript")


def _patch_nbval() -> None:
    """Add text/html and application/javascript to nbval's skipped output keys."""
    try:
        import nbval.plugin
    except ImportError:
        return
    original = nbval.plugin.IPyNbFile.__init__
    if getattr(original, "_ioi_patched", False):
        return

    def _init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.skip_compare = tuple(self.skip_compare) + _EXTRA_SKIP

    _init._ioi_patched = True
    nbval.plugin.IPyNbFile.__init__ = _init


_patch_nbval()
nbval_numbers.patch_nbval()  # long floats compared at a stated precision (tests/nbval_numbers.py)


def pytest_configure(config: pytest.Config) -> None:
    """Register the project's extra markers."""
    config.addinivalue_line("markers", "book: checks the built HTML book in _build/html (needs chromium)")


@pytest.fixture(scope="session")
def tiny_gemma():
    """A random 4-layer Gemma-3 (model, tokenizer): 4 query heads sharing 1 key/value head, q/k norms, norms on
    the attention and MLP outputs before the residual add (ln1_post / ln2_post) with non-trivial weights, and
    sliding-window layers whose window (6 tokens) is shorter than an IOI prompt: the architecture of
    gemma3-270m at toy size, for unit tests that need it without the weights."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from ioi_utils import models

    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens re-reads config and tokenizer from a folder
        models.tiny_tokenizer().save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        torch.manual_seed(0)
        cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=6,
                               layer_types=["sliding_attention"] * 2 + ["full_attention", "sliding_attention"],
                               max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg.architectures = ["Gemma3ForCausalLM"]  # TransformerLens picks its adapter by this name
        hf = Gemma3ForCausalLM(cfg)
        with torch.no_grad():  # HF initialises Gemma's norm weights to 0 (a gain of 1 + 0): make them matter
            for name, param in hf.named_parameters():
                if "norm" in name:
                    param.normal_(0, 0.5)
        cfg.save_pretrained(tmp)
        model = models._boot(tmp, hf, tok, torch.device("cpu"), torch.float32)
    return model, tok


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under --nbval, build the dequantized SmolLM2 and Gemma-3 caches before the first notebook runs: the smoke
    references were recorded with the caches present, and the one-time conversion would print its progress bars
    into the stderr of whichever notebook loads the model first."""
    if not session.config.getoption("nbval", default=False):
        return
    from ioi_utils import models

    builds = [models.smollm2_folder]
    if (Path(__file__).parent / "notebooks" / "second_model.ipynb").exists():  # the second model's chapter: Gemma-3
        builds.append(models.gemma_folder)
    for build in builds:
        try:
            build()
        except models.ModelUnavailableError:
            pass  # not installed: the notebooks that need it fail on their own, with that error
