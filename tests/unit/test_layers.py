"""The dependency rule, read from the source with `ast`: each layer imports only the layers
below it, no module imports itself back through others, and the inner layers load no
framework or driver. README's "Layers" table states the same rule, and is read back here.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "handlers", "metrics", "realtime_client")

# Each layer and the layers it may import, from the bottom up. `service` itself is the package's
# `__init__`/`__main__`, which only starts the runtime.
CORE, PROTOCOL, OBSERVABILITY, FANOUT, STORAGE, APP = (
    "service.core",
    "service.protocol",
    "metrics",
    "service.fanout",
    "service.storage",
    "service.app",
)
TRANSPORTS, HTTP, RUNTIME, CODEGEN, CLIENT = (
    "service.transports",
    "handlers",
    "service.runtime",
    "service.codegen",
    "realtime_client",
)
MAY_IMPORT: dict[str, frozenset[str]] = {
    CORE: frozenset(),
    PROTOCOL: frozenset({CORE}),
    OBSERVABILITY: frozenset({CORE}),
    FANOUT: frozenset({CORE, PROTOCOL, OBSERVABILITY}),
    STORAGE: frozenset({CORE}),
    APP: frozenset({CORE, PROTOCOL, OBSERVABILITY, FANOUT}),
    TRANSPORTS: frozenset({CORE, PROTOCOL, OBSERVABILITY, FANOUT, APP}),
    HTTP: frozenset({CORE, PROTOCOL, OBSERVABILITY, FANOUT, APP, TRANSPORTS}),
    RUNTIME: frozenset({CORE, PROTOCOL, OBSERVABILITY, FANOUT, STORAGE, APP, TRANSPORTS, HTTP, CLIENT}),
    CODEGEN: frozenset({CORE}),
    CLIENT: frozenset(),
    "service": frozenset({RUNTIME}),
}
# What the inner layers must not load, directly or through another first-party module.
FORBIDDEN = {
    CORE: ("tornado", "pymongo", "bson", "jwt", "prometheus_client"),
    PROTOCOL: ("tornado", "pymongo", "bson", "jwt", "prometheus_client"),
    FANOUT: ("tornado", "pymongo", "bson", "jwt"),
    APP: ("tornado", "pymongo", "bson"),
    CLIENT: ("pymongo", "bson", "jwt", "prometheus_client"),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a first-party module, or a third-party top-level name
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The first-party module `name` refers to (a module, or a name inside one)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _typing_blocks(tree: ast.Module) -> set[int]:
    """Ids of import nodes under `if TYPE_CHECKING:`."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            ids.update(id(child) for child in ast.walk(node))
    return ids


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _typing_blocks(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            names = [f"{base}.{alias.name}" for alias in node.names] if _resolve(base) != base else [base]
            if _resolve(base) == base:  # `from package import module` names a module
                names += [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        for name in names:
            target = _resolve(name) or name.split(".")[0]
            if target != module:
                yield Import(module, target, node.lineno, id(node) in typing_only)


def layer_of(module: str) -> str:
    """The longest layer name `module` is in (`service.core.schema.cron` → `service.core`)."""
    candidates = [layer for layer in MAY_IMPORT if module == layer or module.startswith(layer + ".")]
    if not candidates:
        raise AssertionError(f"{module} is in no layer: add it to MAY_IMPORT")
    return max(candidates, key=len)


def first_party(target: str) -> bool:
    return target in MODULES


def test_every_module_is_in_a_layer() -> None:
    """A new folder is placed in the table (and so in README's map) before it is used."""
    for module in MODULES:
        layer_of(module)


def test_each_layer_imports_only_the_layers_below_it() -> None:
    """The dependency rule: `MAY_IMPORT`, type-only imports included."""
    wrong = [
        f"{i.source}:{i.line} imports {i.target} ({layer_of(i.source)} may not import {layer_of(i.target)})"
        for module in MODULES
        for i in imports_of(module)
        if first_party(i.target)
        and layer_of(i.target) != layer_of(i.source)
        and layer_of(i.target) not in MAY_IMPORT[layer_of(i.source)]
    ]
    assert wrong == []


def test_no_module_imports_itself_back() -> None:
    """No cycle between modules (type-only imports aside: they run in no process)."""
    graph = {
        module: {i.target for i in imports_of(module) if first_party(i.target) and not i.typing_only}
        for module in MODULES
    }
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_inner_layers_load_no_framework_or_driver(layer: str) -> None:
    """core and protocol are plain Python; fan-out and the use cases reach storage only through ports."""
    loaded = [
        f"{i.source}:{i.line} imports {i.target}"
        for module in MODULES
        if layer_of(module) == layer
        for i in imports_of(module)
        if not first_party(i.target) and i.target in FORBIDDEN[layer]
    ]
    assert loaded == []


def test_the_rule_sees_a_violation() -> None:
    """The checker itself: an import from core into the runtime is found."""
    assert RUNTIME not in MAY_IMPORT[CORE]
    assert layer_of("service.core.schema.cron") == CORE
    assert any(i.target == "service.core.errors" for i in imports_of("service.core.config"))


def _architecture() -> str:
    """README's "## Architecture" section, up to the next `## ` heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Architecture\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _layer_of_folder(cell: str) -> str:
    """`service/core/` → `service.core`; `service/__init__.py`, `service/__main__.py` → `service`."""
    paths = re.findall(r"`([^`]+)`", cell)
    assert paths, f"no folder in {cell!r}"
    layers = set()
    for path in paths:
        module = path.rstrip("/").removesuffix(".py").replace("/", ".")
        layers.add(layer_of(module.removesuffix(".__init__")))
        assert module.removesuffix(".__init__") in MODULES, f"{path} is no module or package"
    assert len(layers) == 1, f"{cell!r} spans layers {sorted(layers)}"
    return layers.pop()


def readme_rule() -> dict[str, frozenset[str]]:
    """README's `| layer | folder | may import |` table, as `MAY_IMPORT` spells it."""
    lines = _architecture().splitlines()
    header = lines.index("| layer | folder | may import |")
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(_cells(line))
    folders = {name: _layer_of_folder(folder) for name, folder, _ in rows}
    assert len(folders) == len(rows) == len(set(folders.values())), "one row per layer"
    rule: dict[str, frozenset[str]] = {}
    for name, _, may_import in rows:
        names = [] if may_import == "nothing" else [n.strip() for n in may_import.split(",")]
        unknown = [n for n in names if n not in folders]
        assert unknown == [], f"{name} may import unknown layers {unknown}"
        rule[folders[name]] = frozenset(folders[n] for n in names)
    return rule


def test_readme_states_the_same_rule() -> None:
    """README's layer table is `MAY_IMPORT`: each layer's folder and what it may import."""
    assert readme_rule() == MAY_IMPORT


# A path in the section: a backticked span, or inside a ```text picture a word such as
# `service/fanout/bus.py`, `handlers/` or `sse_endpoint.py`.
_PICTURE_PATH = re.compile(r"(?<![\w/.-])(?:[a-z_][\w.-]*/[\w./-]*|[\w-]+\.py\b)")


def architecture_paths() -> list[str]:
    """Every repo path README's Architecture section names. A bare `name.py` is in the folder of
    the last path before it on its line (`service/transports/ws.py`, `sse.py`)."""
    paths = []
    in_picture = False
    for line in _architecture().splitlines():
        if line.startswith("```"):
            in_picture = not in_picture
            continue
        words = _PICTURE_PATH.findall(line) if in_picture else re.findall(r"`([^`\n]+)`", line)
        folder = None
        for word in words:
            if " " in word or word.startswith("/") or not ("/" in word or word.endswith(".py")):
                continue  # a URL path, a command, a name
            if "/" in word:
                folder = word.rstrip("/") if word.endswith("/") else word.rpartition("/")[0]
                paths.append(word)
            else:
                assert folder is not None, f"{word} names no folder: {line.strip()}"
                paths.append(f"{folder}/{word}")
    return paths


def test_readme_architecture_names_only_existing_paths() -> None:
    """Every path in README's Architecture section (pictures, module map, prose) exists."""
    paths = architecture_paths()
    assert "service/protocol/websocket.py" in paths and "handlers/sse_endpoint.py" in paths
    assert [path for path in paths if not (ROOT / path).exists()] == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
