"""No import cycles between the package's folders and top-level modules (lazy imports included): each
layer builds on those below it, so any one can be read, tested and imported on its own."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pcpretrain"


def _unit(module: str) -> str:
    """``pcpretrain.train.callbacks.x`` -> ``pcpretrain.train``; a top-level module stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else module


def _imports_between_units() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pcpretrain"):
                names = (
                    [f"pcpretrain.{a.name}" for a in node.names]
                    if node.module == "pcpretrain"
                    else [node.module]
                )
                edges[_unit(module)].update(_unit(name) for name in names if _unit(name) != _unit(module))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if any (depth-first search with the path kept)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for target in sorted(edges.get(node, ())):
            found = visit(target, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    return next((c for c in (visit(unit, []) for unit in sorted(edges)) if c), None)


def test_the_package_layers_import_without_cycles() -> None:
    edges = _imports_between_units()
    assert "pcpretrain.train" in edges and "pcpretrain.sharding" in edges["pcpretrain.optim"]
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
