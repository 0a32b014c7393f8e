"""The package's shape: small modules, no private name used outside its module, the torch layers
free of xarray (the layer contracts themselves run with import-linter in scripts/test.sh)."""

import ast
from pathlib import Path

import pytest

import xanysat

PACKAGE = Path(xanysat.__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts)
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(path: Path) -> list[str]:
    """``from xanysat.x import _name`` and ``import xanysat.x`` followed by ``xanysat.x._name``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xanysat"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id == "xanysat":
                found.append(ast.unparse(node))
    return found


def test_the_package_has_layers():
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} >= {
        "sensors", "nn", "train", "cube", "loaders", "stac", "apps"}


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_module_is_small_and_imports_no_private_name(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
    assert private_imports(path) == []


def test_the_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from xanysat.cube.read import _grid_of\nimport xanysat\nxanysat.cube.read._crs_of\n")
    assert private_imports(bad) == ["xanysat.cube.read._grid_of", "xanysat.cube.read._crs_of"]


def test_torch_layers_import_no_xarray_at_run_time():
    import subprocess
    import sys

    code = ("import sys, xanysat.nn.encoder, xanysat.nn.checkpoint, xanysat.nn.hub, xanysat.train.loop; "
            "print(sorted(m for m in ('xarray', 'dask') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code.replace("import sys, xanysat.nn.encoder", "import sys; "
                           "sys.modules['xanysat.accessor'] = type(sys)('stub'); import xanysat.nn.encoder")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
