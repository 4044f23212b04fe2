"""Headless Chromium (Debian's package) for the page tests: the DOM after the page's scripts ran."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")

# A root-run, offline headless Chromium: without the background-networking flags it keeps
# opening connections the closed network refuses.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def dump_dom(
    url: str, *, budget_ms: int = 5000, timeout: float = 90, extra: tuple[str, ...] = ()
) -> str:
    """The DOM after the page's scripts ran; virtual time (`budget_ms`) lets fetches and
    rendering finish. `extra` adds flags (the offline docs test refuses every other host)."""
    profile = tempfile.mkdtemp(prefix="flipwatch-chromium-")
    try:
        result = subprocess.run(
            [
                str(CHROMIUM),
                *BASE_FLAGS,
                *extra,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
