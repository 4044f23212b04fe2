"""The torch-free list of corruption families the API validates against, and the functions that
implement them."""

from __future__ import annotations

import subprocess
import sys

from flipwatch.workers.estimation import families
from flipwatch.workers.estimation.corruptions import CORRUPTIONS


def test_corruptions_implement_exactly_the_listed_families_in_order() -> None:
    assert tuple(CORRUPTIONS) == families.FAMILIES
    assert len(set(families.FAMILIES)) == len(families.FAMILIES) == 17


def test_severities_run_from_mild_to_severe() -> None:
    assert families.SEVERITIES == (1, 2, 3, 4, 5)


def test_importing_the_list_does_not_import_torch() -> None:
    """The API imports this module; pulling torch in would cost seconds at start-up."""
    code = (
        "import sys; from flipwatch.workers.estimation.families import FAMILIES; "
        "print(sorted({'torch', 'numpy', 'flipwatch.workers.estimation.corruptions'} "
        "& set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
