"""Property-based fuzzing of every documented operation (schemathesis over the app's OpenAPI).

Runs in the default `make test`, bounded: `EXAMPLES` generated cases per operation, derandomized
(the same cases every run), no shrinking, and a per-test timeout. The app runs on its own fresh
Postgres database (requests commit for real) with an admin key, so authenticated routes are
exercised past authentication; path ids are either generated or those of a seeded model, stream,
estimate, job, calibration and alert rule, so handlers behind the 404s are reached too.

Checks: no 5xx, every status documented, every content type documented, bodies conform to the
documented schema. A failure here is a bug in the service (or its OpenAPI document), never a
reason to loosen a check: add the failing request to `corpus.py` and fix the route.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine

from flipwatch.service.core.auth import create_api_key
from flipwatch.service.core.db import make_engine, make_sessionmaker, upgrade_database
from flipwatch.service.core.settings import Settings
from flipwatch.service.main import create_app
from tests.conftest import create_database, drop_database
from tests.dispatchers import RecordingDispatcher
from tests.factories import (
    make_alert_rule,
    make_calibration,
    make_estimate,
    make_job,
    make_model,
    make_stream,
)

EXAMPLES = 30
"""Generated cases per operation in each mode (23 operations x 2 modes: about 1,400 requests)."""

LOG = Path(os.environ["FLIPWATCH_FUZZ_LOG"]) if os.environ.get("FLIPWATCH_FUZZ_LOG") else None
"""Optional: a line per generated case (mode, method, path, status), for the reliability figures."""

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Seeded:
    """Ids of committed rows the fuzzer may use as path parameters, and the admin token."""

    token: str
    ids: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Settings]]:
    """A database of its own: fuzzed requests commit, and must not leak into other tests."""
    url = create_database("flipwatch_fuzz")
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    fuzz_settings = Settings(
        environment="dev",
        data_dir=data_dir,
        database_url=url,
        redis_url=None,
        device="cpu",
        max_file_bytes=64 * 1024,
        max_batch_files=20,
        max_batch_bytes=1024 * 1024,
        max_archive_bytes=1024 * 1024,
        max_weights_bytes=1024 * 1024,
        bootstrap_admin_key=None,
        webhook_poll_seconds=0,
        maintenance_interval_seconds=0,
    )
    engine = make_engine(fuzz_settings, url=url)
    try:
        upgrade_database(fuzz_settings, url=url)
        yield engine, fuzz_settings
    finally:
        engine.dispose()
        drop_database(url)


@pytest.fixture(scope="module")
def seeded(fuzz_engine: tuple[Engine, Settings]) -> Seeded:
    engine, _ = fuzz_engine
    with make_sessionmaker(engine)() as session:
        _, token = create_api_key(session, role="admin", name="fuzz-admin")
        model = make_model(session, calibrated=False)
        calibration = make_calibration(session, model=model)
        stream = make_stream(session, model=model)
        rule = make_alert_rule(session, stream=stream)
        job = make_job(session, stream=stream)
        estimate = make_estimate(session, stream=stream, window_index=0)
        ids = {
            "stream_id": str(stream.id),
            "model_id": str(stream.model_id),
            "rule_id": str(rule.id),
            "job_id": str(job.id),
            "estimate_id": str(estimate.id),
            "calibration_id": str(calibration.id),
        }
        make_model(session)  # a second model: lists have more than one page at limit=1
        session.commit()
    return Seeded(token=token, ids=ids)


@pytest.fixture(scope="module")
def api_schema(fuzz_engine: tuple[Engine, Settings], seeded: Seeded) -> schemathesis.BaseSchema:
    engine, fuzz_settings = fuzz_engine
    app = create_app(
        fuzz_settings,
        dispatcher=RecordingDispatcher(),
        session_factory=make_sessionmaker(engine),
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):  # type: ignore[no-untyped-def]
        """Half the time, the ids of seeded rows instead of random ones (reach past the 404)."""
        known = {k: seeded.ids[k] for k in path_parameters or {} if k in seeded.ids}
        if not known:
            return st.just(path_parameters)
        return st.sampled_from([path_parameters, {**path_parameters, **known}])

    return schema


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) of every documented operation, read from an app built without a
    database (pytest 9 cannot run schemathesis' lazy fixture schemas, so the test parametrizes
    itself). Negative mode only where there is an input to break (parameters or a body)."""
    document = create_app(Settings(redis_url=None, database_url="postgresql://unused/x")).openapi()
    cases = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if operation.get("parameters") or operation.get("requestBody"):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "mode"), _cases(), ids=lambda v: str(v))
def test_operation_answers_only_documented_non_5xx_responses(
    method: str,
    path: str,
    mode: GenerationMode,
    api_schema: schemathesis.BaseSchema,
    seeded: Seeded,
) -> None:
    """Every generated request (valid by the schema, or deliberately not) gets a documented
    status, content type and body, never a 5xx."""
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {seeded.token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        if LOG is not None:
            with LOG.open("a") as log:
                log.write(f"{mode} {method} {path} {response.status_code}\n")

    run()


def test_seeded_ids_are_uuids(seeded: Seeded) -> None:
    """The fixture seeds real rows (a guard against fuzzing only 404s)."""
    assert all(uuid.UUID(value) for value in seeded.ids.values())
    assert {"stream_id", "model_id", "rule_id", "job_id", "estimate_id"} <= seeded.ids.keys()
