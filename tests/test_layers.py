"""The layers hold: ``workflows`` may import ``campaign``, ``campaign`` never imports ``workflows``,
neither imports ``project`` (the wiring above both, bar the Celery app's re-export), and no modules
of ``workflows`` import one another in a circle.

Read from the source with ``ast``, so every import statement counts wherever it stands: at the top,
inside a function (an import moved into a function to dodge a circle is still a circle) or under
``if TYPE_CHECKING``. A module named in a string (``CELERY_BEAT_SCHEDULER = "workflows.scheduler:…"``,
``INSTALLED_APPS``, ``include("workflows.urls")``) is configuration, not an import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the module imported, dotted (for ``from a import b``: ``a.b`` when it is a module)
    line: int

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """Every import statement of the module, absolute names (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in (``workflows.engine.execute`` → ``workflows.engine``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, package: str) -> dict[str, dict[str, Import]]:
    """module → {module of the same package it imports → the first such import statement}."""
    modules = modules_of(root, package)
    graph: dict[str, dict[str, Import]] = {module: {} for module in modules}
    for module, path in modules.items():
        for statement in imports_of(module, path):
            target = owning_module(statement.target, modules)
            if target is not None and target != module:
                graph[module].setdefault(target, statement)
    return graph


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe_cycle(component: list[str], graph: dict[str, dict[str, Import]]) -> str:
    edges = [str(graph[module][target]) for module in component for target in component if target in graph[module]]
    return "; ".join(edges)


# -- the project ---------------------------------------------------------------------------------

def test_campaign_never_imports_workflows() -> None:
    offending = [
        str(statement)
        for module, path in modules_of(ROOT, "campaign").items()
        for statement in imports_of(module, path)
        if statement.target == "workflows" or statement.target.startswith("workflows.")
    ]
    assert offending == [], "campaign must not import workflows (the engine imports the domain):\n" + "\n".join(offending)


#: The one import of the wiring from the apps: ``celery -A campaign`` finds the Celery app among the
#: attributes of the campaign package, and importing it there loads it with Django.
WIRING_IMPORTS_ALLOWED = {("campaign", "project.celery.app")}


def test_the_apps_never_import_the_project_wiring() -> None:
    offending = [
        str(statement)
        for package in ("campaign", "workflows")
        for module, path in modules_of(ROOT, package).items()
        for statement in imports_of(module, path)
        if (statement.target == "project" or statement.target.startswith("project."))
        and (module, statement.target) not in WIRING_IMPORTS_ALLOWED
    ]
    assert offending == [], "campaign and workflows must not import project (the wiring imports them):\n" + "\n".join(offending)


def test_no_import_cycle_among_workflows_modules() -> None:
    graph = import_graph(ROOT, "workflows")
    found = cycles(graph)
    assert found == [], "import cycles in workflows:\n" + "\n".join(describe_cycle(c, graph) for c in found)


# -- the checks themselves -----------------------------------------------------------------------

@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A package ``pkg`` whose ``a`` imports ``b`` at the top and ``b`` imports ``a`` inside a
    function, the way a circle is usually hidden; ``c`` imports ``b`` (relatively) and is in none."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def late():\n    from pkg.a import thing\n    return thing\n")
    (tmp_path / "pkg" / "c.py").write_text("from . import b\nfrom .b import late\nimport os\n")
    return tmp_path


def test_a_function_local_import_closing_a_circle_is_a_cycle(package: Path) -> None:
    graph = import_graph(package, "pkg")
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert graph["pkg.c"].keys() == {"pkg.b"}


def test_without_the_local_import_there_is_no_cycle(package: Path) -> None:
    (package / "pkg" / "b.py").write_text("def late():\n    return None\n")
    assert cycles(import_graph(package, "pkg")) == []


def test_a_function_local_import_of_another_package_is_seen(package: Path) -> None:
    (package / "pkg" / "c.py").write_text("def run():\n    from workflows.commands import run_now\n")
    statements = [str(statement) for statement in imports_of("pkg.c", package / "pkg" / "c.py")]
    assert statements == ["pkg.c (line 2) imports workflows.commands.run_now"]
