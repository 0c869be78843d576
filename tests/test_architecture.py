"""The import rule, checked on the source: no cycle among ``pipeline`` modules, no import of a later stage.

Run ``python -m pytest tests/test_architecture.py``; docs/architecture.md states the rule. Imports are read with
``ast`` (nothing is imported), so imports inside functions are seen too. Which imports count:

- the stage rule and cycles: every import — at module level, inside functions, and under ``if TYPE_CHECKING:``
  (a lazy or a type-only import is still a dependency: ``TYPE_CHECKING`` only hides a cycle from the interpreter);
- "torch at import time": module-level imports outside ``TYPE_CHECKING``, followed transitively, with the
  parent packages that Python initialises first.

Imports spelled as strings (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"

# The stages, declared as data: which stages each one may import (its own modules always).
STAGE_RULE: dict[str, set[str]] = {
    "base": set(),  # pipeline/__init__.py, errors, config, versions: the rule between them is BASE_RULE
    "data": {"base"},
    "encoders": {"base", "data"},
    "store": {"base", "data"},
    "extract": {"base", "data", "encoders", "store"},
    "probe": {"base", "data", "encoders", "store", "extract"},  # predict embeds new videos like the training store
    "demo": {"base", "data", "encoders", "store", "extract", "probe", "cli"},
    "cli": {"base", "data", "encoders", "store", "extract", "probe", "demo"},
}
BASE_RULE: dict[str, set[str]] = {
    "pipeline": set(),
    "pipeline.errors": set(),
    "pipeline.config": {"pipeline.errors"},
    "pipeline.versions": {"pipeline"},
}
TOP_LEVEL_STAGES = {
    "pipeline": "base",
    "pipeline.errors": "base",
    "pipeline.config": "base",
    "pipeline.versions": "base",
    "pipeline.__main__": "cli",  # the package pipeline/cli/ is the cli stage itself
    "pipeline.api": "cli",  # the Python entry points wire every stage, as the commands do
}
TORCH_LIKE = {"torch", "torchvision", "open_clip", "timm"}  # the last two import torch themselves
TORCH_ALLOWED_IN_STORE = {"pipeline.store.torch_dataset"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module: a pipeline module, or the top-level name of another library
    line: int
    in_function: bool
    type_checking: bool

    @property
    def at_import_time(self) -> bool:
        return not self.in_function and not self.type_checking

    def where(self) -> str:
        return f"{module_path(self.source)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> str:
    path = REPO / Path(*name.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(REPO))


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage_of(module: str) -> str | None:
    if module in TOP_LEVEL_STAGES:
        return TOP_LEVEL_STAGES[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGE_RULE else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement loads: ``from .x import y`` is ``pkg.x.y`` when that is a module."""
    if isinstance(node, ast.Import):
        return [
            alias.name if alias.name.split(".")[0] == "pipeline" else alias.name.split(".")[0] for alias in node.names
        ]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "pipeline":
            return [base.split(".")[0]] if base != "__future__" else []
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imports_of(module: str) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend(Import(module, t, node.lineno, in_function, type_checking) for t in _targets(module, node))
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                visit(stmt, in_function, True)
            for stmt in node.orelse:
                visit(stmt, in_function, type_checking)
            return
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, type_checking)

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module])), False, False)
    return found


IMPORTS: dict[str, list[Import]] = {m: imports_of(m) for m in MODULES}


def internal(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.target in MODULES]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small, recursion depth is bounded by its size
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for component in components:
        start = min(component)
        parent: dict[str, str] = {}
        queue = deque([start])
        while queue:  # shortest way back to start inside the component
            v = queue.popleft()
            if start in graph.get(v, ()):
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                cycles.append([start, *reversed(path[:-1]), start] if v != start else [start, start])
                break
            for w in sorted(graph.get(v, ()) & component):
                if w not in parent and w != start:
                    parent[w] = v
                    queue.append(w)
    return cycles


def test_find_cycles_reports_the_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]] and find_cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_belongs_to_a_stage():
    unknown = sorted(m for m in MODULES if stage_of(m) is None)
    assert not unknown, f"{unknown}: declare their stage in STAGE_RULE / TOP_LEVEL_STAGES (tests/test_architecture.py)"


def test_no_import_cycle_among_pipeline_modules():
    graph = {m: {i.target for i in internal(IMPORTS[m])} for m in MODULES}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (lazy and TYPE_CHECKING-only imports included): " + "; ".join(
        " -> ".join(c) for c in cycles
    )


def test_no_module_imports_a_later_stage():
    problems = []
    for module, imports in IMPORTS.items():
        stage = stage_of(module)
        for imp in internal(imports):
            target_stage = stage_of(imp.target)
            if stage == target_stage == "base":
                ok = imp.target in BASE_RULE[module] or imp.target == module
                allowed = ", ".join(sorted(BASE_RULE[module])) or "nothing from pipeline"
            else:
                ok = target_stage == stage or target_stage in STAGE_RULE[stage]
                allowed = ", ".join(sorted(STAGE_RULE[stage])) or "nothing from pipeline"
            if not ok:
                problems.append(
                    f"{imp.where()} imports {imp.target} ({target_stage}); {module} ({stage}) may import {allowed}"
                )
    assert not problems, "\n".join(problems)


def _import_time_closure(module: str) -> set[str]:
    """Every pipeline module that ``import module`` executes: its parents first, then what they import."""
    seen: set[str] = set()
    queue = deque([module])
    while queue:
        m = queue.popleft()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        queue.extend(".".join(parts[:k]) for k in range(1, len(parts)))
        queue.extend(i.target for i in internal(IMPORTS[m]) if i.at_import_time)
    return seen


def test_store_never_imports_torch_at_import_time():
    loaded_by: dict[str, list[str]] = {}  # offending import -> the store modules whose import runs it
    for module in (m for m in MODULES if stage_of(m) == "store" and m not in TORCH_ALLOWED_IN_STORE):
        for m in sorted(_import_time_closure(module)):
            for i in IMPORTS[m]:
                if i.at_import_time and i.target in TORCH_LIKE:
                    loaded_by.setdefault(f"{i.where()} imports {i.target} at module level", []).append(module)
    assert not loaded_by, "\n".join(
        f"{where}: loaded by `import {', '.join(sorted(mods))}` (import it lazily)"
        for where, mods in sorted(loaded_by.items())
    )


def test_store_import_leaves_torch_unloaded():
    """The same at run time, in a fresh interpreter (the ast check above says where, this that it holds)."""
    code = "import sys, pipeline.store, pipeline.store.tools; print(sorted(m for m in %r if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code % sorted(TORCH_LIKE)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_package_init_imports_nothing_heavy():
    imports = IMPORTS["pipeline"]
    assert all(i.target in sys.stdlib_module_names for i in imports), [i.target for i in imports]


MAX_FUNCTION_LINES = 80  # issue 24: a function is read at once


def test_no_function_is_longer_than_a_screen():
    """Every function and method in ``pipeline/`` fits in MAX_FUNCTION_LINES lines (decorators excluded)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)
