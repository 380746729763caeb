"""The KBS server is a peer of the engine, builder and keyprovider: only ``broker/`` and
``cli/`` (and the all-in-one ``demo``) may import ``layerseal.broker``; ``kbs/`` imports none
of the packages above it."""

from __future__ import annotations

import ast
from pathlib import Path

import layerseal

SRC = Path(layerseal.__file__).parent
# the demo starts a broker in-process beside an engine: it sits above both, like cli/
MAY_IMPORT_BROKER = ("broker", "cli", "demo.py")
KBS_MAY_NOT_IMPORT = ("broker", "engine", "builder", "keyprovider", "containerd", "cli", "registry", "layout")


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(), ".".join(("layerseal", *path.relative_to(SRC).parent.parts)))


def _imports_of(source: str, package: str) -> set[str]:
    """Every absolute module a source imports, at top level or inside functions (lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _offenders(importers: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in importers:
        for name in sorted(_imports(path)):
            parts = name.split(".")
            if parts[0] == "layerseal" and len(parts) > 1 and parts[1] in forbidden:
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    return bad


def test_nothing_but_the_server_and_cli_imports_the_broker() -> None:
    files = [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in MAY_IMPORT_BROKER]
    assert len(files) > 50  # the walk really saw the tree
    assert _offenders(files, ("broker",)) == []


def test_the_kbs_protocol_imports_no_package_above_it() -> None:
    files = sorted((SRC / "kbs").rglob("*.py"))
    assert files
    assert _offenders(files, KBS_MAY_NOT_IMPORT) == []


def test_the_rule_sees_lazy_and_relative_imports() -> None:
    source = "def f():\n    from ..broker import service\n    import layerseal.broker.app\n"
    names = _imports_of(source, "layerseal.engine")
    assert {"layerseal.broker.service", "layerseal.broker.app"} <= names


def test_the_production_broker_takes_no_helper_from_the_simulator() -> None:
    files = sorted((SRC / "broker").rglob("*.py"))
    bad = [
        f"{p.relative_to(SRC)} imports {name}"
        for p in files
        for name in sorted(_imports(p))
        if name.startswith(("layerseal.attest.sim.", "layerseal.attest.sim_platform"))
        or name == "layerseal.attest.sim"
    ]
    assert bad == []


def test_the_wire_helpers_are_the_bottom_layer() -> None:
    files = sorted((SRC / "wire").rglob("*.py"))
    assert files
    bad = [
        f"{p.relative_to(SRC)} imports {name}"
        for p in files
        for name in sorted(_imports(p))
        if name.startswith("layerseal.") and not name.startswith(("layerseal.errors", "layerseal.wire"))
    ]
    assert bad == []
