"""Direct logit attribution, attention readouts and OV projections of IOI prompts.

Read-outs of one forward pass, no patching (for interventions, MLP knockouts among them, see `mechanisms`):

- Direct logit attribution (DLA): the residual stream at END is a sum of components (embeddings, each head's
  z @ W_O, each MLP's output, biases). Through the final norm, frozen at its cached scale, each component's
  dot product with W_U[IO] - W_U[S] is its direct contribution to the logit difference; the contributions
  add up exactly to the model's (`logit_attribution`, `head_dla` [L, H], `mlp_dla` [L]). Where a block norms
  its attention output before adding it (Gemma-3's ln1_post), that norm too is a linear map at its cached
  scale, so a head's share of the residual is its z @ W_O through it.
- Attention readouts: mean attention from one role position to another (`attention_to`: END -> IO, END -> S2,
  ...), previous-token, duplicate-token and induction scores ([L, H]), Wang's class signatures.
- OV copy scores (`ov_copy_scores`): whether a head's OV circuit alone copies a name to the top of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset

Head = tuple[int, int]  # (layer, query head)
NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


def _device(model) -> torch.device:
    """Device of a model's parameters."""
    return next(model.parameters()).device


def _filter(names_filter: NamesFilter) -> Callable[[str], bool] | None:
    """A hook-name predicate from None (all hooks), a name, a list of names or a predicate."""
    if names_filter is None or callable(names_filter):
        return names_filter
    names = {names_filter} if isinstance(names_filter, str) else set(names_filter)
    return lambda n: n in names


@torch.no_grad()
def _run(model, tokens: torch.Tensor, keep: Callable[[str], bool] | None) -> dict[str, torch.Tensor]:
    """One run_with_cache on a batch of tokens; hook name -> activation (float32, CPU)."""
    _, cache = model.run_with_cache(tokens.to(_device(model)), names_filter=keep)
    return {name: act.detach().float().cpu() for name, act in cache.items()}


def run_cache(model, ds: IOIDataset, names_filter: NamesFilter = None, batch_size: int = 32,
              progress: bool = False) -> dict[str, Float[torch.Tensor, "..."]]:
    """Batched run_with_cache over a dataset; hook name -> activations concatenated on the CPU.

    Hooks whose leading dimension is not the batch (positional ids, rotary tables: [1, ...]) are
    batch-independent and kept from the first batch. Ask only for the hooks you need: the full cache of
    SmolLM2 holds [batch, seq, 49152] logits twice.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keep, parts, sizes = _filter(names_filter), {}, []
    for start in tqdm(range(0, len(ds), batch_size), desc="caching", disable=not progress, leave=False):
        tokens = ds.tokens[start : start + batch_size]
        sizes.append(len(tokens))
        for name, act in _run(model, tokens, keep).items():
            parts.setdefault(name, []).append(act)
    out = {}
    for name, acts in parts.items():
        batched = all(a.shape[0] == n for a, n in zip(acts, sizes))
        out[name] = torch.cat(acts) if batched else acts[0]
    return out


def _at(act: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """act[i, pos[i]] for act [batch, seq, ...] and pos [batch] -> [batch, ...]."""
    return act[torch.arange(len(pos)), pos]


def _end_acts(model, ds: IOIDataset, names: list[str], cache: Mapping[str, torch.Tensor] | None,
              batch_size: int = 32) -> dict[str, torch.Tensor]:
    """The given hooks at each prompt's END position ([batch, ...]), from a cache or from batched runs."""
    end = ds.positions["END"]
    if cache is not None:
        missing = [n for n in names if n not in cache]
        if missing:
            raise ValueError(f"cache lacks hooks {missing[:3]}{'...' if len(missing) > 3 else ''}; pass cache=None")
        if any(cache[n].shape[0] != len(ds) for n in names):
            raise ValueError(f"cache has a batch size other than the dataset's ({len(ds)} prompts)")
        return {n: _at(cache[n].float().cpu(), end) for n in names}
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for start in range(0, len(ds), batch_size):
        acts = _run(model, ds.tokens[start : start + batch_size], _filter(names))
        for n in names:
            parts[n].append(_at(acts[n], end[start : start + batch_size]))
    return {n: torch.cat(v) for n, v in parts.items()}


@dataclass(frozen=True)
class FinalNorm:
    """A norm as a linear map given its cached scale: (x [- mean(x)]) / scale * w + b (the final norm, or
    a block's norm on its attention output)."""

    center: bool  # LayerNorm centres, RMSNorm does not
    w: torch.Tensor  # [d_model] the gain the norm applies (ones if the model has no final norm)
    b: torch.Tensor  # [d_model] (zeros if absent)


@torch.no_grad()
def norm_map(norm, d_model: int, center: bool) -> FinalNorm:
    """A norm's gain and bias as it applies them, read off by normalising two probes: the zero vector gives
    the bias, and c (+1, -1, +1, ...) (mean 0, scale c = 2^30, whose square drowns any eps) normalises to
    exactly (+1, -1, ...) in float32, so its output minus the bias, sign-corrected, is the gain. Llama's and
    GPT-2's norms apply their stored weight w, Gemma's 1 + w: a probe that matches one of them (to float
    error) is replaced by it exactly."""
    dev = next(norm.parameters()).device
    sign = torch.ones(d_model, device=dev)
    sign[1::2] = -1
    b = norm(torch.zeros(1, 1, d_model, device=dev))[0, 0].float().cpu()
    w = (norm(2.0 ** 30 * sign[None, None])[0, 0].float().cpu() - b) * sign.cpu()
    return FinalNorm(center, _snap(w, getattr(norm, "w", None), 1), _snap(b, getattr(norm, "b", None), 0))


def _snap(probe: torch.Tensor, stored: torch.Tensor | None, offset: float) -> torch.Tensor:
    """The stored parameter (or offset + it, Gemma's form of a gain) where the probe matches it, else the probe."""
    if stored is not None:
        for exact in (stored.detach().float().cpu(), offset + stored.detach().float().cpu()):
            if torch.allclose(probe, exact, rtol=1e-5, atol=1e-6):
                return exact
    return probe


def final_norm(model) -> FinalNorm:
    """The final norm's type, gain and bias as the model applies them (nothing folded)."""
    kind, d = str(getattr(model.cfg, "normalization_type", "LN")), model.cfg.d_model
    ln = getattr(model, "ln_final", None)
    if ln is None:
        return FinalNorm(kind.startswith("LN"), torch.ones(d), torch.zeros(d))
    return norm_map(ln, d, kind.startswith("LN"))


def _through(norm: FinalNorm | None, out: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """out [batch, ..., d_model] through a norm as a linear map (scale [batch, 1]); unchanged if norm is None."""
    if norm is None:
        return out
    out = out - out.mean(-1, keepdim=True) if norm.center else out
    return out / scale.view(-1, *[1] * (out.dim() - 1)) * norm.w


def _attn_post_norm(model, layer: int) -> FinalNorm | None:
    """The norm a layer applies to its attention output before the residual add (Gemma's ln1_post), or None."""
    post = getattr(model.blocks[layer], "ln1_post", None)
    kind = str(getattr(model.cfg, "normalization_type", "LN"))
    return None if post is None else norm_map(post, model.cfg.d_model, kind.startswith("LN"))


def _unembed_dirs(model, tokens: torch.Tensor) -> torch.Tensor:
    """Unembedding columns of some tokens: [batch] -> [batch, d_model]."""
    return model.W_U.detach().float().cpu()[:, tokens].T


def _readout(model, scale: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-prompt vector u with (component @ u) = the component's contribution to logit(tokens) through
    ln_final: [batch, d_model]. scale is ln_final's cached scale at END, [batch, 1]."""
    norm = final_norm(model)
    u = _unembed_dirs(model, tokens) * norm.w / scale
    return u - u.mean(-1, keepdim=True) if norm.center else u  # centring moved onto the readout


def _bias_logit(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-prompt logit contribution of the final-norm bias and unembedding bias: [batch]."""
    out = _unembed_dirs(model, tokens) @ final_norm(model).b
    b_u = getattr(model, "b_U", None)
    return out + (b_u.detach().float().cpu()[tokens] if b_u is not None else 0)


def dla_hooks(model) -> list[str]:
    """The hooks direct logit attribution needs."""
    n = model.cfg.n_layers
    names = ["hook_embed", "ln_final.hook_scale"] + [hook_names.z(l) for l in range(n)]
    names += [hook_names.mlp_out(l) for l in range(n)]  # after any post-MLP norm: the MLP's share of the residual
    names += [hook_names.block(l, "ln1_post.hook_scale") for l in range(n) if _attn_post_norm(model, l) is not None]
    return names + (["hook_pos_embed"] if _has_pos_embed(model) else [])


def _has_pos_embed(model) -> bool:
    """True for models with learned absolute position embeddings (GPT-2), False for rotary (Llama)."""
    return str(getattr(model.cfg, "positional_embedding_type", "standard")) == "standard"


def _post_scale(acts: Mapping[str, torch.Tensor], layer: int, post: FinalNorm | None) -> torch.Tensor | None:
    """The cached END scale [batch, 1] of a layer's post-attention norm (None without one)."""
    return None if post is None else acts[hook_names.block(layer, "ln1_post.hook_scale")]


def _heads_out(model, acts: Mapping[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Each head's END share of the residual, z @ W_O (through a post-attention norm at its cached scale):
    [batch, n_heads, d_model]. Their sum plus the bias term is the layer's attention output."""
    w_o = model.blocks[layer].attn.W_O.detach().float().cpu()  # [n_heads, d_head, d_model]
    post = _attn_post_norm(model, layer)
    return _through(post, torch.einsum("bhd,hdm->bhm", acts[hook_names.z(layer)], w_o), _post_scale(acts, layer, post))


def _attn_bias_out(model, acts: Mapping[str, torch.Tensor], layer: int, batch: int) -> torch.Tensor:
    """A layer's END attention bias share of the residual, b_O (through a post-attention norm, plus that norm's
    own bias): [batch, d_model]; zeros where there is neither."""
    b_o, post = model.blocks[layer].attn.b_O, _attn_post_norm(model, layer)
    out = torch.zeros(batch, model.cfg.d_model) if b_o is None else b_o.detach().float().cpu().expand(batch, -1)
    return out if post is None else _through(post, out, _post_scale(acts, layer, post)) + post.b


@dataclass
class Attribution:
    """Per-prompt direct logit attribution of every residual component at END onto a readout."""

    embed: torch.Tensor  # [batch] token (+ position) embeddings
    heads: torch.Tensor  # [batch, n_layers, n_heads]
    attn_bias: torch.Tensor  # [batch, n_layers] b_O (zeros if the model has none)
    mlp: torch.Tensor  # [batch, n_layers]
    bias: torch.Tensor  # [batch] final-norm bias and unembedding bias

    @property
    def total(self) -> Float[torch.Tensor, "batch"]:
        """Sum of all components, [batch]: equals the model's logit (difference) up to float error."""
        return self.embed + self.heads.sum((1, 2)) + self.attn_bias.sum(1) + self.mlp.sum(1) + self.bias


def _attribute(model, acts: Mapping[str, torch.Tensor], u: torch.Tensor, bias: torch.Tensor) -> Attribution:
    """Project every END component (in acts) onto the per-prompt readout u [batch, d_model]."""
    n = model.cfg.n_layers
    emb = acts["hook_embed"] + (acts["hook_pos_embed"] if "hook_pos_embed" in acts else 0)
    heads = torch.stack([torch.einsum("bhm,bm->bh", _heads_out(model, acts, l), u) for l in range(n)], 1)
    attn_bias = torch.stack([(_attn_bias_out(model, acts, l, len(u)) * u).sum(-1) for l in range(n)], 1)
    mlp = torch.stack([(acts[hook_names.mlp_out(l)] * u).sum(-1) for l in range(n)], 1)
    return Attribution((emb * u).sum(-1), heads, attn_bias, mlp, bias)


def _readout_tokens(ds: IOIDataset, token: str) -> list[tuple[int | torch.Tensor, torch.Tensor]]:
    """(sign or weight [batch], [batch] token ids) pairs whose weighted logits make up the readout: the task's own
    (`ds.dla_pairs`; IOI: by `token`, "IO-S", "IO" or "S"; Greater-Than: its one readout whatever `token` says)."""
    return ds.dla_pairs(token)


def _attribution(model, ds: IOIDataset, acts: Mapping[str, torch.Tensor], token: str) -> Attribution:
    """Attribution of cached END activations onto the readout named by token."""
    pairs, scale = _readout_tokens(ds, token), acts["ln_final.hook_scale"]  # scale: [batch, 1]
    u = sum((sign[:, None] if torch.is_tensor(sign) else sign) * _readout(model, scale, t) for sign, t in pairs)
    bias = sum(sign * _bias_logit(model, t) for sign, t in pairs)
    return _attribute(model, acts, u, bias)


def logit_attribution(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None,
                      token: str = "IO-S", batch_size: int = 32) -> Attribution:
    """Exact per-prompt DLA at END of every component onto logit(IO) - logit(S) ("IO-S"), logit(IO) ("IO")
    or logit(S) ("S"), through ln_final as a linear map with its cached scale."""
    _readout_tokens(ds, token)
    return _attribution(model, ds, _end_acts(model, ds, dla_hooks(model), cache, batch_size), token)


def head_dla_per_prompt(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
                        ) -> Float[torch.Tensor, "batch n_layers n_heads"]:
    """[batch, n_layers, n_heads] direct logit attribution of each head's END output onto W_U[IO] - W_U[S]."""
    return logit_attribution(model, ds, cache).heads


def head_dla(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
             ) -> Float[torch.Tensor, "n_layers n_heads"]:
    """[n_layers, n_heads] mean direct logit attribution of each head onto logit(IO) - logit(S)."""
    return head_dla_per_prompt(model, ds, cache).mean(0)


def mlp_dla(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
            ) -> Float[torch.Tensor, "n_layers"]:
    """[n_layers] mean direct logit attribution of each MLP's END output onto logit(IO) - logit(S)."""
    return logit_attribution(model, ds, cache).mlp.mean(0)


def copy_scores(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
                ) -> dict[str, Float[torch.Tensor, "n_layers n_heads"]]:
    """{"IO": [L, H], "S": [L, H]}: mean projection of each head's END output (z @ W_O, through ln_final
    with the cached scale) onto the unembedding of IO and of S. copy["IO"] - copy["S"] == head_dla."""
    acts = _end_acts(model, ds, dla_hooks(model), cache)
    return {t: _attribution(model, ds, acts, t).heads.mean(0) for t in ("IO", "S")}


# ---------------------------------------------------------------- attention readouts


def _patterns(model, ds: IOIDataset, cache: Mapping[str, torch.Tensor] | None, batch_size: int = 32) -> torch.Tensor:
    """Attention patterns of every layer: [n_layers, batch, n_heads, q, k] on the CPU."""
    names = [hook_names.pattern(l) for l in range(model.cfg.n_layers)]
    if cache is None:
        cache = run_cache(model, ds, names, batch_size)
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(f"cache lacks hooks {missing[:3]}{'...' if len(missing) > 3 else ''}; pass cache=None")
    if cache[names[0]].shape[0] != len(ds):
        raise ValueError(f"cache has batch size {cache[names[0]].shape[0]}, dataset {len(ds)}")
    return torch.stack([cache[n].float().cpu() for n in names])


def _position(ds: IOIDataset, name: str) -> torch.Tensor:
    """ds.positions[name] with a readable error."""
    if name not in ds.positions:
        raise ValueError(f"unknown position {name!r}; known: {', '.join(ds.positions)}")
    return ds.positions[name]


def attention_to(model, ds: IOIDataset, query: str = "END", key: str = "IO",
                 cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None, per_prompt: bool = False
                 ) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "batch n_layers n_heads"]:
    """[n_layers, n_heads] mean attention probability from position `query` to position `key`
    ([batch, n_layers, n_heads] if per_prompt)."""
    q, k = _position(ds, query), _position(ds, key)
    pat = _patterns(model, ds, cache)  # [L, b, H, q, k]
    rows = torch.arange(len(ds))
    out = pat[:, rows, :, q, k]  # [b, L, H]: advanced indices separated by a slice go first
    return out if per_prompt else out.mean(0)


def previous_token_scores(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None,
                          over: str = "S1+1") -> Float[torch.Tensor, "n_layers n_heads"]:
    """[L, H] mean attention to the previous token: from S1+1 to S1 (over="S1+1", the IOI reading), or
    averaged over every query position 1..END of each prompt (over="all", padding excluded)."""
    if over == "S1+1":
        return attention_to(model, ds, "S1+1", "S1", cache)
    if over != "all":
        raise ValueError(f"over must be 'S1+1' or 'all', got {over!r}")
    pat = _patterns(model, ds, cache)  # [L, b, H, s, s]
    sub = pat.diagonal(offset=-1, dim1=-2, dim2=-1)  # [L, b, H, s-1]: query i+1 -> key i
    valid = (torch.arange(sub.shape[-1])[None, :] < ds.positions["END"][:, None]).float()  # [b, s-1]
    per_prompt = (sub * valid[None, :, None]).sum(-1) / valid.sum(-1)[None, :, None]  # [L, b, H]
    return per_prompt.mean(1)


def duplicate_token_scores(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
                           ) -> Float[torch.Tensor, "n_layers n_heads"]:
    """[L, H] mean attention from S2 to S1 (the earlier copy of the same token)."""
    return attention_to(model, ds, "S2", "S1", cache)


def induction_scores(model, ds: IOIDataset, cache: Mapping[str, Float[torch.Tensor, "..."]] | None = None
                     ) -> Float[torch.Tensor, "n_layers n_heads"]:
    """[L, H] mean attention from S2 to S1+1 (the token after the earlier copy) on the IOI prompts."""
    return attention_to(model, ds, "S2", "S1+1", cache)


@torch.no_grad()
def induction_scores_random(model, seq_len: int = 50, n: int = 20,
                            seed: int = 0) -> Float[torch.Tensor, "n_layers n_heads"]:
    """[L, H] classic induction score: on n sequences of seq_len random tokens repeated twice (after a
    BOS token if model.prepend_bos), mean attention from each second-copy token to the token that
    followed its first copy (query position q -> key q - seq_len + 1)."""
    if seq_len < 2 or n < 1:
        raise ValueError(f"need seq_len >= 2 and n >= 1, got seq_len={seq_len}, n={n}")
    bos = bool(getattr(model, "prepend_bos", False)) and getattr(model.tokenizer, "bos_token_id", None) is not None
    if 2 * seq_len + bos > model.cfg.n_ctx:
        raise ValueError(f"2 * seq_len (+ BOS) = {2 * seq_len + bos} exceeds the context of {model.cfg.n_ctx}")
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randint(0, model.cfg.d_vocab, (n, seq_len), generator=gen)
    tokens = torch.cat([rand, rand], 1)
    if bos:
        tokens = torch.cat([torch.full((n, 1), model.tokenizer.bos_token_id), tokens], 1)
    names = [hook_names.pattern(l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(_device(model)), names_filter=lambda x: x in set(names))
    start = int(bos) + seq_len  # first query of the second copy
    return torch.stack([cache[x].float().cpu().diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)[..., start - seq_len + 1 :]
                        .mean((0, -1)) for x in names])


# ---------------------------------------------------------------- OV copy score (Wang et al.)


@torch.no_grad()
def ov_copy_scores(model, ds: IOIDataset, k: int = 5,
                   batch_size: int = 32) -> dict[str, Float[torch.Tensor, "n_layers n_heads"]]:
    """Wang et al.'s copy score: the share of names (IO, S1 of each prompt) whose residual after block 0,
    passed through a head's ln1, W_V(+b_V), W_O (and ln1_post where the block has one) and ln_final (fresh
    norms, no attention), ranks in the top-k unembedded logits; "positive" for the output, "negative" for
    minus it. Each [L, H]."""
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    acts = run_cache(model, ds, [hook_names.resid(0, "post")], batch_size)[hook_names.resid(0, "post")]
    rows, dev = torch.arange(len(ds)), _device(model)
    x = torch.cat([acts[rows, ds.positions[p]] for p in ("IO", "S1")]).to(dev)  # [2b, d_model]
    names = torch.cat([ds.io_tokens, ds.s_tokens]).to(dev)[:, None, None]
    b_u = getattr(model, "b_U", None)
    b_u = torch.zeros(model.cfg.d_vocab, device=dev) if b_u is None else b_u
    bias = 2 * final_norm(model).b.to(dev) @ model.W_U  # [vocab]: ln(-o) = -ln(o) + 2b for both norms
    out = {"positive": torch.zeros(n_l, n_h), "negative": torch.zeros(n_l, n_h)}
    for l in range(n_l):
        attn = model.blocks[l].attn
        rep = n_h // attn.W_V.shape[0]  # GQA: query head j reads kv head j // rep
        v = torch.einsum("bm,hmd->bhd", model.blocks[l].ln1(x), attn.W_V) + (attn.b_V if attn.b_V is not None else 0)
        o = torch.einsum("bhd,hdm->bhm", v.repeat_interleave(rep, 1), attn.W_O)  # [2b, H, d_model]
        post = getattr(model.blocks[l], "ln1_post", None)  # Gemma norms the attention output before the residual
        o = o if post is None else post(o)
        pos = model.ln_final(o) @ model.W_U  # [2b, H, vocab], without b_U
        for key, logits in (("positive", pos + b_u), ("negative", bias - pos + b_u)):
            out[key][l] = (logits.topk(k, -1).indices == names).any(-1).float().mean(0).cpu()
    return out
