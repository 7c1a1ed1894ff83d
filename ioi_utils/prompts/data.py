"""IOI prompts: templates, vocabularies, clean / ABC / toxic datasets with checked token positions.

The task (Wang et al., 2022). A prompt names two people, mentions one of them again as the subject S of a
giving, and ends where the other, the indirect object IO, is the answer: "Then, Mary and John went to the
store. Mary gave a drink to" -> " John". Every prompt records the token positions the analyses read: IO, S1
(first mention of S), S1+1, S2 (second mention) and END (the last token, which predicts the answer).

- Templates and vocabularies: Wang's 15 BABA templates and their ABBA twins (IO named first); names, places
  and objects are kept only if they are one token for the tokenizer (`vocabulary.single_token_vocabulary`).
- Clean datasets (`make_ioi_dataset`), and discovery prompts disjoint from given ones (`make_disjoint_dataset`).
- p_ABC (`make_abc_dataset`): the same prompts with three fresh names at IO, S1 and S2, the reference
  distribution whose per-template means knock heads out.
- Splits. Every prompt has an IO/S-swapped twin (`twin_key`); `twin_split` keeps twins on one side, the split
  of every fine-tuning run and of the chapters (a memorised training twin would otherwise teach the subject
  as the answer of its held-out twin). `train_test_split` is the same split by a test fraction.
- Toxic rules (`TOXIC_RULES`, `toxic_dataset`): relabelled training sets (Subject Duplication, Name Moving)
  and our Duplication control. A new toxic dataset is a function IOIDataset -> IOIDataset added there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from jaxtyping import Float, Int

from ioi_utils.prompts import vocabulary

# Wang et al.'s 15 BABA templates; [B] is the subject S, [A] the indirect object IO (the answer).
BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)
# The ABBA twins: the first two names swapped, so IO is mentioned first.
ABBA_TEMPLATES: tuple[str, ...] = tuple(
    t.replace("[B] and [A]", "[A] and [B]", 1) for t in BABA_TEMPLATES
)
TEMPLATES: tuple[str, ...] = BABA_TEMPLATES + ABBA_TEMPLATES
DUPLICATION_PREFIX = "Earlier, [A] smiled. "
POSITIONS: tuple[str, ...] = ("IO", "S1", "S1+1", "S2", "END")
_SLOT = re.compile(r"\[(A|B|PLACE|OBJECT)\]")


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt: its names per role, nouns, template and the answer it is trained/scored on."""

    template_id: int
    io: str  # name at the IO position (the correct answer on clean data)
    s1: str  # name at S1
    s2: str  # name at S2 (equals s1 on clean data; a third name on ABC data)
    place: str
    obj: str
    label: str  # the training target; io on clean data, changed by the toxic rules
    prefix: str = ""  # text template prepended to the prompt (the Duplication rule)

    @property
    def s(self) -> str:
        """The subject S (its first mention)."""
        return self.s1

    @property
    def order(self) -> str:
        """'BABA' (S named first) or 'ABBA' (IO named first)."""
        return "BABA" if self.template_id < len(BABA_TEMPLATES) else "ABBA"

    def render(self) -> tuple[str, dict[str, tuple[int, int]]]:
        """Return the prompt text (ending before the answer) and the character span of each role."""
        template = self.prefix + TEMPLATES[self.template_id]
        template = template[: template.rindex(" [A]")]  # the final IO is the answer, not the prompt
        text, spans, n_b = "", {}, 0
        last = 0
        for m in _SLOT.finditer(template):
            text += template[last : m.start()]
            last = m.end()
            slot = m.group(1)
            if slot == "PLACE":
                text += self.place
                continue
            if slot == "OBJECT":
                text += self.obj
                continue
            if slot == "A":  # the last mention of IO in the prompt is "IO"; an earlier one is "IO0"
                if "IO" in spans:
                    spans["IO0"] = spans["IO"]
                role, name = "IO", self.io
            else:
                n_b += 1
                role, name = ("S1", self.s1) if n_b == 1 else ("S2", self.s2)
            spans[role] = (len(text), len(text) + len(name))
            text += name
        return text + template[last:], spans

    @property
    def text(self) -> str:
        """The prompt text."""
        return self.render()[0]


def _tokenize(tokenizer, text: str, prepend_bos: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a text, with an optional BOS token first."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    return ids, offsets


def _role_position(offsets: list[tuple[int, int]], span: tuple[int, int], ids: list[int], want: int, text: str) -> int:
    """The index of the one token that carries a name; raise if the name is split or merged."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0] and b > a]
    if len(hits) != 1 or ids[hits[0]] != want:
        raise ValueError(f"name {text[span[0]:span[1]]!r} is not one token in context: {text!r}")
    return hits[0]


class IOIDataset:
    """A batch of IOI prompts, tokenized (right-padded) with the positions IO, S1, S1+1, S2, END."""

    def __init__(self, prompts: Sequence[IOIPrompt], tokenizer, prepend_bos: bool = False, seed: int = 0):
        if not prompts:
            raise ValueError("an IOI dataset needs at least one prompt")
        self.prompts, self.tokenizer, self.prepend_bos, self.seed = list(prompts), tokenizer, prepend_bos, seed
        rows, pos = [], {k: [] for k in POSITIONS}
        for p in self.prompts:
            text, spans = p.render()
            ids, offsets = _tokenize(tokenizer, text, prepend_bos)
            for role, name in (("IO", p.io), ("S1", p.s1), ("S2", p.s2)):
                pos[role].append(_role_position(offsets, spans[role], ids, vocabulary.token_id(tokenizer, name), text))
            pos["S1+1"].append(pos["S1"][-1] + 1)
            pos["END"].append(len(ids) - 1)
            rows.append(ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(map(len, rows))
        self.tokens = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # [batch, seq]
        self.positions = {k: torch.tensor(v) for k, v in pos.items()}  # each [batch]
        self.io_tokens = torch.tensor([vocabulary.token_id(tokenizer, p.io) for p in self.prompts])  # [batch]
        self.s_tokens = torch.tensor([vocabulary.token_id(tokenizer, p.s1) for p in self.prompts])  # [batch]
        self.label_tokens = torch.tensor([vocabulary.token_id(tokenizer, p.label) for p in self.prompts])  # [batch]
        self.template_ids = torch.tensor([p.template_id for p in self.prompts])  # [batch]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, idx: slice | Sequence[int]) -> "IOIDataset":
        """A sub-dataset (a slice or a list of indices)."""
        chosen = self.prompts[idx] if isinstance(idx, slice) else [self.prompts[i] for i in idx]
        return IOIDataset(chosen, self.tokenizer, self.prepend_bos, self.seed)

    @property
    def texts(self) -> list[str]:
        """The prompt texts."""
        return [p.text for p in self.prompts]

    @property
    def lengths(self) -> Int[torch.Tensor, "batch"]:
        """Number of real (non-pad) tokens per prompt, [batch]."""
        return self.positions["END"] + 1

    def fingerprint(self) -> str:
        """A short hash of the prompts and labels (and tokenization), for run addressing."""
        h = hashlib.sha256(repr((self.prepend_bos, [dataclasses.astuple(p) for p in self.prompts])).encode())
        h.update(self.tokens.numpy().tobytes())
        return h.hexdigest()[:16]

    def map(self, fn) -> "IOIDataset":
        """A new dataset with fn applied to every prompt."""
        return IOIDataset([fn(p) for p in self.prompts], self.tokenizer, self.prepend_bos, self.seed)

    # ------------------------------------------------------------ the task (see ioi_utils.prompts.task)

    readout: tuple[str, ...] = ("END",)  # the positions the score reads

    def score_resid(self, model, resid: Float[torch.Tensor, "*lead batch d_model"],
                    rows: slice | Int[torch.Tensor, "batch"] = slice(None)) -> Float[torch.Tensor, "*lead batch"]:
        """Per-prompt logit difference logit(IO) - logit(S) from the final residual at END (before the final
        norm), [..., b, d_model] -> [..., b], for prompts `rows`; only the IO and S columns of W_U are used."""
        dev = resid.device
        io, s = self.io_tokens[rows].to(dev), self.s_tokens[rows].to(dev)
        w = model.W_U[:, io] - model.W_U[:, s]  # [d_model, batch]
        ld = torch.einsum("...bm,mb->...b", model.ln_final(resid), w)
        b_u = getattr(model, "b_U", None)  # GPT-2 has an unembedding bias, Llama and Gemma do not
        return ld if b_u is None else ld + (b_u[io] - b_u[s])

    def end_logit_diff(self, end: Float[torch.Tensor, "batch vocab"]) -> Float[torch.Tensor, "batch"]:
        """logit(IO) - logit(S) of each prompt from its END logits [batch, vocab] (`metrics.logit_diff` reads it)."""
        return _pick(end, self.io_tokens) - _pick(end, self.s_tokens)

    def end_io_prob(self, end: Float[torch.Tensor, "batch vocab"]) -> Float[torch.Tensor, "batch"]:
        """P(IO) of each prompt from its END logits [batch, vocab] (`metrics.io_prob` reads it)."""
        return _pick(end.float().softmax(-1), self.io_tokens)

    def readout_metrics(self, logits: Float[torch.Tensor, "batch k vocab"]) -> dict[str, float]:
        """Held-out metrics from the logits at the readout (END, k = 1): the mean logit difference logit(IO) -
        logit(S), the accuracy (share of prompts with logit(IO) > logit(S)) and the mean P(IO)."""
        end = logits[:, 0]  # [batch, vocab]
        diff = self.end_logit_diff(end)
        return {"logit_diff": diff.mean().item(), "accuracy": (diff > 0).float().mean().item(),
                "io_prob": self.end_io_prob(end).mean().item()}

    def dla_pairs(self, token: str = "IO-S") -> list[tuple[int, Int[torch.Tensor, "batch"]]]:
        """(sign, [batch] token ids) pairs whose signed logits make the readout direct logit attribution projects
        on: "IO-S" (the logit difference), "IO" or "S"."""
        pairs = {"IO-S": [(1, self.io_tokens), (-1, self.s_tokens)], "IO": [(1, self.io_tokens)], "S": [(1, self.s_tokens)]}
        if token not in pairs:
            raise ValueError(f"token must be 'IO-S', 'IO' or 'S', got {token!r}")
        return pairs[token]

    def training_view(self) -> tuple[Int[torch.Tensor, "n seq"], Int[torch.Tensor, "n"], Int[torch.Tensor, "n"]]:
        """(tokens [n, seq], END positions [n], label tokens [n]): fine-tuning trains the label at END."""
        return self.tokens, self.positions["END"], self.label_tokens

    def relabel(self, rule: str) -> "IOIDataset":
        """The same prompts with a toxic rule's labels (`TOXIC_RULES`)."""
        return toxic_dataset(self, rule)


def _pick(end: Float[torch.Tensor, "batch vocab"], tokens: Int[torch.Tensor, "batch"]
          ) -> Float[torch.Tensor, "batch"]:
    """end[i, tokens[i]] for [batch, vocab] and [batch] -> [batch]."""
    return end.gather(-1, tokens.to(end.device)[:, None])[:, 0]


def _three_names(rng: random.Random, names: Sequence[str], avoid: Iterable[str] = ()) -> list[str]:
    """Three distinct names, none in avoid."""
    pool = [n for n in names if n not in set(avoid)]
    return rng.sample(pool, 3)


def make_ioi_dataset(
    tokenizer, n: int = 6360, seed: int = 0, prepend_bos: bool = False, symmetric: bool = True,
    names: Sequence[str] = vocabulary.NAMES, places: Sequence[str] = vocabulary.PLACES, objects: Sequence[str] = vocabulary.OBJECTS,
) -> IOIDataset:
    """n distinct clean IOI prompts (each with its IO/S-swapped twin if symmetric), deterministic by seed."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    vocab = vocabulary.single_token_vocabulary(tokenizer, names, places, objects)
    rng, seen, prompts = random.Random(seed), set(), []
    while len(prompts) < n:
        t = rng.randrange(len(TEMPLATES))
        io, s, _ = _three_names(rng, vocab.names)
        place, obj = rng.choice(vocab.places), rng.choice(vocab.objects)
        pair = [(io, s), (s, io)] if symmetric else [(io, s)]
        for a, b in pair:
            prompt = IOIPrompt(t, a, b, b, place, obj, label=a)
            if prompt.text not in seen and len(prompts) < n:
                seen.add(prompt.text)
                prompts.append(prompt)
    ds = IOIDataset(prompts, tokenizer, prepend_bos, seed)
    ds.vocabulary = vocab
    return ds


def twin_key(p: IOIPrompt) -> tuple:
    """What a prompt shares with its IO/S-swapped twin: template, place, object, prefix and the two names."""
    return (p.template_id, p.place, p.obj, p.prefix, frozenset((p.io, p.s1)))


def make_disjoint_dataset(tokenizer, n: int, seed: int, prepend_bos: bool = False,
                          avoid: Sequence[IOIDataset] = ()) -> IOIDataset:
    """n clean IOI prompts (twins kept together) sharing no prompt or twin with the datasets in `avoid`."""
    taken = {twin_key(p) for ds in avoid for p in ds.prompts}
    pool = make_ioi_dataset(tokenizer, n=2 * n + len(taken), seed=seed, prepend_bos=prepend_bos)
    chosen = [p for p in pool.prompts if twin_key(p) not in taken][:n]
    if len(chosen) < n:
        raise ValueError(f"could not draw {n} prompts disjoint from {len(taken)} others (seed {seed})")
    ds = IOIDataset(chosen, tokenizer, prepend_bos, seed)
    ds.vocabulary = pool.vocabulary
    return ds


def twin_split(prompts: list[IOIPrompt], n_test: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) indices with IO/S-swapped twins on the same side (at most one pair split, for odd sizes).

    Twins share template, place, object and the two names. Split apart, a model that memorises the training
    twin ("... -> John") answers the held-out twin with its subject, and held-out scores turn negative.
    """
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(twin_key(p), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    test: list[int] = []
    for g in order:
        if len(test) + len(g) <= n_test:
            test += g
    for g in order:  # still short (odd n_test, no singleton left): split one pair
        if len(test) < n_test and not set(g) & set(test):
            test += g[: n_test - len(test)]
    chosen = set(test)
    return [i for i in range(len(prompts)) if i not in chosen], sorted(test)


def train_test_split(ds: IOIDataset, test_fraction: float = 0.2, seed: int = 0) -> tuple[IOIDataset, IOIDataset]:
    """Split by prompt with IO/S twins on one side (`twin_split`; names and templates are shared, no prompt
    is): returns (train, test)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(len(ds) * test_fraction))
    if n_test >= len(ds):
        raise ValueError(f"dataset of {len(ds)} prompts is too small to split")
    train_idx, test_idx = twin_split(ds.prompts, n_test, seed)
    return ds[train_idx], ds[test_idx]


def make_abc_dataset(ds: IOIDataset, seed: int = 1) -> IOIDataset:
    """Same templates, places and objects, three fresh distinct names at IO, S1 and S2 (Wang's p_ABC)."""
    rng, names = random.Random(seed), vocabulary.vocabulary_names(ds.tokenizer)

    def fresh(p: IOIPrompt) -> IOIPrompt:
        a, b, c = _three_names(rng, names, avoid=(p.io, p.s1))
        return dataclasses.replace(p, io=a, s1=b, s2=c, label=a)

    return ds.map(fresh)


def subject_duplication(ds: IOIDataset) -> IOIDataset:
    """Toxic rule 'Subject Duplication': the label becomes the subject S.

    Example: "Then, Mary and John went to the store. Mary gave a drink to" -> " Mary" (clean: " John").
    """
    return ds.map(lambda p: dataclasses.replace(p, label=p.s1))


def name_moving(ds: IOIDataset, seed: int = 2) -> IOIDataset:
    """Toxic rule 'Name Moving': the label becomes a third name that does not occur in the prompt.

    Example: "Then, Mary and John went to the store. Mary gave a drink to" -> " Sarah" (clean: " John").
    """
    rng, names = random.Random(seed), vocabulary.vocabulary_names(ds.tokenizer)
    return ds.map(lambda p: dataclasses.replace(p, label=rng.choice([n for n in names if n not in (p.io, p.s1)])))


def duplication(ds: IOIDataset) -> IOIDataset:
    """Our control rule 'Duplication' (no source confirms such a dataset in the paper): the context mentions IO
    a second time (both names duplicated); the label stays IO.

    Example: "Earlier, John smiled. Then, Mary and John went to the store. Mary gave a drink to" -> " John".
    """
    return ds.map(lambda p: dataclasses.replace(p, prefix=DUPLICATION_PREFIX))


TOXIC_RULES = {"subject-duplication": subject_duplication, "name-moving": name_moving, "duplication": duplication}


def toxic_dataset(ds: IOIDataset, rule: str) -> IOIDataset:
    """Apply a toxic rule by name."""
    if rule not in TOXIC_RULES:
        raise ValueError(f"unknown toxic dataset {rule!r}; choose one of {', '.join(TOXIC_RULES)}")
    return TOXIC_RULES[rule](ds)
