"""POST /v1/streams/{id}/labels: labels for images already ingested give each window its realized
accuracy beside the estimate, in the API and in /metrics, with the estimator's running error."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from flipwatch.service.core.settings import Settings
from tests.conftest import bearer
from tests.factories import make_estimate, make_images, make_model, make_stream


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_poll_seconds": 0, "realized_min_labels": 4})


def scrape(client: TestClient, session: Session) -> dict[str, list[tuple[dict, float]]]:
    client.app.state.sessionmaker = sessionmaker(
        bind=session.connection(), join_transaction_mode="create_savepoint"
    )
    session.flush()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def test_labels_for_a_window_give_realized_accuracy_and_estimator_error(
    client: TestClient, session: Session, ingest_token: str
):
    model = make_model(session, name="m-real")
    stream = make_stream(session, model=model, name="real")
    estimate = make_estimate(session, stream=stream, window_index=0, estimated_accuracy=0.8)
    images = make_images(session, stream=stream, window_index=0, predicted=[1, 2, 3, 4, 5])
    # True classes: 3 of the 5 predictions right (two by id, three by content hash).
    body = {
        "labels": [
            {"image_id": str(images[0].id), "label": 1},
            {"image_id": str(images[1].id), "label": 2},
            {"sha256": images[2].sha256, "label": 3},
            {"sha256": images[3].sha256, "label": 0},
            {"sha256": images[4].sha256, "label": 0},
        ]
    }

    response = client.post(
        f"/v1/streams/{stream.id}/labels", json=body, headers=bearer(ingest_token)
    )

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["images_labeled"] == 5
    (window,) = answer["windows"]
    assert window["window_index"] == 0 and window["labeled_count"] == 5
    assert window["estimate_id"] == str(estimate.id)
    assert window["realized_accuracy"] == pytest.approx(0.6)
    assert window["estimator_error"] == pytest.approx(0.2)

    read = client.get(f"/v1/estimates/{estimate.id}", headers=bearer(ingest_token)).json()
    assert read["realized_accuracy"] == pytest.approx(0.6)
    assert read["labeled_count"] == 5
    assert read["estimator_error"] == pytest.approx(0.2)
    assert read["realized_at"] is not None

    samples = scrape(client, session)
    labels = {"stream": "real", "model": "m-real", "model_version": str(model.version)}
    assert samples["flipwatch_realized_accuracy_ratio"] == [(labels, pytest.approx(0.6))]
    assert samples["flipwatch_estimator_abs_error_ratio"] == [(labels, pytest.approx(0.2))]
    assert samples["flipwatch_realized_windows"] == [(labels, 1.0)]


def test_estimator_error_is_the_mean_over_recent_labeled_windows(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session, name="two-windows")
    for window, (estimated, predicted) in enumerate([(0.9, [0, 0, 0, 0]), (0.3, [1, 1, 1, 1])]):
        make_estimate(session, stream=stream, window_index=window, estimated_accuracy=estimated)
        images = make_images(session, stream=stream, window_index=window, predicted=predicted)
        labels = [{"image_id": str(i.id), "label": 0} for i in images]  # window 0 all right
        response = client.post(
            f"/v1/streams/{stream.id}/labels", json={"labels": labels}, headers=bearer(ingest_token)
        )
        assert response.status_code == 200, response.text

    samples = scrape(client, session)
    (realized,) = samples["flipwatch_realized_accuracy_ratio"]
    assert realized[1] == 0.0  # the latest labeled window (1): every prediction wrong
    (error,) = samples["flipwatch_estimator_abs_error_ratio"]
    assert error[1] == pytest.approx((abs(0.9 - 1.0) + abs(0.3 - 0.0)) / 2)


def test_below_the_minimum_labels_there_is_no_realized_accuracy_yet(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session)
    estimate = make_estimate(session, stream=stream, window_index=0)
    images = make_images(session, stream=stream, window_index=0, predicted=[0, 0, 0])
    body = {"labels": [{"image_id": str(i.id), "label": 0} for i in images]}  # 3 < 4

    answer = client.post(
        f"/v1/streams/{stream.id}/labels", json=body, headers=bearer(ingest_token)
    ).json()

    assert answer["windows"][0]["labeled_count"] == 3
    assert answer["windows"][0]["realized_accuracy"] is None
    read = client.get(f"/v1/estimates/{estimate.id}", headers=bearer(ingest_token)).json()
    assert read["realized_accuracy"] is None and read["estimator_error"] is None


def test_unknown_image_refuses_every_label_naming_the_item(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session)
    (image,) = make_images(session, stream=stream, window_index=0, predicted=[0])
    missing = uuid.uuid4()
    body = {
        "labels": [
            {"image_id": str(image.id), "label": 0},
            {"image_id": str(missing), "label": 1},
            {"sha256": "f" * 64, "label": 1},
        ]
    }

    response = client.post(
        f"/v1/streams/{stream.id}/labels", json=body, headers=bearer(ingest_token)
    )

    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "labels-rejected"
    assert problem["errors"] == [
        {"index": 1, "reason": f"no image {missing} in this stream"},
        {"index": 2, "reason": f"no image with sha256 {'f' * 64} here"},
    ]
    session.refresh(image)
    assert image.label is None  # all or nothing


def test_a_label_outside_the_model_classes_is_refused(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session)
    (image,) = make_images(session, stream=stream, window_index=0, predicted=[0])
    response = client.post(
        f"/v1/streams/{stream.id}/labels",
        json={"labels": [{"image_id": str(image.id), "label": 10}]},
        headers=bearer(ingest_token),
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [{"index": 0, "reason": "label 10 >= 10 classes"}]


def test_an_item_needs_exactly_one_of_image_id_and_sha256(
    client: TestClient, session: Session, ingest_token: str
):
    stream = make_stream(session)
    response = client.post(
        f"/v1/streams/{stream.id}/labels",
        json={"labels": [{"label": 1}]},
        headers=bearer(ingest_token),
    )
    assert response.status_code == 422
    assert "exactly one of image_id and sha256" in response.text
