"""The code's shape: files short enough to read in one sitting, and modules that depend one way.

Both read the source only (no imports run), so they are fast and catch a regression in any module, whether
or not a test exercises it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "app", "pages")  # the project's own code; tests, bench and data scripts are not counted
MAX_LINES = 600


def _sources() -> dict[str, Path]:
    """Module name -> file, for every .py under the project's packages (a package is its __init__.py)."""
    modules = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _bound_names(tree: ast.Module, module: str, is_package: bool) -> dict[str, tuple[str, str]]:
    """A package's re-exports: a name its __init__ binds by import -> (the module it came from, its name there)."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            for alias in node.names:
                names[alias.asname or alias.name] = (source, alias.name)
    return names


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a `from X import ...` names, with a relative X resolved against the importing module."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Graph:
    def __init__(self):
        self.files = _sources()
        self.trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in self.files.items()}
        self.exports = {m: _bound_names(t, m, self.files[m].name == "__init__.py") for m, t in self.trees.items()}

    def defining(self, module: str, name: str, seen: frozenset = frozenset()) -> str | None:
        """The project module that `from module import name` really depends on: the submodule `name` if it
        is one, the submodule a package re-exports `name` from, else `module` itself (None: not ours)."""
        if f"{module}.{name}" in self.files:
            return f"{module}.{name}"
        if module not in self.files:
            return None
        source, original = self.exports[module].get(name, (None, None))
        if source and source != module and (source, original) not in seen:
            found = self.defining(source, original, seen | {(source, original)})
            if found:
                return found
        return module

    def imports(self, module: str) -> set[str]:
        """Every project module `module` imports, at module level or inside a function."""
        is_package = self.files[module].name == "__init__.py"
        found = set()
        for node in ast.walk(self.trees[module]):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in self.files}
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, module, is_package)
                found |= {self.defining(source, a.name) for a in node.names if a.name != "*"}
                if any(a.name == "*" for a in node.names):
                    found.add(source)
        found.discard(None)
        found.discard(module)  # a package naming its own re-exports is not a dependency on itself
        return {m for m in found if m in self.files}

    def edges(self) -> dict[str, set[str]]:
        return {m: self.imports(m) for m in self.files}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None: a depth-first search that meets a module on its own path."""
    state: dict[str, str] = {}  # module -> "open" (on the current path) or "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_file_is_longer_than_a_sitting():
    """No module of the project's packages is over MAX_LINES lines: a longer one holds more than one job."""
    long = {str(p.relative_to(ROOT)): n for p in _sources().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    """No module imports one that imports it back, directly or through others (function-level imports count:
    a lazy import hides a cycle from Python, not from the reader)."""
    cycle = find_cycle(_Graph().edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_resolves_packages_to_their_modules():
    """A package importing its own submodules is no cycle; a submodule importing a sibling through the package
    depends on the sibling, not the package; a submodule importing the package's own code back is a cycle."""
    graph = _Graph()
    graph.files = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py")}
    graph.trees = {"p": ast.parse("from p.a import f\nfrom p.b import g\ndef h(): pass"),
                   "p.a": ast.parse("from p import g"), "p.b": ast.parse("from . import a as sibling")}
    graph.exports = {m: _bound_names(t, m, m == "p") for m, t in graph.trees.items()}
    edges = graph.edges()
    assert edges == {"p": {"p.a", "p.b"}, "p.a": {"p.b"}, "p.b": {"p.a"}}
    assert find_cycle(edges) == ["p.a", "p.b", "p.a"]
    graph.trees["p.b"] = ast.parse("def g(): from p import h")
    assert find_cycle(graph.edges()) == ["p", "p.a", "p.b", "p"]
