"""Estimate domain: the typed result read back from the stored document."""

from __future__ import annotations

from flipwatch.service.estimate.service import stored_result
from flipwatch.workers.estimation.result import EstimateResult
from tests.factories import estimate_result, make_estimate, make_model, make_stream


def test_stored_result_is_the_typed_result_the_worker_wrote(session) -> None:
    stream = make_stream(session, model=make_model(session))
    written = estimate_result(0.8, baselines={"ac": 0.9, "doc": None}, steps=40)
    estimate = make_estimate(session, stream=stream, window_index=0, result=written)
    result = stored_result(estimate)
    assert isinstance(result, EstimateResult)
    assert (result.estimated_accuracy, result.baselines, result.steps) == (
        0.8,
        {"ac": 0.9, "doc": None},
        40,
    )
    assert result.signals == {"wf": {40: 10.0}}  # step keys back to int after JSON
    assert result.to_dict() == written


def test_a_document_missing_fields_reads_as_none(session) -> None:
    stream = make_stream(session, model=make_model(session))
    estimate = make_estimate(
        session, stream=stream, window_index=0, result={"estimated_accuracy": 0.8}
    )
    assert stored_result(estimate) is None
