"""The layering of the code, read from the import statements (nothing is imported to check).

Inside the daemon, imports run one way: cli → service → edit → model. Nothing outside the
daemon (the protocol, the plug-ins, their shared code) imports the daemon, and the protocol
stays pure Python on pyzmq + msgpack so it runs inside the hosts' own interpreters.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Top-level folder → import name (pyproject's package-dir).
PACKAGES = {"daemon": "dragd.daemon", "protocol": "dragd.protocol", "gimp_plugin": "dragd.gimp_plugin",
            "krita_plugin": "dragd.krita_plugin", "plugin_common": "dragd.plugin_common", "lab": "dragd.lab"}
#: Daemon layers, lowest first: a layer may import itself and those before it.
LAYERS = ["dragd.daemon.model", "dragd.daemon.edit", "dragd.daemon.service", "dragd.daemon.cli"]
HOST_SIDE = ("dragd.protocol", "dragd.plugin_common", "dragd.gimp_plugin", "dragd.krita_plugin")
PROTOCOL_THIRD_PARTY = {"zmq", "msgpack"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `source`, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import sub` may name a sub-module: count it as an import of pkg.sub.
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names] or [(node.lineno, target)]
    return out


def layer_of(name: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if name == layer or name.startswith(layer + "."):
            return i
    return None


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    bad = []
    own = layer_of(module)
    for line, name in imports:
        what = f"{module}:{line} imports {name}"
        target = layer_of(name)
        if own is not None and target is not None and target > own:
            bad.append(f"{what} (the {LAYERS[own]} layer may not import {LAYERS[target]})")
        if module.startswith("dragd.daemon") and name.startswith("dragd.lab"):
            bad.append(f"{what} (the daemon never imports lab/)")
        if module.startswith(HOST_SIDE) and name.startswith("dragd.daemon"):
            bad.append(f"{what} (host-side code never imports the daemon)")
        if module.startswith("dragd.protocol"):
            top = name.split(".")[0]
            if top != "dragd" and top not in PROTOCOL_THIRD_PARTY and top not in sys.stdlib_module_names:
                bad.append(f"{what} (the protocol is pure Python on pyzmq + msgpack)")
    return bad


def source_files():
    for folder in PACKAGES:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_imports_run_one_way():
    bad = []
    for path in source_files():
        module = module_name(path)
        bad += violations(module, imports_of(path.read_text(encoding="utf-8"), module,
                                             path.name == "__init__.py"))
    assert not bad, "\n".join(bad)


def test_every_daemon_module_sits_in_a_layer():
    loose = [p.relative_to(ROOT).as_posix() for p in (ROOT / "daemon").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"daemon/ modules outside model/, edit/, service/, cli/: {loose}"


@pytest.mark.parametrize("module, source, expected", [
    ("dragd.daemon.model.ops", "from ..edit.drag import DragSession", "may not import dragd.daemon.edit"),
    ("dragd.daemon.edit.drag", "from ..service import server", "may not import dragd.daemon.service"),
    ("dragd.daemon.service.jobs", "import dragd.daemon.cli.edit", "may not import dragd.daemon.cli"),
    ("dragd.daemon.edit.session", "from ...lab import landmarks", "never imports lab/"),
    ("dragd.plugin_common.task", "from ..daemon.model import ops", "never imports the daemon"),
    ("dragd.protocol.codec", "import numpy as np", "pure Python"),
])
def test_the_checker_sees_a_wrong_import(module, source, expected):
    found = violations(module, imports_of(source, module, False))
    assert len(found) == 1 and expected in found[0], found


def test_the_checker_allows_the_right_direction():
    module = "dragd.daemon.service.torch_backend"
    src = "from ..edit.session import EditSession\nfrom ..model import registry\nfrom ...protocol import Image\n"
    assert violations(module, imports_of(src, module, False)) == []
