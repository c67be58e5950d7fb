"""The rooms of the house (cfn/__init__.py): which package may import which, checked on the AST
of every module, including imports inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ingest", "processors", "schemas", "cloudflare")
# package -> the cfn packages it must never import
FORBIDDEN = {
    "cfn.schemas": ("cfn.ingest", "cfn.processors", "cfn.cli", "cfn.runner", "cfn.broker"),
    "cfn.ingest": ("cfn.processors", "cfn.cli", "cfn.runner", "cfn.tools", "cfn.cloudflare"),
    "cfn.processors": ("cfn.ingest", "cfn.cli", "cfn.runner", "cfn.tools", "cfn.cloudflare"),
    # It reads the ingest's secrets file with the ingest's own parser (cfn.ingest.auth).
    "cfn.cloudflare": ("cfn.processors", "cfn.cli", "cfn.runner", "cfn.tools"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; cfn uses absolute ones"
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = [(f"cfn.{p.stem}", p) for p in sorted((ROOT / "cfn").glob("*.py"))]
    for folder in FOLDERS:
        found += [(f"cfn.{folder}.{p.stem}", p) for p in sorted((ROOT / folder).glob("*.py"))]
    return found


def test_the_folders_are_the_cfn_packages() -> None:
    for folder in FOLDERS:
        link = ROOT / "cfn" / folder
        assert link.is_symlink() and link.resolve() == ROOT / folder, link


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_stay_in_their_rooms(module: str, path: Path) -> None:
    imported = _imports(path)
    bare = sorted(n for n in imported if n.split(".")[0] in FOLDERS)
    assert not bare, f"{module} imports {bare}: use the cfn namespace"
    for package, forbidden in FORBIDDEN.items():
        if module.startswith(package + "."):
            wrong = sorted(n for n in imported if n.startswith(forbidden))
            assert not wrong, f"{module} ({package}) must not import {wrong}"
    if module.startswith("cfn.schemas."):
        others = sorted(
            n for n in imported if n.startswith("cfn.") and not n.startswith("cfn.schemas")
        )
        assert not others, f"{module}: schemas imports nothing else of cfn's, not {others}"


def test_no_module_imports_itself_back() -> None:
    """The modules' imports, those inside functions included, form no cycle: a lazy import must
    not hide one (cfn.broker and cfn.runner once imported each other)."""
    modules = dict(_modules())
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for name in _imports(path):
            # `from cfn.x import y` names cfn.x and cfn.x.y: the module is whichever exists.
            for candidate in (name, name.rpartition(".")[0]):
                if candidate in modules and candidate != module:
                    graph[module].add(candidate)
                    break
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycle = [*path[path.index(module) :], module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
