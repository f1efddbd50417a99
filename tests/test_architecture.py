"""The layers of the package import only downwards (DESIGN.md, section 1).

models -> engine -> volume -> training / plugin / cli; ``synthetic`` is a leaf every layer may
use; napari and Qt are imported under ``plugin/`` only. Every import statement counts, also those
inside functions, so that a late import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import napari_sam

PACKAGE = Path(napari_sam.__file__).parent

#: What each part of the package may import from napari_sam (besides itself).
ALLOWED = {
    "synthetic": set(),
    "models": set(),
    "engine": {"models"},
    "volume": {"models", "engine"},
    "training": {"models", "engine", "volume", "synthetic"},
    "plugin": {"models", "engine", "volume", "training", "synthetic"},
    "cli": {"models", "engine", "volume", "training", "synthetic", "image_files", "__init__"},
    "image_files": set(),
    "__init__": {"models", "engine", "volume"},
}
GUI = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def part_of(module: str) -> str:
    """The part (layer) of a dotted module name inside napari_sam: ``napari_sam.engine.amg`` ->
    ``engine``; the package itself is ``__init__``."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, names)`` of every import statement in a source file, relative
    imports resolved against ``module``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:  # relative: from the file's package, up level - 1 packages
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([target] if target else []))
            found.append((node.lineno, target, [alias.name for alias in node.names]))
    return found


def violations(root: Path) -> list[str]:
    """Every import in the package at ``root`` that breaks :data:`ALLOWED` or the GUI rule."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        module = ".".join(parts)
        part = part_of(module)
        where = f"{path.relative_to(root.parent)}"
        for line, target, names in imports(path, module):
            top = target.split(".")[0]
            if top in GUI and part != "plugin":
                problems.append(f"{where}:{line} imports {target} (GUI) outside plugin/")
            if top != root.name:
                continue
            used = {part_of(target)}
            if target == root.name:  # `from napari_sam import x`: a submodule or the API
                used = {name if (root / name).exists() or (root / f"{name}.py").exists()
                        else "__init__" for name in names}
            for other in used - {part} - ALLOWED[part]:
                problems.append(f"{where}:{line} ({part}) imports {target} ({other})")
    return problems


def test_layers_import_only_downwards():
    assert violations(PACKAGE) == []


def test_every_part_of_the_package_has_a_rule():
    parts = {path.stem if path.is_file() else path.name
             for path in PACKAGE.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    assert parts == set(ALLOWED)


@pytest.mark.parametrize("source, problem", [
    ("from napari_sam.training.evaluation import bounding_box\n",
     "(volume) imports napari_sam.training.evaluation (training)"),
    ("def late():\n    from napari_sam import segment\n", "(volume) imports napari_sam (__init__)"),
    ("from ..plugin import session\n", "(volume) imports napari_sam.plugin (plugin)"),
    ("import napari\n", "imports napari (GUI) outside plugin/"),
])
def test_an_upward_import_is_found(tmp_path, source, problem):
    root = tmp_path / "napari_sam"
    for folder in ("volume", "training", "plugin", "engine"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "volume" / "stack.py").write_text(source)
    found = violations(root)
    assert len(found) == 1 and problem in found[0], found


def test_imports_from_the_package_root_name_submodules_apart_from_the_api(tmp_path):
    root = tmp_path / "napari_sam"
    (root / "engine").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "amg.py").write_text("from napari_sam import models\n")
    (root / "models").mkdir()
    (root / "models" / "__init__.py").write_text("")
    assert violations(root) == []
