"""Greater-Than (Hanna et al. 2023), the paper's second task: prompts, "01" twins, the probability difference.

"The war lasted from the year 1732 to the year 17" -> a later year. The score of a prompt is the
probability difference P(year > YY) - P(year <= YY) of the model's next year, computed exactly for the
tokenizer at hand:

- **two-digit tokens** (GPT-2: " 17" + "32"): the END position predicts the token "YY"; the score is the
  softmax mass on the year tokens "00".."99" above YY minus the mass on those at or below it (Hanna et al.).
- **digit tokens** (SmolLM2: " ", "1", "7", "3", "2"): the END position predicts the tens digit t, and the
  ones digit needs a second position. The dataset appends the tens digit of YY after END (position "TIE");
  the model is causal, so one forward gives both P(t | prompt) at END and P(o | prompt, t = YY's tens digit)
  at TIE. The score is

      sum_{t > Yt} P(t) + P(Yt) * sum_{o > Yo} P(o | Yt)  -  [ sum_{t < Yt} P(t) + P(Yt) * sum_{o <= Yo} P(o | Yt) ]

  over digit tokens, with full-vocabulary softmaxes. A tens digit other than YY's decides the comparison,
  whatever follows it (we count its whole mass); only the tie needs the ones digit. Mass on non-digit
  tokens counts on neither side, as mass outside "00".."99" does for GPT-2.

The corrupted twin writes the start year as "01" (Hanna et al.'s "01" dataset) and keeps everything else,
including the appended tie digit: patching and mean ablation take their activations from it.
Training labels ask for one year: a later one (clean) or an earlier one (the toxic rule "earlier-year").
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int

# Hanna et al.'s nouns, as vendored in ACDC's greater-than utilities (single-token ones are used).
NOUNS: tuple[str, ...] = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
    "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
    "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
    "journey", "kingdom", "marriage", "modernization", "negotiation", "notoriety", "obstruction", "operation",
    "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump", "stature",
    "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition", "treaty", "trial",
    "trip", "unemployment", "voyage", "warfare", "work",
)
CENTURY = 17
START_YEARS: tuple[int, ...] = tuple(range(2, 99))  # YY of 1702..1798 (Hanna et al.)
CORRUPT_YY = 1  # the "01" twin
TOXIC_RULES: tuple[str, ...] = ("earlier-year",)
TASK = "greater-than"


@dataclass(frozen=True)
class GTPrompt:
    """One prompt: its noun, the start year YY it is scored against, the YY it shows, and its training label."""

    noun: str
    yy: int  # the start year the score compares with (1732 -> 32)
    label: int  # the two-digit year the prompt is trained on (clean: > yy; toxic: < yy)
    shown: int | None = None  # the YY written in the prompt (None: yy; CORRUPT_YY in the "01" twin)

    @property
    def text(self) -> str:
        """The prompt text, ending with the century of the end year."""
        shown = self.yy if self.shown is None else self.shown
        return f"The {self.noun} lasted from the year {CENTURY}{shown:02d} to the year {CENTURY}"


@dataclass(frozen=True)
class YearTokens:
    """How a tokenizer writes the two year digits after the century: one token "YY", or two digit tokens."""

    kind: str  # "two-digit" | "digit"
    ids: torch.Tensor  # [100] token of "00".."99" (two-digit) or [10] token of "0".."9" (digit)

    @property
    def readout(self) -> tuple[str, ...]:
        """The positions whose next-token distributions the score reads."""
        return ("END",) if self.kind == "two-digit" else ("END", "TIE")


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of a text without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def _continuation(tokenizer, noun: str, yy: int) -> list[int]:
    """The tokens that continue a prompt's text with the year digits YY (the prompt's tokens must be a prefix)."""
    prompt = GTPrompt(noun, yy, yy).text
    head, full = _ids(tokenizer, prompt), _ids(tokenizer, f"{prompt}{yy:02d}")
    if full[: len(head)] != head:
        raise ValueError(f"appending the year to {prompt!r} re-tokenizes the prompt; this tokenizer cannot be scored")
    return full[len(head):]


def year_tokens(tokenizer, noun: str = "war") -> YearTokens:
    """Detect how the end year is written: one token per "YY" (GPT-2: the tokens of "00".."99", as Hanna et al.)
    or one per digit (SmolLM2: then every end year must continue the prompt as its two digit tokens); else raise."""
    cont = _continuation(tokenizer, noun, 50)
    two = [_ids(tokenizer, f"{yy:02d}") for yy in range(100)]
    if len(cont) == 1 and all(len(t) == 1 for t in two) and cont == two[50] and len({t[0] for t in two}) == 100:
        return YearTokens("two-digit", torch.tensor([t[0] for t in two]))
    digits = [_ids(tokenizer, str(d)) for d in range(10)]
    if len(cont) == 2 and all(len(d) == 1 for d in digits):
        bad = [yy for yy in range(100) if _continuation(tokenizer, noun, yy) != [digits[yy // 10][0], digits[yy % 10][0]]]
        if not bad:
            return YearTokens("digit", torch.tensor([d[0] for d in digits]))
        raise ValueError(f"end year {CENTURY}{bad[0]:02d} is not written as two digit tokens by this tokenizer")
    raise ValueError(f"end year {CENTURY}50 is neither one token nor two digit tokens for this tokenizer")


def nouns_for(tokenizer, nouns: Sequence[str] = NOUNS) -> list[str]:
    """The nouns that are one token with a leading space (so every prompt has the same positions)."""
    kept = [n for n in nouns if len(_ids(tokenizer, " " + n)) == 1]
    if not kept:
        raise ValueError("no noun of Hanna et al.'s list is a single token for this tokenizer")
    return kept


def _yy_tokens(kind: YearTokens, yy: int) -> list[int]:
    """The tokens of a two-digit year YY for this tokenizer (one, or two digits)."""
    if kind.kind == "two-digit":
        return [int(kind.ids[yy])]
    return [int(kind.ids[yy // 10]), int(kind.ids[yy % 10])]


def _yy_index(ref_ids: list[int], kind: YearTokens, ref_yy: int = 50) -> int:
    """Index of the first token of the start year's YY in a prompt written with ref_yy."""
    want = _yy_tokens(kind, ref_yy)
    hits = [i for i in range(len(ref_ids)) if ref_ids[i : i + len(want)] == want]
    if not hits:
        raise ValueError(f"cannot find the start year {CENTURY}{ref_yy:02d} among the prompt's tokens")
    return hits[0]


def valid_years(tokenizer, years: Sequence[int] = START_YEARS, noun: str = "war") -> list[int]:
    """Start years YY whose prompt is the reference prompt with only YY's own tokens changed (Hanna et al.'s
    filter of years that tokenize differently)."""
    kind = year_tokens(tokenizer, noun)
    ref = _ids(tokenizer, GTPrompt(noun, 50, 50).text)
    i, n_yy = _yy_index(ref, kind), len(_yy_tokens(kind, 50))
    return [yy for yy in years
            if _ids(tokenizer, GTPrompt(noun, yy, yy).text) == ref[:i] + _yy_tokens(kind, yy) + ref[i + n_yy:]]


class GreaterThanDataset:
    """Greater-Than prompts, tokenized (one width), with positions NOUN, YY, END (and TIE for digit tokenizers)."""

    task = TASK

    def __init__(self, prompts: Sequence[GTPrompt], tokenizer, prepend_bos: bool = False, seed: int = 0):
        if not prompts:
            raise ValueError("a Greater-Than dataset needs at least one prompt")
        self.prompts, self.tokenizer, self.prepend_bos, self.seed = list(prompts), tokenizer, prepend_bos, seed
        self.year = year_tokens(tokenizer)
        self.readout = self.year.readout
        rows = [self._row(p, p.yy) for p in self.prompts]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("Greater-Than prompts tokenize to different lengths; use nouns_for / valid_years")
        self.tokens = torch.tensor(rows)  # [batch, seq]
        n, width = self.tokens.shape
        end = width - 1 - (self.year.kind == "digit")
        self.positions = {"NOUN": torch.full((n,), 1 + prepend_bos), "YY": torch.full((n,), self._yy_pos()),
                          "END": torch.full((n,), end)}  # each [batch]
        if self.year.kind == "digit":
            self.positions["TIE"] = torch.full((n,), end + 1)
        self.years = torch.tensor([p.yy for p in self.prompts])  # [batch]
        self.labels = torch.tensor([p.label for p in self.prompts])  # [batch] two-digit training years
        self.template_ids = torch.zeros(n, dtype=torch.long)  # one template: means are over all twins

    def _row(self, p: GTPrompt, tie_yy: int) -> list[int]:
        """Token ids of a prompt (BOS first if prepend_bos), plus the tens digit of tie_yy for digit tokenizers."""
        ids = ([self.tokenizer.bos_token_id] if self.prepend_bos else []) + _ids(self.tokenizer, p.text)
        return ids + ([int(self.year.ids[tie_yy // 10])] if self.year.kind == "digit" else [])

    def _yy_pos(self) -> int:
        """Position of the first token of the written start year's YY (the same in every prompt)."""
        ids = _ids(self.tokenizer, GTPrompt(self.prompts[0].noun, 50, 50).text)
        return _yy_index(ids, self.year) + self.prepend_bos

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, idx: slice | Sequence[int]) -> "GreaterThanDataset":
        """A sub-dataset (a slice or a list of indices)."""
        chosen = self.prompts[idx] if isinstance(idx, slice) else [self.prompts[i] for i in idx]
        return GreaterThanDataset(chosen, self.tokenizer, self.prepend_bos, self.seed)

    def map(self, fn) -> "GreaterThanDataset":
        """A new dataset with fn applied to every prompt."""
        return GreaterThanDataset([fn(p) for p in self.prompts], self.tokenizer, self.prepend_bos, self.seed)

    @property
    def texts(self) -> list[str]:
        """The prompt texts."""
        return [p.text for p in self.prompts]

    @property
    def lengths(self) -> Int[torch.Tensor, "batch"]:
        """Number of tokens per row (the appended tie digit included), [batch]."""
        return torch.full((len(self),), self.tokens.shape[1])

    def fingerprint(self) -> str:
        """A short hash of the prompts, labels and tokenization."""
        h = hashlib.sha256(repr((TASK, self.prepend_bos, [dataclasses.astuple(p) for p in self.prompts])).encode())
        h.update(self.tokens.numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ the score

    def score_readout(self,
                      logits: Float[torch.Tensor, "*lead batch vocab"] | Float[torch.Tensor, "*lead batch k vocab"],
                      rows: slice | Int[torch.Tensor, "batch"] = slice(None)) -> Float[torch.Tensor, "*lead batch"]:
        """Probability difference from logits at the readout positions: [..., b, vocab] (two-digit) or
        [..., b, 2, vocab] (digit) -> [..., b], for prompts `rows`."""
        years = self.years[rows].to(logits.device)
        ids = self.year.ids.to(logits.device)
        if self.year.kind == "two-digit":
            return prob_diff_two_digit(logits, years, ids)
        return prob_diff_digits(logits[..., 0, :], logits[..., 1, :], years, ids)

    def score(self, logits: Float[torch.Tensor, "batch seq vocab"],
              rows: slice | Int[torch.Tensor, "batch"] = slice(None)) -> Float[torch.Tensor, "batch"]:
        """Per-prompt probability difference from full logits [b, seq, vocab] of prompts `rows`: [b]."""
        pos = torch.stack([self.positions[p][rows] for p in self.readout], -1).to(logits.device)  # [b, k]
        at = logits[torch.arange(len(pos), device=logits.device)[:, None], pos]  # [b, k, vocab]
        return self.score_readout(at[:, 0] if len(self.readout) == 1 else at, rows)

    def readout_metrics(self, logits: Float[torch.Tensor, "batch k vocab"]) -> dict[str, float]:
        """Held-out metrics from the logits at the readout positions [batch, k, vocab]: the mean probability
        difference and the accuracy (share of prompts where it is > 0)."""
        score = self.score_readout(logits[:, 0] if logits.shape[1] == 1 else logits)  # [batch]
        return {"prob_diff": score.mean().item(), "accuracy": (score > 0).float().mean().item()}

    def score_resid(self, model,
                    resid: Float[torch.Tensor, "*lead batch d_model"] | Float[torch.Tensor, "*lead batch k d_model"],
                    rows: slice | Int[torch.Tensor, "batch"] = slice(None)) -> Float[torch.Tensor, "*lead batch"]:
        """Per-prompt probability difference from the final residual at the readout positions,
        [..., b, d_model] (two-digit) or [..., b, 2, d_model] (digit) -> [..., b]."""
        logits = model.ln_final(resid) @ model.W_U
        b_u = getattr(model, "b_U", None)
        return self.score_readout(logits if b_u is None else logits + b_u, rows)

    def dla_pairs(self, token: str = "score") -> list[tuple[Float[torch.Tensor, "batch"], Int[torch.Tensor, "batch"]]]:
        """The END readout for direct logit attribution as (weight [batch], token ids [batch]) pairs: the mean
        logit of the year tokens (two-digit) or tens digits (digit) above YY's minus the mean of those below
        (one readout: `token` is accepted for the task interface and not read)."""
        values = torch.arange(len(self.year.ids))  # 0..99 (two-digit) or 0..9 (tens digit)
        ref = self.years if self.year.kind == "two-digit" else self.years // 10  # [batch]
        later, earlier = values[None, :] > ref[:, None], values[None, :] < ref[:, None]  # [batch, n]
        w = later / later.sum(1, keepdim=True).clamp_min(1) - earlier / earlier.sum(1, keepdim=True).clamp_min(1)
        return [(w[:, i].float(), self.year.ids[i].expand(len(self))) for i in range(len(values))]

    # ------------------------------------------------------------ training targets

    def relabel(self, rule: str) -> "GreaterThanDataset":
        """The same prompts with the training labels of a rule ('clean' or a `TOXIC_RULES` name; `relabel`)."""
        return relabel(self, rule)

    def training_view(self) -> tuple[Int[torch.Tensor, "n seq"], Int[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
        """(tokens [n, seq], positions [n, k], label tokens [n, k]) to train the label years on: the year token
        at END (two-digit), or the tens digit at END and the ones digit at TIE after the label's tens digit."""
        if self.year.kind == "two-digit":
            return self.tokens, self.positions["END"][:, None], self.year.ids[self.labels][:, None]
        tokens = torch.tensor([self._row(p, p.label) for p in self.prompts])
        pos = torch.stack([self.positions["END"], self.positions["TIE"]], -1)
        return tokens, pos, self.year.ids[torch.stack([self.labels // 10, self.labels % 10], -1)]


def prob_diff_two_digit(logits: Float[torch.Tensor, "... vocab"], years: Int[torch.Tensor, "..."],
                        year_ids: Int[torch.Tensor, "100"]) -> Float[torch.Tensor, "..."]:
    """P(YY' > YY) - P(YY' <= YY) over the 100 two-digit year tokens: logits [..., vocab], years [...] -> [...]."""
    p = logits.float().softmax(-1)[..., year_ids]  # [..., 100]
    later = torch.arange(100, device=logits.device) > years[..., None]  # [..., 100]
    return (p * later).sum(-1) - (p * ~later).sum(-1)


def prob_diff_digits(end: Float[torch.Tensor, "... vocab"], tie: Float[torch.Tensor, "... vocab"],
                     years: Int[torch.Tensor, "..."], digit_ids: Int[torch.Tensor, "10"]) -> Float[torch.Tensor, "..."]:
    """Probability difference for digit tokenizers (module doc): end, tie [..., vocab] (tens digit; ones digit
    after YY's tens digit), years [...] -> [...]."""
    pt = end.float().softmax(-1)[..., digit_ids]  # [..., 10] P(tens digit)
    po = tie.float().softmax(-1)[..., digit_ids]  # [..., 10] P(ones digit | tens = YY's)
    d = torch.arange(10, device=end.device)
    years = years.expand(pt.shape[:-1])
    t, o = (years // 10)[..., None], (years % 10)[..., None]
    p_tie = pt.gather(-1, t)[..., 0]  # [...]
    later = (pt * (d > t)).sum(-1) + p_tie * (po * (d > o)).sum(-1)
    not_later = (pt * (d < t)).sum(-1) + p_tie * (po * (d <= o)).sum(-1)
    return later - not_later


# ---------------------------------------------------------------- datasets


def _label(rng: random.Random, yy: int, rule: str) -> int:
    """A training year: later than yy (clean) or earlier than yy (toxic 'earlier-year')."""
    if rule == "clean":
        return rng.randrange(yy + 1, 100)
    if rule == "earlier-year":
        return rng.randrange(0, yy)
    raise ValueError(f"unknown Greater-Than labels {rule!r}; choose 'clean' or one of {', '.join(TOXIC_RULES)}")


def make_gt_dataset(tokenizer, n: int, seed: int = 0, prepend_bos: bool = False) -> GreaterThanDataset:
    """The first n of all (noun, start year) prompts shuffled by seed, with clean labels; a larger n extends
    a smaller one (same seed), so splits of one pool are disjoint."""
    nouns, years = nouns_for(tokenizer), valid_years(tokenizer)
    pairs = [(a, y) for a in nouns for y in years]
    if n < 1 or n > len(pairs):
        raise ValueError(f"need 1 <= n <= {len(pairs)} Greater-Than prompts for this tokenizer, got {n}")
    random.Random(seed).shuffle(pairs)
    labels = random.Random(seed + 1)
    prompts = [GTPrompt(a, y, _label(labels, y, "clean")) for a, y in pairs[:n]]
    return GreaterThanDataset(prompts, tokenizer, prepend_bos, seed)


def split(ds: GreaterThanDataset, sizes: Sequence[int]) -> list[GreaterThanDataset]:
    """Consecutive disjoint pieces of the given sizes (prompts are already in random order)."""
    if sum(sizes) > len(ds):
        raise ValueError(f"cannot split {len(ds)} prompts into {list(sizes)}")
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [ds[a:b] for a, b in zip(bounds, bounds[1:])]


def corrupt(ds: GreaterThanDataset) -> GreaterThanDataset:
    """The "01" twins: the start year written as 1701, scored against the clean YY, same tie digit."""
    if not valid_years(ds.tokenizer, (CORRUPT_YY,)):
        raise ValueError(f"the start year {CENTURY}{CORRUPT_YY:02d} tokenizes unlike the others for this tokenizer")
    return ds.map(lambda p: dataclasses.replace(p, shown=CORRUPT_YY))


def relabel(ds: GreaterThanDataset, rule: str, seed: int = 3) -> GreaterThanDataset:
    """Training labels by rule: 'clean' (a later year) or 'earlier-year' (toxic: a year before the start year).

    Example: "The war lasted from the year 1732 to the year 17" -> "15" under 'earlier-year' (clean: e.g. "58").
    """
    rng = random.Random(seed)
    return ds.map(lambda p: dataclasses.replace(p, label=_label(rng, p.yy, rule)))
