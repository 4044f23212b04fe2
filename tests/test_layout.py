"""The package layout's promises: a torch-free API import and a complete package list."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"flipwatch": "flipwatch", "service": "flipwatch.service", "workers": "flipwatch.workers"}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return set(out.stdout.split())


def test_importing_the_api_does_not_import_torch():
    modules = _imported_after("import flipwatch.service.main")
    assert {"torch", "torchvision", "dramatiq"} & modules == set()


def test_the_client_imports_neither_torch_nor_the_service():
    modules = _imported_after("import flipwatch.client")
    assert "torch" not in modules
    assert not any(m.startswith(("flipwatch.service", "flipwatch.workers")) for m in modules)


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert found == listed
