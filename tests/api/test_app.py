"""Health probes, the OpenAPI document, and problem+json for framework errors."""

from __future__ import annotations

import logging
import shutil
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from flipwatch.service.core.db import make_sessionmaker
from flipwatch.service.core.settings import Settings
from flipwatch.service.main import create_app
from tests.conftest import s3_storage
from tests.s3server import S3Server, silent_endpoint

MAINTENANCE_LOGGER = "flipwatch.service.retention.service"


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_embedded_broker_and_store(client):
    assert client.get("/readyz").json() == {
        "status": "ready",
        "database": "ok",
        "broker": "embedded",
        "storage": "ok",
    }


def test_readyz_is_503_problem_when_broker_is_down(settings, engine):
    from flipwatch.service.core.db import make_sessionmaker

    def down() -> None:
        raise ConnectionError("connection refused")

    app = create_app(settings, session_factory=make_sessionmaker(engine), broker_check=down)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "broker unreachable" in response.json()["detail"]


def assert_storage_not_ready(response, store: str) -> None:
    """A 503 problem naming the object store, with Retry-After (FLIPWATCH_RETRY_AFTER_SECONDS)."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    problem = response.json()
    assert problem["code"] == "storage-unavailable"
    assert problem["detail"].startswith(f"object storage {store} is not usable: ")


def test_readyz_is_503_naming_the_store_when_the_data_dir_is_gone_and_healthz_stays_up(
    settings: Settings, engine: Engine
):
    app = create_app(settings, session_factory=make_sessionmaker(engine))
    with TestClient(app) as client:
        shutil.rmtree(settings.data_dir)  # e.g. the volume was unmounted
        ready = client.get("/readyz")
        alive = client.get("/healthz")
        settings.data_dir.mkdir()
        again = client.get("/readyz")

    assert_storage_not_ready(ready, f"LocalStore({str(settings.data_dir.resolve())!r})")
    assert "FileNotFoundError" in ready.json()["detail"]
    assert alive.json() == {"status": "ok"}
    assert again.status_code == 200


def test_readyz_checks_the_bucket_on_a_real_s3_server(
    settings: Settings, engine: Engine, s3_server: S3Server
):
    s3 = settings.model_copy(update=s3_storage(s3_server))
    with TestClient(create_app(s3, session_factory=make_sessionmaker(engine))) as client:
        assert client.get("/readyz").json()["storage"] == "ok"
    missing = s3.model_copy(update={"storage_bucket": "no-such-bucket"})
    with TestClient(create_app(missing, session_factory=make_sessionmaker(engine))) as client:
        response = client.get("/readyz")
    assert_storage_not_ready(response, f"S3Store('s3://no-such-bucket/{s3.storage_prefix}')")
    assert "404" in response.json()["detail"]


def maintenance_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == MAINTENANCE_LOGGER]


@pytest.mark.timeout(60)
def test_on_a_hanging_s3_endpoint_the_app_starts_at_once_and_readyz_says_not_ready(
    settings: Settings, engine: Engine, caplog: pytest.LogCaptureFixture
):
    """The store's own client waits 2 attempts x 20 s here. The start-up sweep of incoming/ runs
    in the background, so /healthz answers at once; readiness answers in about 2 s (one HEAD);
    the sweep's failure is logged with its reason once its attempts are spent."""
    caplog.set_level(logging.WARNING, logger=MAINTENANCE_LOGGER)
    with silent_endpoint() as endpoint:
        hanging = settings.model_copy(
            update={
                "storage_backend": "s3",
                "storage_bucket": "flipwatch",
                "storage_endpoint_url": endpoint.url,
                "storage_access_key_id": "FWSILENT",
                "storage_secret_access_key": "x" * 40,
                "storage_max_attempts": 2,
                "storage_read_timeout_seconds": 20.0,
            }
        )
        started = time.monotonic()
        with TestClient(create_app(hanging, session_factory=make_sessionmaker(engine))) as client:
            alive = client.get("/healthz")
            assert alive.json() == {"status": "ok"}
            assert time.monotonic() - started < 2.0  # served before the sweep's first attempt ends
            asked = time.monotonic()
            ready = client.get("/readyz")
            readiness_took = time.monotonic() - asked
            endpoint.close()  # the sweep's held connection drops; its next attempt is refused
            deadline = time.monotonic() + 20
            while not maintenance_warnings(caplog) and time.monotonic() < deadline:
                time.sleep(0.05)

    assert_storage_not_ready(ready, "S3Store('s3://flipwatch/')")
    assert "timeout" in ready.json()["detail"].lower()
    assert readiness_took < 5.0
    [failure] = maintenance_warnings(caplog)
    assert failure.startswith(
        "start-up sweep of interrupted uploads failed: StorageUnavailable: object storage "
        "S3Store('s3://flipwatch/') cannot be reached ("
    )
    assert failure.endswith("; the next maintenance pass retries it")


def test_unknown_route_is_problem(client):
    response = client.get("/v1/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_openapi_documents_every_route_with_security_and_problems(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/healthz",
        "/readyz",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/models/{model_id}/calibrations",
        "/v1/calibrations/{calibration_id}",
        "/v1/streams",
        "/v1/streams/{stream_id}",
        "/v1/streams/{stream_id}/batches",
        "/v1/streams/{stream_id}/estimates",
        "/v1/estimates/{estimate_id}",
        "/v1/jobs/{job_id}",
        "/v1/streams/{stream_id}/alert-rules",
        "/v1/streams/{stream_id}/alert-rules/{rule_id}",
        "/v1/streams/{stream_id}/alerts",
        "/v1/streams/{stream_id}/labels",
        "/v1/status",
    }
    batch = spec["paths"]["/v1/streams/{stream_id}/batches"]["post"]
    assert batch["operationId"] == "create_batch"
    assert "multipart/form-data" in batch["requestBody"]["content"]
    assert {"401", "403", "404", "409", "413", "422"} <= set(batch["responses"])
    assert "application/problem+json" in batch["responses"]["422"]["content"]
    assert batch["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_embedded_sqlite_commits_before_dispatch(tmp_path):
    """The production session path (no test override) on the embedded SQLite default: the job row
    is committed and visible to another connection when the dispatcher receives its id."""
    from flipwatch.service.core.auth import create_api_key
    from flipwatch.service.core.db import make_engine, make_sessionmaker, upgrade_database
    from flipwatch.service.core.settings import Settings
    from flipwatch.service.core.tables import Job
    from tests.factories import files, image_bytes, make_stream

    settings = Settings(data_dir=tmp_path / "data", database_url=None, redis_url=None)
    upgrade_database(settings)
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    with factory() as session:
        stream = make_stream(session, window_size=64)
        _, token = create_api_key(session, role="ingest")
        session.commit()

    seen: list[str] = []

    class VisibilityCheckingDispatcher:
        def send(self, job_id, queue) -> None:  # noqa: ANN001
            with factory() as other:
                seen.append(other.get(Job, job_id).state)

    app = create_app(settings, dispatcher=VisibilityCheckingDispatcher())
    with TestClient(app) as client:
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(64)])
        response = client.post(
            f"/v1/streams/{stream.id}/batches",
            files=payload,
            headers={"Authorization": f"Bearer {token}"},
        )
    engine.dispose()
    assert response.status_code == 202, response.text
    assert seen == ["queued"]


def test_bootstrap_admin_key_is_created_at_start(tmp_path):
    from flipwatch.service.core.db import upgrade_database
    from flipwatch.service.core.settings import Settings

    token = "bootstrap-" + "x" * 40
    settings = Settings(
        data_dir=tmp_path / "data", database_url=None, redis_url=None, bootstrap_admin_key=token
    )
    upgrade_database(settings)
    for _ in range(2):  # a restart finds the key and adds nothing
        with TestClient(create_app(settings)) as client:
            response = client.get("/v1/streams", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text


def test_settings_refuse_placeholder_bootstrap_key_outside_dev():
    import pytest
    from pydantic import ValidationError

    from flipwatch.service.core.settings import Settings

    with pytest.raises(ValidationError, match="placeholder"):
        Settings(environment="prod", bootstrap_admin_key="changethis")


def test_database_down_is_503_with_retry_after_on_every_route(settings):
    from flipwatch.cli.startup import free_port
    from flipwatch.service.core.db import make_engine, make_sessionmaker

    down = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"  # nothing listens
    engine = make_engine(settings, url=down)
    app = create_app(settings, session_factory=make_sessionmaker(engine))
    with TestClient(app) as client:
        answers = [
            client.get("/readyz"),
            client.get("/v1/streams", headers={"Authorization": "Bearer fw_x"}),
            client.post(
                "/v1/streams/00000000-0000-0000-0000-000000000000/batches",
                headers={"Authorization": "Bearer fw_x"},
                files=[("images", ("a.png", b"x" * 100, "image/png"))],
            ),
        ]
        assert client.get("/healthz").status_code == 200
    engine.dispose()
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["Retry-After"] == str(settings.retry_after_seconds)
        assert response.json()["code"] == "database-unavailable"


def test_docs_and_schema_need_a_key_in_prod(client, settings, read_token):
    client.app.state.settings = settings.model_copy(update={"environment": "prod"})
    token = read_token
    if True:
        for path in ("/openapi.json", "/docs", "/redoc"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["content-type"] == "application/problem+json"
            assert client.get(path, headers={"Authorization": f"Bearer {token}"}).is_success
        assert client.get("/healthz").status_code == 200


def test_every_documented_error_is_problem_json(client):
    spec = client.get("/openapi.json").json()
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path != "/healthz":
                assert "503" in responses, (method, path)
            for code, response in responses.items():
                if code[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (path, code)
                    checked += 1
    assert checked > 60
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_a_wrong_method_is_405_with_allow(client):
    response = client.delete("/v1/streams")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
