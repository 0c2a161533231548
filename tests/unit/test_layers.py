"""The architecture's layering holds: an inner layer never imports an outer one.

``domain`` and ``protocols`` are pure: they import only the standard library, each other (protocols may use
domain value types) and a short list of pure-data libraries.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "powergate"
ORDER = [
    "domain",
    "protocols",
    "store",
    "headend",
    "payments",
    "services",
    "notify",
    "sim",
    "api",
    "web",
    "cli",
]
PURE_THIRD_PARTY = {"holidays"}
ALLOWED_INNER = {
    "domain": {"domain"},
    "protocols": {"domain", "protocols"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", ["domain", "protocols"])
def test_pure_layers_import_only_the_standard_library_and_inner_layers(layer: str) -> None:
    import sys

    for path in sorted((SRC / layer).rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "powergate":
                inner = name.split(".")[1] if "." in name else ""
                assert inner in ALLOWED_INNER[layer], f"{path.relative_to(SRC)} imports {name}"
            else:
                assert top in sys.stdlib_module_names or top in PURE_THIRD_PARTY or top == "__future__", (
                    f"{path.relative_to(SRC)} imports {name}, which is not pure"
                )


def test_inner_layers_never_import_outer_layers() -> None:
    for index, layer in enumerate(ORDER):
        outer = set(ORDER[index + 1 :])
        for path in sorted((SRC / layer).rglob("*.py")) if (SRC / layer).exists() else []:
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "powergate" and len(parts) > 1:
                    assert parts[1] not in outer, f"{path.relative_to(SRC)} ({layer}) imports outer layer {name}"
