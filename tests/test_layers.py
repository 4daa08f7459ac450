"""The package's shape: lower layers never import higher ones, and each package imports alone.

Layers, lowest first. A module may import its own layer and the layers below it,
at module level or inside a function (a lazy import is still a dependency).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "prefopt"

LAYERS = [
    ("prefopt.errors", "prefopt.io"),
    ("prefopt.core",),
    ("prefopt.data",),
    ("prefopt.tasks",),
    ("prefopt.judges",),
    ("prefopt.training",),
    ("prefopt.evaluation",),
    ("prefopt.bench",),
    ("prefopt.api", "prefopt.cli", "prefopt.__main__", "prefopt"),
]
PACKAGES = ["prefopt.core", "prefopt.data", "prefopt.tasks", "prefopt.judges", "prefopt.training",
            "prefopt.evaluation", "prefopt.bench"]


def layer_of(module: str) -> int:
    best = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (level, len(prefix))
    if best is None:
        raise AssertionError(f"{module} belongs to no layer")
    return best[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[str]:
    """Every prefopt module `path` imports, at any depth of the file."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("prefopt")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("prefopt"):
            if node.module == "prefopt":  # from prefopt import x: the submodule x
                found += [f"prefopt.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return found


def test_lower_layers_never_import_higher_ones():
    broken = []
    for path in sorted(ROOT.rglob("*.py")):
        own = module_name(path)
        for target in imported_modules(path):
            if target == "prefopt.__version__":
                continue
            if layer_of(target) > layer_of(own):
                broken.append(f"{own} imports {target}")
    assert broken == []


def test_the_layer_table_knows_every_module():
    for path in ROOT.rglob("*.py"):
        layer_of(module_name(path))  # raises for a module outside every layer


@pytest.mark.multiprocess
@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_alone_in_a_fresh_interpreter(package):
    """No import cycle: importing one package first (and each of its modules) works."""
    modules = [module_name(p) for p in sorted((ROOT / package.split(".")[1]).rglob("*.py"))]
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
