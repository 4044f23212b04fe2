"""Job rows as the API sees them: progress."""

from __future__ import annotations

import pytest

from flipwatch.service.core.tables import Job
from flipwatch.service.job.service import progress_fraction


@pytest.mark.parametrize(
    ("done", "total", "fraction"),
    [(0, 250, 0.0), (1, 3, 0.3333), (250, 250, 1.0), (300, 250, 1.0), (5, 0, 0.0), (5, None, 0.0)],
)
def test_progress_is_done_over_total_clipped_and_zero_without_a_total(done, total, fraction):
    assert progress_fraction(Job(steps_done=done, steps_total=total)) == fraction
