"""The package's layers (README, "Architecture"): each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "virnucpro"

# layer -> the layers its modules may import (its own included)
ALLOWED = {
    "io": {"io"},
    "models": {"io", "models"},
    "stages": {"io", "models", "stages"},
    "model_store": {"io", "models", "model_store"},
    "run": {"io", "run"},
    "reporting": {"io", "reporting"},
    "demo": {"io", "models", "stages", "demo"},
}
# A stage imports another stage only where it is built on it: consensus on the viral regions, training
# on stage 1's rule for where chunks lie on a genome.
STAGE_IMPORTS = {("consensus", "regions"), ("training", "chunking")}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "virnucpro"}


def _module(name: str) -> str | None:
    """The module of `virnucpro.<layer>.<module>[.<symbol>]`, if that is a module file."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and (PACKAGE / parts[1] / f"{parts[2]}.py").exists() else None


def test_every_module_is_in_a_layer():
    loose = [path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"]
    assert not loose, f"modules outside the layers: {loose}"
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and not path.name.startswith((".", "_"))} == set(ALLOWED)


def test_layers_import_only_the_layers_below():
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for name in sorted(_imports(path)):
                parts = name.split(".")
                if len(parts) < 2:
                    continue
                if parts[1] not in allowed:
                    violations.append(f"{layer}/{path.name} imports {name}")
                elif layer == "stages" and parts[1] == "stages" and (module := _module(name)) is not None:
                    if (path.stem, module) not in STAGE_IMPORTS:
                        violations.append(f"stages/{path.name} imports the stage {module}")
    assert not violations, "\n".join(violations)
