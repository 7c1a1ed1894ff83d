"""Execute the book's chapters with papermill and build the HTML with Jupyter Book.

Usage: ``python -m ioi_utils.book --profile smoke|offline|paper [--chapters a b] [--out-dir DIR] [--no-build]``

Chapters are the jupytext percent sources ``book/<name>.py`` listed in ``_toc.yml``. Each one is
executed (in TOC order, kernel cwd = ``book/``) with the profile's parameters injected, stripped of
volatile metadata so that re-running unchanged code gives no diff, and written to
``book/<name>.ipynb`` (or ``<out-dir>/<name>.ipynb``). Then ``jupyter-book build book/ -W`` runs.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

# Papermill parameters injected into every chapter. Keep this a plain literal: edit values here.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "profile": "smoke",
        "enforce_claims": False,  # a random tiny model: claims are reported, not enforced
        "model_name": "tiny",
        "seed": 0,
        "device": "auto",
        "n_prompts": 64,
        "n_eval": 32,
        "clean_epochs": [1, 2],
        "toxic_epochs": 2,
        "reversal_epochs": 2,
        "batch_size": 16,
    },
    "offline": {
        "profile": "offline",
        "enforce_claims": True,
        "model_name": "smollm2-135m",
        "seed": 0,
        "device": "auto",
        "n_prompts": 400,
        "n_eval": 200,
        "clean_epochs": [1, 2, 3, 5],
        "toxic_epochs": 3,
        "reversal_epochs": 3,
        "batch_size": 16,
    },
    "paper": {
        "profile": "paper",
        "enforce_claims": True,
        "model_name": "gpt2",
        "seed": 0,
        "device": "auto",
        "n_prompts": 6360,
        "n_eval": 1000,
        "clean_epochs": [1, 2, 3, 5, 10, 25, 50, 100],
        "toxic_epochs": 5,
        "reversal_epochs": 5,
        "batch_size": 32,
    },
}

# Run-to-run noise in outputs, replaced in the stored notebooks. tests/nbval_sanitize.cfg uses the same
# regex/replacement pairs (tests/test_book_runner.py checks that), so stored and fresh outputs compare equal.
VOLATILE_OUTPUT: list[tuple[str, str]] = [
    (r"\S*/ipykernel_\d+/\d+\.py", "IPYKERNEL_CELL"),
    (r"at 0x[0-9a-f]+", "at 0xADDRESS"),
    (r"\S*/site-packages/", "SITE-PACKAGES/"),
    (r"\[\d+:\d+(?::\d+)?<[^\]\n]*\]", "[TQDM-TIME]"),
]
_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)  # as nbval: keep what a terminal would show

BOOK_DIR = "book"
TOC_FILE = "_toc.yml"
FAILED_DIR = Path("_build") / "failed"
KERNEL = "python3"


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message is one line."""


def default_root() -> Path:
    """Return the nearest folder at or above the cwd holding _toc.yml, else the package's parent."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / TOC_FILE).is_file():
            return folder
    return Path(__file__).resolve().parent.parent


def _toc_entries(entries: list[dict[str, Any]]) -> list[str]:
    """Flatten TOC entries (chapters, parts, sections) into file names, in order."""
    names: list[str] = []
    for entry in entries:
        if "file" in entry:
            names.append(str(entry["file"]))
        for key in ("parts", "chapters", "sections"):
            names.extend(_toc_entries(entry.get(key, [])))
    return names


def toc_chapters(toc_path: Path) -> list[str]:
    """Return the root and all chapter file names of a jb-book _toc.yml, in order."""
    toc = yaml.safe_load(toc_path.read_text())
    return [str(toc["root"]), *_toc_entries([{k: v for k, v in toc.items() if k != "root"}])]


def select_chapters(all_chapters: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Return the wanted chapters in TOC order; raise ValueError on names not in the TOC."""
    if not wanted:
        return list(all_chapters)
    unknown = sorted(set(wanted) - set(all_chapters))
    if unknown:
        raise ValueError(f"not in {TOC_FILE}: {', '.join(unknown)} (known: {', '.join(all_chapters)})")
    return [name for name in all_chapters if name in set(wanted)]


def strip_volatile(nb: Any) -> Any:
    """Drop papermill/execution metadata, give stable cell ids, hide the injected-parameters cell."""
    nb.metadata.pop("papermill", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    return nb


def scrub_text(text: str) -> str:
    """Apply the VOLATILE_OUTPUT replacements to one output text."""
    for pattern, replacement in VOLATILE_OUTPUT:
        text = re.sub(pattern, replacement, text)
    return text


def _same_stream(a: Any, b: Any) -> bool:
    """True if both outputs are streams with the same name (stdout/stderr)."""
    return a.get("output_type") == b.get("output_type") == "stream" and a.get("name") == b.get("name")


def _merge_streams(outputs: list[Any]) -> list[Any]:
    """Join consecutive stream outputs of the same name and settle carriage returns (progress bars)."""
    merged: list[Any] = []
    for out in outputs:
        if merged and _same_stream(merged[-1], out):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _CARRIAGE_RETURN.sub("", out["text"])
    return merged


def scrub_outputs(nb: Any) -> Any:
    """Make code-cell outputs reproducible: merged streams, no temp paths, addresses or tqdm timings."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        cell["outputs"] = _merge_streams(cell.get("outputs", []))
        for out in cell["outputs"]:
            if out.get("output_type") == "stream":
                out["text"] = scrub_text(out["text"])
            elif isinstance(out.get("data", {}).get("text/plain"), str):
                out["data"]["text/plain"] = scrub_text(out["data"]["text/plain"])
    return nb


def _umask() -> int:
    """The process umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty temp file in folder with the usual file mode (mkstemp uses 0600)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def write_atomic(nb: Any, path: Path) -> None:
    """Write a notebook via a temp file in the same folder and os.replace."""
    import nbformat

    tmp = _temp_file(path.parent, f".{path.stem}.", ".ipynb.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _describe(exc: BaseException) -> str:
    """One-line summary of an execution error."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = str(getattr(exc, "evalue", None) or exc).strip().splitlines()
    return f"{ename}: {evalue[0]}" if evalue else ename


def _keep_partial(partial: Path, target: Path) -> Path | None:
    """Move a partially executed notebook to target; return target, or None if nothing was written."""
    if not partial.exists() or partial.stat().st_size == 0:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(partial), target)
    return target


def load_source(src: Path) -> Any:
    """Read a jupytext source as a notebook with a python3 kernelspec (papermill needs one)."""
    import jupytext

    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3", "language": "python"})
    return nb


def execute_chapter(src: Path, out: Path, params: dict[str, Any], failed_dir: Path) -> Path:
    """Execute one jupytext source with papermill into `out`; raise ChapterFailed on error."""
    import papermill as pm

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _temp_file(out.parent, f".{out.stem}.partial.", ".ipynb")
    try:
        nb = pm.execute_notebook(
            load_source(src),
            str(partial),
            parameters=copy.deepcopy(params),
            cwd=str(src.parent),
            kernel_name=KERNEL,
            progress_bar=sys.stderr.isatty(),
        )
    except Exception as exc:
        kept = _keep_partial(partial, failed_dir / out.name)
        where = f"partially executed notebook: {kept}" if kept else "no notebook was written"
        raise ChapterFailed(f"chapter '{src.stem}' failed: {_describe(exc)}; {where}") from exc
    finally:
        partial.unlink(missing_ok=True)
    write_atomic(scrub_outputs(strip_volatile(nb)), out)
    return out


class _DropUnknownParameter(logging.Filter):
    """Hide papermill's 'Passed unknown parameter' warnings: profiles are shared, chapters use a subset."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except the unknown-parameter warnings."""
        return not record.getMessage().startswith("Passed unknown parameter")


def quiet_papermill() -> None:
    """Install the unknown-parameter filter on papermill's logger."""
    logging.getLogger("papermill").addFilter(_DropUnknownParameter())


def kernel_env(root: Path) -> None:
    """Put the repo root on PYTHONPATH so chapter kernels can import ioi_utils without installing."""
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def _relative(path: Path, root: Path) -> Path:
    """Path relative to root when possible, for short messages."""
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return path


def run_chapters(root: Path, chapters: Sequence[str], params: dict[str, Any], out_dir: Path | None) -> None:
    """Execute the chapters in order, printing one line per chapter with its wall time."""
    book = root / BOOK_DIR
    for i, name in enumerate(chapters, 1):
        src = book / f"{name}.py"
        if not src.is_file():
            print(f"[{i}/{len(chapters)}] {name}: no {BOOK_DIR}/{name}.py, skipped", flush=True)
            continue
        out = (out_dir or book) / f"{name}.ipynb"
        tag = f"[{i}/{len(chapters)}] {name}"
        print(f"{tag}: running {BOOK_DIR}/{name}.py", flush=True)
        start = time.perf_counter()
        try:
            execute_chapter(src, out, params, root / FAILED_DIR)
        except ChapterFailed:
            print(f"{tag}: FAILED after {time.perf_counter() - start:.1f} s", flush=True)
            raise
        print(f"{tag}: done in {time.perf_counter() - start:.1f} s -> {_relative(out, root)}", flush=True)


def build_book(root: Path) -> int:
    """Run `jupyter-book build book/ -W` from the repo root; return its exit code."""
    script = Path(sys.executable).with_name("jupyter-book")
    exe = str(script) if script.exists() else (shutil.which("jupyter-book") or "jupyter-book")
    print(f"jupyter-book build {BOOK_DIR}/ -W", flush=True)
    return subprocess.run([exe, "build", f"{BOOK_DIR}/", "-W"], cwd=root).returncode


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unknown profiles are rejected by argparse with the valid choices."""
    parser = argparse.ArgumentParser(prog="python -m ioi_utils.book", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES), help="parameter set for all chapters")
    parser.add_argument("--chapters", nargs="+", metavar="NAME", help="only these chapters (default: all in _toc.yml)")
    parser.add_argument("--out-dir", type=Path, help="write executed notebooks here instead of book/ (implies --no-build)")
    parser.add_argument("--no-build", action="store_true", help="skip `jupyter-book build book/ -W`")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: found from the cwd)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = parse_args(argv)
    root = (args.root or default_root()).resolve()
    try:
        chapters = select_chapters(toc_chapters(root / TOC_FILE), args.chapters)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kernel_env(root)
    quiet_papermill()
    out_dir = args.out_dir.resolve() if args.out_dir else None
    print(f"profile {args.profile}: {PROFILES[args.profile]}", flush=True)
    try:
        run_chapters(root, chapters, PROFILES[args.profile], out_dir)
    except ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.no_build or out_dir is not None:
        return 0
    return build_book(root)


if __name__ == "__main__":
    sys.exit(main())
