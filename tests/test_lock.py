"""The lock files (deploy/lock.sh) still satisfy pyproject.toml: every dependency is pinned to an
exact version inside its range, with hashes, and the image's lock and CI's lock agree.

A dependency added to pyproject.toml without re-running `bash deploy/lock.sh` fails here instead
of surfacing as an unpinned install in the image build.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `uv pip compile --generate-hashes` file."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8")):
        match = re.match(r"([A-Za-z0-9._-]+)==([^\s\\;]+)", block)
        if match:
            name = canonicalize_name(match.group(1))
            entries[name] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME_LOCK, ("otel",)), (DEV_LOCK, ("otel", "dev"))]
)
def test_lock_pins_every_dependency_inside_its_range(lock, extras):
    pinned = parse_lock(lock)
    for requirement in project_requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is missing from {lock.name}: run bash deploy/lock.sh"
        version, _ = pinned[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name} pins {name}=={version}, outside {requirement}: run bash deploy/lock.sh"
        )


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK])
def test_every_locked_package_has_a_hash(lock):
    pinned = parse_lock(lock)
    assert len(pinned) > 50
    assert not [name for name, (_, hashes) in pinned.items() if not hashes]


def test_image_and_ci_locks_agree_on_shared_packages():
    runtime, dev = parse_lock(RUNTIME_LOCK), parse_lock(DEV_LOCK)
    assert set(runtime) <= set(dev)
    assert {n: v for n, (v, _) in runtime.items() if dev[n][0] != v} == {}


def test_lock_carries_the_build_backend_and_torch():
    runtime = parse_lock(RUNTIME_LOCK)
    assert "setuptools" in runtime  # the image builds the project without build isolation
    assert runtime["torch"][0] == "2.14.1"
    assert runtime["torchvision"][0] == "0.29.1"
