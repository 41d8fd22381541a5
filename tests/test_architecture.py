"""The layer rules of ARCHITECTURE.md, checked on the source: no import cycle, each layer
imports only its own or lower layers, the pure layer touches no socket or database, and
no module grows past about 600 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mailprobe"
MAX_LINES = 600

# Bottom up. A module may import its own layer and the layers below, never above.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: address and configuration
    (
        "mailprobe.address",
        "mailprobe.config",
        "mailprobe.flags",
        "mailprobe.redact",
        "mailprobe.data",
        "mailprobe.egress",
    ),
    # 1: reply meaning and verdict: pure (no sockets, no database)
    (
        "mailprobe.classify",
        "mailprobe.reasons",
        "mailprobe.verdict",
        "mailprobe.results",
        "mailprobe.retry_hint",
    ),
    # 2: the SMTP wire and session, DNS, throttles, behaviour, MX cache, store, input
    (
        "mailprobe.smtp_wire",
        "mailprobe.smtp",
        "mailprobe.smtp_session",
        "mailprobe.identity",
        "mailprobe.dns",
        "mailprobe.spf",
        "mailprobe.throttle",
        "mailprobe.behavior",
        "mailprobe.mxcache",
        "mailprobe.store",
        "mailprobe.inputs",
        "mailprobe.runs",
    ),
    # 3: the engine, which composes them and owns persistence
    ("mailprobe.engine",),
    # 4: faces (and the simulated world, which tests and the demo use)
    (
        "mailprobe.cli",
        "mailprobe.queue",
        "mailprobe.report",
        "mailprobe.doctor",
        "mailprobe.demo",
        "mailprobe.testing",
        "mailprobe.serve",
        "mailprobe.metrics",
    ),
)
PURE_FORBIDDEN = ("asyncio", "socket", "ssl", "sqlalchemy", "redis", "rq", "dns")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """Every module this one imports when it runs (module level or inside functions;
    imports under `if TYPE_CHECKING:` never run and are left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: {m for m in imports(path, name, known) if m in known and m != name}
        for name, path in mods.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(name: str) -> int:
    for level, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"{name} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_each_layer_imports_only_its_own_or_lower_layers() -> None:
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in sorted(graph().items())
        if src != "mailprobe"
        for dst in sorted(targets)
        if dst != "mailprobe" and layer_of(dst) > layer_of(src)
    ]
    assert upward == []


def test_the_pure_layer_touches_no_socket_or_database() -> None:
    mods = modules()
    known = set(mods)
    offending = [
        f"{name} imports {imported}"
        for name, path in mods.items()
        if name != "mailprobe" and layer_of(name) <= 1
        for imported in imports(path, name, known)
        if imported.split(".")[0] in PURE_FORBIDDEN
    ]
    assert offending == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_600_lines(name: str) -> None:
    lines = modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines"
