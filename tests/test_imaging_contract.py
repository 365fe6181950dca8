"""server.imaging's modules are used through their public names only: no module (a sibling
stage, the server, a test, a benchmark) imports, reads or patches another one's ``_private``
name. A stage can then change its insides without breaking a caller it cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "server" / "imaging"
SUBMODULES = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _imaging_modules(tree: ast.Module) -> set[str]:
    """The names this file binds to server.imaging or one of its modules."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "server":
            names |= {a.asname or a.name for a in node.names if a.name == "imaging"}
        elif isinstance(node, ast.ImportFrom) and node.module == "server.imaging":
            names |= {a.asname or a.name for a in node.names if a.name in SUBMODULES}
        elif isinstance(node, ast.Import):
            names |= {a.asname for a in node.names
                      if a.asname and a.name.startswith("server.imaging")}
    return names


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def _reaches(node: ast.AST, modules: set[str]) -> str | None:
    """The private name ``node`` reads from an imaging module (``pipeline._x``,
    ``imaging.pipeline._x``), if any."""
    parts = _dotted(node)
    if not parts or parts[0] not in modules:
        return None
    rest = parts[1:]
    if rest and rest[0] in SUBMODULES:  # imaging.<module>.<name>
        rest = rest[1:]
    return rest[0] if len(rest) == 1 and _private(rest[0]) else None


def _refers_to_module(node: ast.AST, modules: set[str]) -> bool:
    parts = _dotted(node)
    return bool(parts) and parts[0] in modules and all(p in SUBMODULES for p in parts[1:])


def private_uses(path: Path) -> list[str]:
    """Each use, as "line: what", in line order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = _imaging_modules(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("server.imaging"):
            found += [f"{node.lineno}: from {node.module} import {a.name}"
                      for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and (name := _reaches(node, modules)):
            found.append(f"{node.lineno}: {'.'.join(_dotted(node))}")
        elif isinstance(node, ast.Call):  # setattr(module, "_x", ...), getattr, patchers
            for owner, name in zip(node.args, node.args[1:]):
                if (_refers_to_module(owner, modules) and isinstance(name, ast.Constant)
                        and isinstance(name.value, str) and _private(name.value)):
                    found.append(f"{node.lineno}: {'.'.join(_dotted(owner))}, {name.value!r}")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_no_private_names_of_imaging_are_used_outside_their_module():
    files = [path for top in ("server", "tests", "bench", "trainer", "models")
             for path in sorted((REPO / top).rglob("*.py"))]
    assert any(path.parent == PACKAGE for path in files)
    uses = [f"{path.relative_to(REPO)}:{use}" for path in files for use in private_uses(path)]
    assert uses == [], "private names of server.imaging used elsewhere:\n" + "\n".join(uses)


def test_the_check_sees_each_way_of_reaching_in(tmp_path):
    path = tmp_path / "reaching.py"
    path.write_text(
        "from server import imaging\n"
        "from server.imaging import decode, pipeline\n"
        "from server.imaging.arrays import _hidden\n"
        "x = pipeline._extract_ink\n"
        "y = imaging.decode._decode_simple\n"
        "monkeypatch.setattr(decode, '_decode_simple', None)\n"
        "w = decode._FORMATS.index\n"
        "z = pipeline.extract_ink, decode.decode_plain, self._own\n")
    assert private_uses(path) == ["3: from server.imaging.arrays import _hidden",
                    "4: pipeline._extract_ink",
                    "5: imaging.decode._decode_simple",
                    "6: decode, '_decode_simple'",
                    "7: decode._FORMATS"]
