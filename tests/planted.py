"""A 3-layer GPT-2 with a hand-planted IOI circuit (Wang et al.'s classes), built like models.load_model("tiny").

Residual stream, one block of dimensions per feature: the token (one-hot over the word-level IOI vocabulary),
the position (one-hot), a constant ONE, a DUP flag, an inhibition block INH and an output block OUT (one
dimension per name each), a SPARE dimension nothing reads, and a dimension Z that is always 0. The norms are
made linear (eps = 1e8 drowns the variance in float32, the weight undoes the division: LN(x) = x - mean(x)) and
Z carries minus the column sums of every read-out, so the centring changes nothing. MLPs are zero.

Heads (attention scores in logit units; the other heads of each layer are zero):
  DT  0.0  a name's query matches the same name earlier (S2 -> S1), not itself; else BOS. Writes DUP.
  SIN 1.0  attends the position carrying DUP (END -> S2), else BOS. Copies that name into INH.
  NM  2.0  attends every name, MARGIN less a name in INH (END -> IO). Copies the name into OUT, which W_U reads.
  DECOY 1.1  attends like SIN (END -> S2) but writes into SPARE: high S2 attention, no effect.
  NNM 2.1  (only with nnm_gain > 0) attends like NM (END -> IO) and writes -nnm_gain into OUT: a Negative Name
       Mover that cancels part of NM, as Wang et al.'s 10.7 and 11.10 do in GPT-2.
On clean prompts the logit difference is 3.7 (GAIN, less what NM's soft margin leaves on S); on ABC prompts
(no repeated name) SIN reads BOS, NM splits over three names and the logit difference is 0.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from ioi_utils import models
from ioi_utils.prompts import vocabulary

DT, SIN, NM, DECOY, NNM = (0, 0), (1, 0), (2, 0), (1, 1), (2, 1)
N_CTX, D_MODEL, N_HEADS = 32, 400, 2
SHARP, BOS_SCORE, GAIN = 20.0, 10.0, 4.0  # score of a match, of BOS, and the OUT write of NM (logits)
MARGIN = 4.0  # SIN's S2-over-BOS and NM's IO-over-S score margins: soft enough for knockout attribution's gradient
EPS = 1e8  # LayerNorm epsilon: var(x) + EPS == EPS in float32, so LN is x - mean(x) times its weight / sqrt(EPS)


def _layout(vocab: int, n_names: int) -> dict[str, int]:
    """Start of each feature block in the residual stream."""
    sizes = {"TOK": vocab, "POS": N_CTX, "ONE": 1, "DUP": 1, "INH": n_names, "OUT": n_names, "SPARE": 1, "Z": 1}
    starts, at = {}, 0
    for k, n in sizes.items():
        starts[k], at = at, at + n
    assert at <= D_MODEL, f"the residual stream needs {at} dimensions"
    return starts


def _head(d_head: int) -> dict[str, torch.Tensor]:
    """Zero W_Q, W_K, W_V [d_model, d_head] and W_O [d_head, d_model] of one head."""
    return {"q": torch.zeros(D_MODEL, d_head), "k": torch.zeros(D_MODEL, d_head), "v": torch.zeros(D_MODEL, d_head),
            "o": torch.zeros(d_head, D_MODEL)}


def _plant(tok, nnm_gain: float = 0.0) -> tuple[dict[tuple[int, int], dict[str, torch.Tensor]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The planted heads' matrices, token and position embeddings and the unembedding [vocab, d_model]."""
    names = [vocabulary.token_id(tok, n) for n in vocabulary.vocabulary_names(tok)]
    at, d_head, bos = _layout(len(tok), len(names)), D_MODEL // N_HEADS, tok.bos_token_id
    tok_dims = [at["TOK"] + t for t in names]
    name_idx = torch.arange(len(names))
    wte, wpe, w_u = torch.zeros(len(tok), D_MODEL), torch.zeros(N_CTX, D_MODEL), torch.zeros(len(tok), D_MODEL)
    wte[torch.arange(len(tok)), at["TOK"] + torch.arange(len(tok))] = 1
    wte[:, at["ONE"]] = 1
    wpe[torch.arange(N_CTX), at["POS"] + torch.arange(N_CTX)] = 1
    w_u[names, at["OUT"] + name_idx] = 1
    heads = {h: _head(d_head) for h in (DT, SIN, NM, DECOY) + ((NNM,) if nnm_gain else ())}
    to_bos = d_head - 1  # every head: a constant query against the BOS token's key
    for h in heads.values():
        h["q"][at["ONE"], to_bos], h["k"][at["TOK"] + bos, to_bos] = BOS_SCORE, 1

    dt = heads[DT]  # same name earlier: +SHARP; itself: -SHARP; BOS: BOS_SCORE
    dt["q"][tok_dims, name_idx], dt["k"][tok_dims, name_idx] = SHARP, 1
    pos = at["POS"] + torch.arange(N_CTX)
    dt["q"][pos, len(names) + torch.arange(N_CTX)] = -2 * SHARP
    dt["k"][pos, len(names) + torch.arange(N_CTX)] = 1
    dt["v"][tok_dims, 0], dt["o"][0, at["DUP"]] = 1, 1

    for h, out in ((SIN, at["INH"] + name_idx), (DECOY, torch.full_like(name_idx, at["SPARE"]))):
        sin = heads[h]  # the DUP position: SHARP; BOS: SHARP - MARGIN. Copies the name there into INH (SPARE)
        sin["q"][at["ONE"], 0], sin["k"][at["DUP"], 0] = SHARP, 1
        sin["q"][at["ONE"], to_bos] = SHARP - MARGIN
        sin["v"][tok_dims, name_idx] = 1
        sin["o"][name_idx, out] = 1

    for h, gain in ((NM, GAIN), (NNM, -nnm_gain)) if nnm_gain else ((NM, GAIN),):
        nm = heads[h]  # every name: SHARP, a name in INH: SHARP - MARGIN. Copies the name into OUT (x gain)
        nm["q"][at["ONE"], 0], nm["k"][tok_dims, 0] = SHARP, 1
        nm["q"][at["INH"] + name_idx, 1 + name_idx], nm["k"][tok_dims, 1 + name_idx] = -MARGIN, 1
        nm["v"][tok_dims, name_idx] = 1
        nm["o"][name_idx, at["OUT"] + name_idx] = gain

    for h in heads.values():  # scores are q.k / sqrt(d_head); Z makes every read-out blind to the centring
        h["q"] *= d_head ** 0.5
        for w in ("q", "k", "v"):
            h[w][at["Z"]] = -h[w].sum(0)
    w_u[:, at["Z"]] = -w_u.sum(1)
    return heads, wte, wpe, w_u


@torch.no_grad()
def planted_model(device: str = "cpu", nnm_gain: float = 0.0):
    """(TransformerBridge, tokenizer) of the planted-circuit model, booted through models._boot like `tiny`
    (with a Negative Name Mover 2.1 writing -nnm_gain when nnm_gain > 0)."""
    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens re-reads config and tokenizer from a folder
        models.tiny_tokenizer().save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        cfg = GPT2Config(vocab_size=len(tok), n_layer=3, n_head=N_HEADS, n_embd=D_MODEL, n_positions=N_CTX,
                         layer_norm_epsilon=EPS, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
        hf = GPT2LMHeadModel(cfg)
        for p in hf.parameters():
            p.zero_()
        heads, wte, wpe, w_u = _plant(tok, nnm_gain)
        tr, d_head = hf.transformer, D_MODEL // N_HEADS
        tr.wte.weight.copy_(wte)
        tr.wpe.weight.copy_(wpe)
        hf.lm_head.weight.copy_(w_u)
        for ln in [b.ln_1 for b in tr.h] + [b.ln_2 for b in tr.h] + [tr.ln_f]:
            ln.weight.fill_(EPS ** 0.5)
        for (l, h), w in heads.items():
            cols = slice(h * d_head, (h + 1) * d_head)
            for i, c in enumerate("qkv"):  # GPT-2's Conv1D c_attn: x @ W with columns [q | k | v]
                tr.h[l].attn.c_attn.weight[:, i * D_MODEL :][:, cols] = w[c]
            tr.h[l].attn.c_proj.weight[cols] = w["o"]
        cfg.save_pretrained(tmp)
        model = models._boot(tmp, hf, tok, torch.device(device), torch.float32)
    model.prepend_bos, model.model_name = True, "planted"
    return model, tok
