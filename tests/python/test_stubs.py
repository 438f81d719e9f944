"""The checked-in type stubs of radio._core name every public attribute of the built module."""
import ast
from pathlib import Path

import radio._core as core

STUB = Path(__file__).resolve().parents[2] / "python" / "radio" / "_core.pyi"


def stub_names() -> set:
    tree = ast.parse(STUB.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_stubs_cover_the_module():
    public = {name for name in dir(core) if not name.startswith("_")}
    missing = public - stub_names()
    assert not missing, f"python/radio/_core.pyi lacks {sorted(missing)}: regenerate it (see its header)"
