"""Model registration: spec + weights (multipart), checked by the estimator's load_model."""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import pytest
import torch

from flipwatch.workers.estimation.zoo import tiny
from tests.conftest import bearer
from tests.tiny_models import no_batchnorm

TINY_SPEC = {
    "name": "shelf-tiny",
    "format": "entrypoint",
    "entrypoint": "tiny",
    "num_classes": 10,
    "input": {"color": "RGB", "size": [32, 32], "mean": [0.5], "std": [0.25]},
}


def weights_of(model: torch.nn.Module) -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_weights() -> bytes:
    torch.manual_seed(0)
    return weights_of(tiny(num_classes=10))


def register(client, token: str, spec: dict | str, weights: bytes):
    return client.post(
        "/v1/models",
        data={"spec": spec if isinstance(spec, str) else json.dumps(spec)},
        files={"weights": ("model.pt", weights, "application/octet-stream")},
        headers=bearer(token),
    )


class TestCreateModel:
    def test_registers_versions_and_stores_weights_by_digest(
        self, client, admin_token, tiny_weights, data_dir
    ):
        first = register(client, admin_token, TINY_SPEC, tiny_weights)
        assert first.status_code == 201, first.text
        body = first.json()
        digest = hashlib.sha256(tiny_weights).hexdigest()
        assert (body["name"], body["version"], body["weights_sha256"]) == ("shelf-tiny", 1, digest)
        stored = data_dir.resolve() / "models" / f"{digest}.pt"
        assert stored.read_bytes() == tiny_weights
        assert body["spec"]["weights"] == f"models/{digest}.pt"  # the storage key
        assert first.headers["location"] == f"/v1/models/{body['id']}"

        second = register(client, admin_token, TINY_SPEC, tiny_weights)
        assert second.json()["version"] == 2
        assert [p.name for p in (data_dir / "models").iterdir()] == [f"{digest}.pt"]

        listed = client.get("/v1/models?name=shelf-tiny", headers=bearer(admin_token)).json()
        assert [m["version"] for m in listed["items"]] == [2, 1]
        one = client.get(f"/v1/models/{body['id']}", headers=bearer(admin_token)).json()
        assert one == body

    def test_refuses_model_without_batchnorm(self, client, admin_token, data_dir):
        spec = TINY_SPEC | {"entrypoint": "no_batchnorm"}
        response = register(client, admin_token, spec, weights_of(no_batchnorm(num_classes=10)))
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "model-rejected"
        assert "BatchNorm" in body["detail"]
        assert list(data_dir.glob("models/*")) == []

    def test_refuses_an_import_path_as_entrypoint_without_importing_it(
        self, client, admin_token, tiny_weights
    ):
        spec = TINY_SPEC | {"entrypoint": "os:system"}
        response = register(client, admin_token, spec, tiny_weights)
        assert response.status_code == 422
        assert "must be a registered builder name" in response.json()["detail"]

    def test_weights_have_their_own_size_limit(
        self, client, admin_token, tiny_weights, settings, data_dir
    ):
        client.app.state.settings = settings.model_copy(
            update={"max_weights_bytes": 1000, "max_archive_bytes": 10**9}
        )
        response = register(client, admin_token, TINY_SPEC, tiny_weights)
        assert response.status_code == 413, response.text
        assert "over the limit of 1000 bytes" in response.json()["detail"]
        assert list(data_dir.glob("models/*")) == []

    def test_refuses_weights_that_do_not_fit(self, client, admin_token):
        wrong = weights_of(tiny(num_classes=7))
        response = register(client, admin_token, TINY_SPEC, wrong)
        assert response.status_code == 422
        assert "do not match" in response.json()["detail"]

    def test_refuses_invalid_spec_with_field_reasons(self, client, admin_token, tiny_weights):
        response = register(client, admin_token, {"name": "x", "format": "onnx"}, tiny_weights)
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "invalid-model-spec"
        assert {e["field"] for e in body["errors"]} >= {"format", "num_classes"}

    def test_refuses_spec_that_is_not_json(self, client, admin_token, tiny_weights):
        response = register(client, admin_token, "{not json", tiny_weights)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid-model-spec"

    def test_refuses_weights_path_in_spec(self, client, admin_token, tiny_weights):
        response = register(
            client, admin_token, TINY_SPEC | {"weights": "/etc/passwd"}, tiny_weights
        )
        assert response.status_code == 422
        assert response.json()["errors"] == [{"field": "weights", "reason": "must be omitted"}]

    def test_needs_admin(self, client, ingest_token, tiny_weights):
        assert register(client, ingest_token, TINY_SPEC, tiny_weights).status_code == 403

    def test_missing_weights_is_422_problem(self, client, admin_token):
        response = client.post(
            "/v1/models", data={"spec": json.dumps(TINY_SPEC)}, headers=bearer(admin_token)
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "weights"


def test_unknown_model_is_404(client, read_token):
    response = client.get(f"/v1/models/{uuid.uuid4()}", headers=bearer(read_token))
    assert response.status_code == 404
    assert response.json()["code"] == "model-not-found"
