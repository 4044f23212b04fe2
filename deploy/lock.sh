#!/usr/bin/env bash
# Write the lock files (exact versions with sha256 hashes) from pyproject.toml:
#   requirements.lock      what the image installs: runtime + the `otel` extra + the build backend
#   requirements-dev.lock  what CI and `make install` install: the above plus the `dev` extra,
#                          constrained to requirements.lock so both agree on every shared package
# For CPython 3.11 on x86_64 Linux (the image's base and CI's machine). torch is PyPI's CUDA build
# (its nvidia-* wheels come with it); a machine with a local copy of the same wheel (same hash)
# installs that. Run after changing dependencies in pyproject.toml; tests/test_lock.py checks
# the lock still satisfies pyproject.toml.
#
#   bash deploy/lock.sh            (needs uv: `.venv/bin/pip install uv`, in the dev extra)
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-.venv/bin/uv}
[ -x "$uv" ] || uv=uv
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --custom-compile-command "bash deploy/lock.sh" --quiet)

"$uv" pip compile pyproject.toml deploy/lock/build.in --extra otel "${common[@]}" \
  -o requirements.lock
"$uv" pip compile pyproject.toml deploy/lock/build.in --extra otel --extra dev \
  -c requirements.lock "${common[@]}" -o requirements-dev.lock
echo "wrote requirements.lock and requirements-dev.lock" >&2
