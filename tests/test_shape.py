"""The package's shape: no import circles among its modules (imports at module level, outside
``if TYPE_CHECKING:``)."""

from __future__ import annotations

import ast
from pathlib import Path

import renderfarm

PACKAGE = Path(renderfarm.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of the package ``path`` imports when it is imported."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, (ast.FunctionDef,
                                                              ast.ClassDef)) else ():
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("renderfarm"):
                    found.add(child.module)
                    for alias in child.names:  # "from renderfarm import faults"
                        if (PACKAGE.parent / child.module.replace(".", "/")
                                / f"{alias.name}.py").is_file():
                            found.add(f"{child.module}.{alias.name}")
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("renderfarm"))
    return found


def test_no_import_circles() -> None:
    graph = {_module_name(p): _top_level_imports(p) for p in PACKAGE.rglob("*.py")}
    circles = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target == "renderfarm" or target not in graph:
                continue
            if target in path:
                circles.append(path[path.index(target):] + [target])
            elif len(path) < 12:
                visit(target, path + [target])

    for module in sorted(graph):
        visit(module, [module])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles[:5])
    assert len(graph) > 20  # the walk saw the package

