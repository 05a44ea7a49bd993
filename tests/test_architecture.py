"""The seams of the code, checked on its source (no Blender, no Ray): no module reaches into
another object's private members, the modules' imports form no circle, not even the
imports made for type checking, and no class grows past about 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "renderfarm"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def module_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The renderfarm modules a module imports when it is imported (its top level and its
    ``if TYPE_CHECKING:`` blocks; not the imports inside functions)."""
    deps: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                    "renderfarm"):
                module = child.module or ""
                subs = [f"{module}.{a.name}" for a in child.names
                        if f"{module}.{a.name}" in known]
                deps.update(subs)
                if len(subs) < len(child.names):  # names of the module itself
                    deps.add(module)
            elif isinstance(child, ast.Import):
                deps.update(a.name for a in child.names if a.name.startswith("renderfarm"))
            visit(child)

    visit(ast.parse(path.read_text()))
    return {d for d in deps if d in known}


def test_no_import_circle_even_for_type_checking() -> None:
    known = modules()
    graph = {name: module_imports(path, known) - {name} for name, path in known.items()}
    circles = []

    def walk(name: str, trail: list[str], done: set[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in trail:
                circles.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in done:
                done.add(dep)
                walk(dep, trail + [dep], done)

    for name in sorted(graph):
        walk(name, [name], {name})
    assert not circles, circles[:5]
    assert "renderfarm.farm" not in graph["renderfarm.jobrun"]  # the seam goes one way


def test_no_module_reaches_into_another_objects_private_members() -> None:
    """``x._y`` only on ``self`` or ``cls``; a third party's private (a BAT hook, Ray's own
    health) is marked where it is used, with why."""
    reached = []
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            line = lines[node.lineno - 1]
            if "noqa: SLF001" not in line:
                reached.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: "
                               f"{line.strip()}")
    assert not reached, reached


def test_hashing_and_ids_do_not_need_the_ray_module() -> None:
    known = modules()
    server = [name for name in known if name.startswith("renderfarm.server.")]
    for name in ("renderfarm.jobfiles", "renderfarm.job", "renderfarm.errors",
                 "renderfarm.handle", *server):
        assert "renderfarm.executor" not in module_imports(known[name], known), name


#: the most lines a class may span, docstrings and comments included
MAX_CLASS_LINES = 600
#: classes still over it, each with why (empty it as they are split)
LARGE_CLASSES: set[str] = set()


def test_no_class_is_over_600_lines() -> None:
    """A class that does one thing fits in about 600 lines; a longer one does several
    (FarmService did: it is split by concern under renderfarm/server/)."""
    large = []
    for name, path in sorted(modules().items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > MAX_CLASS_LINES and f"{name}.{node.name}" not in LARGE_CLASSES:
                large.append(f"{name}.{node.name}: {lines} lines")
    assert not large, large


#: modules that only decide: no I/O, no thread, no clock (the threads around them act)
PURE = ("renderfarm.dispatch_state", "renderfarm.state", "renderfarm.planner",
        "renderfarm.tags", "renderfarm.server.admission", "renderfarm.server.rates")
#: what a pure module may not import, anywhere in it
IMPURE = {"ray", "threading", "time", "socket", "subprocess", "zmq", "OpenImageIO", "boto3",
          "bpy", "asyncio", "concurrent", "datetime", "os", "shutil", "sqlite3",
          "renderfarm.executor", "renderfarm.dispatcher"}


def test_pure_modules_import_no_clock_thread_or_io() -> None:
    known = modules()
    found = []
    for name in PURE:
        for node in ast.walk(ast.parse(known[name].read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{name}: {n}" for n in names
                      if n in IMPURE or n.split(".")[0] in IMPURE - {"renderfarm"}]
    assert not found, found


#: what Blender's process may import besides the standard library: Blender's own modules
BLENDER_MODULES = {"bpy", "_cycles", "cycles", "mathutils", "bl_math", "idprop"}


def _every_import(path: Path) -> set[str]:
    """Every module a file imports, at its top level or inside functions (absolute names;
    ``from renderfarm.x import y`` gives ``renderfarm.x`` and ``renderfarm.x.y``); of a
    package's ``__init__``, only what importing it imports (not its lazy attributes, nor
    what it imports for type checking)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    if path.name == "__init__.py":
        nodes: list[ast.AST] = [n for n in tree.body if isinstance(n, (ast.Import,
                                                                       ast.ImportFrom))]
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_blenders_process_imports_only_the_standard_library_and_bpy() -> None:
    """The child a worker runs Blender in (``renderfarm.blender.child``) and every renderfarm
    module it may import, inside functions too, import nothing but the standard library and
    Blender's own modules: it runs in any Blender's Python (3.13 for Blender 5.1 and later),
    where this Python's OpenImageIO, numpy or msgspec cannot be imported."""
    import sys

    known = modules()
    seen: set[str] = set()
    todo = ["renderfarm.blender.child"]
    outside: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages
        for imported in _every_import(known[name]):
            if imported.startswith("renderfarm"):
                if imported in known:
                    todo.append(imported)
                continue
            top = imported.split(".")[0]
            if top not in sys.stdlib_module_names and top not in BLENDER_MODULES \
                    and top != "__future__":
                outside.setdefault(name, set()).add(top)
    assert "renderfarm.blender.session" in seen and "renderfarm.job" in seen
    assert "renderfarm.merge" not in seen, "OpenImageIO's steps belong to renderfarm.finishing"
    assert not outside, f"Blender's process would import {outside}"
