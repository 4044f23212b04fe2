"""The estimator package's lazy public API (`__init__`: what docs/estimator-api.md documents)."""

import importlib
import subprocess
import sys

import pytest

import flipwatch.workers.estimation as estimation


def test_every_public_name_resolves_to_its_module():
    for name in estimation.__all__:
        value = getattr(estimation, name)
        module = importlib.import_module(f"flipwatch.workers.estimation.{estimation._PUBLIC[name]}")
        assert value is getattr(module, name), name
    assert sorted(estimation._PUBLIC) == sorted(estimation.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'run_everything'"):
        estimation.run_everything  # noqa: B018


def test_importing_the_package_or_the_spec_does_not_import_torch():
    code = (
        "import sys; import flipwatch.workers.estimation; "
        "from flipwatch.workers.estimation.spec import ModelSpec; "
        "print(sorted({'torch', 'numpy', 'torchvision'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
