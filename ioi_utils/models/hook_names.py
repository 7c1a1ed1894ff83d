"""The names of the hook points this package reads and writes, built in one place.

TransformerLens names a hook point by its block and its place in the block: ``blocks.{layer}.{point}``, e.g.
``blocks.3.attn.hook_z`` (a layer's per-head outputs before W_O, [batch, seq, n_heads, d_head]),
``blocks.3.attn.hook_pattern`` (attention probabilities, [batch, n_heads, query, key]) or
``blocks.3.hook_resid_pre`` (the residual stream entering block 3, [batch, seq, d_model]). TransformerBridge
(TransformerLens 4.x) keeps HookedTransformer's names, so the same strings work on every model the package loads.
"""

from __future__ import annotations


def block(layer: int, point: str) -> str:
    """A hook point inside block `layer`, e.g. block(3, "hook_mlp_out") -> "blocks.3.hook_mlp_out"."""
    return f"blocks.{layer}.{point}"


def attn(layer: int, point: str) -> str:
    """A hook point of a layer's attention, e.g. attn(3, "hook_q") -> "blocks.3.attn.hook_q"."""
    return block(layer, f"attn.{point}")


def z(layer: int) -> str:
    """A layer's per-head outputs before W_O: [batch, seq, n_heads, d_head]."""
    return attn(layer, "hook_z")


def pattern(layer: int) -> str:
    """A layer's attention probabilities: [batch, n_heads, query, key]."""
    return attn(layer, "hook_pattern")


def resid(layer: int, where: str) -> str:
    """The residual stream at block `layer`: "pre" (entering it), "mid" (after attention) or "post" (leaving it)."""
    if where not in ("pre", "mid", "post"):
        raise ValueError(f"residual position must be 'pre', 'mid' or 'post', got {where!r}")
    return block(layer, f"hook_resid_{where}")


def mlp_out(layer: int) -> str:
    """What a layer's MLP adds to the residual (after any post-MLP norm): [batch, seq, d_model]."""
    return block(layer, "hook_mlp_out")


def final_resid(model) -> str:
    """The residual stream leaving the last block (before the final norm)."""
    return resid(model.cfg.n_layers - 1, "post")
