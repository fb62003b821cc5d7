"""The house of docs/architecture.md holds: imports run one way between the rooms (a room
imports only rooms of its own layer or below), no module imports itself back through others,
and the document's list of rooms is the package's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "instseg"
# Lowest first; a room may import its own layer and those below it.
LAYERS = [("utils", "configs"), ("structures",), ("data",), ("models",), ("evaluation",),
          ("checkpoints",), ("export",), ("inference",), ("tasks",), ("cli",)]
LAYER = {room: depth for depth, rooms in enumerate(LAYERS) for room in rooms}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # "instseg" itself: the version only


def _imports(path: Path) -> set[str]:
    """instseg modules imported anywhere in the file (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instseg"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("instseg")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_every_room_has_a_layer():
    rooms = {_room(name) for name in _graph()} - {None}
    assert rooms == set(LAYER), rooms ^ set(LAYER)


def test_imports_run_one_way_between_rooms():
    wrong = [f"{importer} -> {imported}" for importer, targets in _graph().items()
             for imported in targets
             if _room(importer) and _room(imported)
             and LAYER[_room(imported)] > LAYER[_room(importer)]]
    assert wrong == []


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle of meaning.
    graph = {m: {t for t in targets if not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, targets in graph.items()}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_architecture_document_lists_the_rooms_of_the_package():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `instseg/([a-z_]+)(?:/|\.py)` \|", text, re.M))
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    on_disk |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert listed == on_disk, listed ^ on_disk


def test_the_architecture_document_says_what_each_room_imports():
    """The table's last column is each room's imports of other rooms, as the code has them."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = {}
    for room, imports in re.findall(r"^\| `instseg/([a-z_]+)(?:/|\.py)` \|.*\| ([^|]+) \|$",
                                    text, re.M):
        if imports == "everything below":
            continue
        documented[room] = set() if imports == "nothing of instseg" else set(
            imports.split(", "))
    actual: dict[str, set[str]] = {room: set() for room in documented}
    for importer, targets in _graph().items():
        room = _room(importer)
        if room in actual:
            actual[room] |= {_room(t) for t in targets if _room(t) not in (None, room)}
    assert documented == actual
