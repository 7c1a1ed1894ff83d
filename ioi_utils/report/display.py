"""Small HTML views for the book that rely on the vendored book/_static/circuitsvis.js."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Sequence

import torch
from jaxtyping import Float
from IPython.display import HTML

_COUNTER = itertools.count()
_DECIMALS = 4
# Polls for window.CircuitsVis (loaded once per page from _static/circuitsvis.js); gives up after ~10 s,
# so in a live Jupyter session without that script the div simply stays empty.
_SNIPPET = (
    '<div id="{uid}" style="margin: 15px 0;"></div>\n'
    "<script>(function render(tries) {{"
    " if (window.CircuitsVis) {{ CircuitsVis.render({uid_js}, CircuitsVis.{element}, {props}); }}"
    " else if (tries > 0) {{ setTimeout(function () {{ render(tries - 1); }}, 50); }}"
    " }})(200);</script>"
)


def _props_json(props: dict[str, Any]) -> str:
    """Serialise props deterministically (sorted keys, compact)."""
    return json.dumps(props, sort_keys=True, separators=(",", ":"))


def element_id(props_json: str) -> str:
    """Deterministic element id: per-kernel counter plus a hash of the content."""
    digest = hashlib.sha1(props_json.encode()).hexdigest()[:8]
    return f"cv-{next(_COUNTER)}-{digest}"


def circuitsvis_html(element: str, props: dict[str, Any]) -> HTML:
    """HTML that renders CircuitsVis.<element>(props) with the page's shared circuitsvis.js."""
    props_json = _props_json(props)
    uid = element_id(props_json)
    return HTML(_SNIPPET.format(uid=uid, uid_js=json.dumps(uid), element=element, props=props_json))


def _check_shapes(tokens: Sequence[str], attention: torch.Tensor, head_names: Sequence[str]) -> None:
    """Raise ValueError unless attention is [len(head_names), len(tokens), len(tokens)]."""
    expected = (len(head_names), len(tokens), len(tokens))
    if tuple(attention.shape) != expected:
        raise ValueError(f"attention has shape {tuple(attention.shape)}, expected [n_heads, seq, seq] = {expected}")


def attention_view(tokens: list[str], attention: Float[torch.Tensor, "n_heads seq seq"], head_names: list[str]) -> HTML:
    """CircuitsVis AttentionHeads view of attention [n_heads, seq, seq], one tile per named head."""
    attention = torch.as_tensor(attention).detach().float().cpu()
    _check_shapes(tokens, attention, head_names)
    props = {
        "attention": attention.double().round(decimals=_DECIMALS).tolist(),
        "tokens": [str(t) for t in tokens],
        "attentionHeadNames": [str(h) for h in head_names],
        "maskUpperTri": True,
    }
    return circuitsvis_html("AttentionHeads", props)
