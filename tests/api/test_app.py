"""Health probes, the OpenAPI document, and problem+json for framework errors."""

from __future__ import annotations

from fastapi.testclient import TestClient

from flipwatch.service.main import create_app


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_database_and_embedded_broker(client):
    assert client.get("/readyz").json() == {
        "status": "ready",
        "database": "ok",
        "broker": "embedded",
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
