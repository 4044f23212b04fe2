"""Calibrations API: the calibrate job from an uploaded reference set, refusals, reads."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flipwatch.service.core.tables import Calibration, Job
from tests.conftest import bearer
from tests.factories import REFERENCE, image_bytes, make_calibration, make_model, zip_bytes


def kept_files(data_dir: Path) -> list[Path]:
    """Reference-set files left in the store or in the extraction scratch folder."""
    found = [*data_dir.glob("calibrations/**/*"), *data_dir.glob("tmp/**/*")]
    return [p for p in found if p.is_file()]


class TestCreateCalibration:
    def test_queues_a_calibrate_job(self, client, session, admin_token, dispatcher, data_dir):
        model = make_model(session, calibrated=False, spec={"num_classes": 2})
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("reference.zip", zip_bytes(REFERENCE), "application/zip")},
            headers=bearer(admin_token),
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["state"] == "queued" and body["result"] is None
        assert (body["reference_images"], body["reference_classes"]) == (6, ["cat", "dog"])
        assert response.headers["location"] == f"/v1/calibrations/{body['id']}"
        calibration = session.get(Calibration, uuid.UUID(body["id"]))
        job = session.get(Job, calibration.job_id)
        assert (job.kind, job.state, job.calibration_id, job.model_id) == (
            "calibrate",
            "queued",
            calibration.id,
            model.id,
        )
        assert dispatcher.sent == [job.id]
        # a storage key: the archive's wrapping folder 'ref' holds the class folders
        assert calibration.reference_path == f"calibrations/{body['id']}/ref"
        root = data_dir / calibration.reference_path  # the local backend: under data_dir
        assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"]
        assert body["job_url"] == f"/v1/jobs/{job.id}"

    def test_stores_the_requested_suite_and_steps(self, client, session, admin_token):
        model = make_model(session, calibrated=False, spec={"num_classes": 2})
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("reference.zip", zip_bytes(REFERENCE), "application/zip")},
            data={"steps": "50", "families": "contrast, fog", "severities": "2,4"},
            headers=bearer(admin_token),
        )
        assert response.status_code == 202, response.text
        expected = {"steps": 50, "families": ["contrast", "fog"], "severities": [2, 4]}
        assert response.json()["options"] == expected
        calibration = session.get(Calibration, uuid.UUID(response.json()["id"]))
        assert calibration.options == expected
        # Progress counts variants from the start: clean + 2 families x (2 severities + a mix).
        assert session.get(Job, calibration.job_id).steps_total == 1 + 2 * 3

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("families", "contrast,haze", "unknown corruption families ['haze']"),
            ("severities", "1,7", "severities must lie in 1..5"),
            ("severities", "mild", "comma-separated integers"),
            ("steps", "0", "steps must lie in 1..5000"),
        ],
    )
    def test_rejects_bad_options_and_stores_nothing(
        self, client, session, admin_token, data_dir, field, value, message
    ):
        model = make_model(session, calibrated=False)
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("reference.zip", zip_bytes(REFERENCE), "application/zip")},
            data={field: value},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid-calibration-options"
        assert message in response.json()["detail"]
        assert kept_files(data_dir) == []

    def test_rejects_bad_archive_and_stores_nothing(self, client, session, admin_token, data_dir):
        model = make_model(session, calibrated=False)
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={
                "archive": ("ref.zip", zip_bytes(REFERENCE | {"../x.png": b"x"}), "application/zip")
            },
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "archive-rejected"
        assert "'../x.png'" in response.json()["detail"]
        assert kept_files(data_dir) == []

    @pytest.mark.parametrize("classes", [3, 10])
    def test_rejects_another_class_count_than_the_model_has_keeping_no_files(
        self, client, session, admin_token, data_dir, classes
    ):
        model = make_model(session, calibrated=False, spec={"num_classes": classes})
        if classes == 3:
            entries = REFERENCE  # 2 folders for a 3-class model: too few
        else:  # 11 folders for a 10-class model: too many
            entries = REFERENCE | {f"ref/c{i}/0.png": image_bytes(20 + i) for i in range(9)}
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("ref.zip", zip_bytes(entries), "application/zip")},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        found = 2 if classes == 3 else 11
        assert f"has {found} class folders with images" in response.json()["detail"]
        assert list((data_dir / "calibrations").rglob("*.png")) == []
        assert session.query(Calibration).count() == 0

    def test_refuses_a_compression_bomb_before_writing_it(
        self, client, session, admin_token, data_dir
    ):
        model = make_model(session, calibrated=False, spec={"num_classes": 2})
        bomb = REFERENCE | {"ref/cat/bomb.png": b"\0" * (8 << 20)}  # 8 MiB of zeros: ~1000:1
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("ref.zip", zip_bytes(bomb), "application/zip")},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert "a compression bomb" in response.json()["detail"]
        assert list((data_dir / "calibrations").rglob("*")) == []

    def test_unknown_model_is_404(self, client, admin_token):
        response = client.post(
            f"/v1/models/{uuid.uuid4()}/calibrations",
            files={"archive": ("ref.zip", zip_bytes(REFERENCE), "application/zip")},
            headers=bearer(admin_token),
        )
        assert response.status_code == 404

    def test_needs_admin(self, client, session, ingest_token):
        model = make_model(session, calibrated=False)
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("ref.zip", zip_bytes(REFERENCE), "application/zip")},
            headers=bearer(ingest_token),
        )
        assert response.status_code == 403


def test_reads_a_finished_calibration(client, session, read_token):
    model = make_model(session, calibrated=False)
    result = {"coefficients": [0.1, 0.9, 0.0], "lofo_mae": {"wf": 0.02}, "selected": "wf"}
    calibration = make_calibration(session, model=model, result=result, reference_accuracy=0.93)
    body = client.get(f"/v1/calibrations/{calibration.id}", headers=bearer(read_token)).json()
    assert (body["state"], body["result"], body["reference_accuracy"]) == (
        "succeeded",
        result,
        0.93,
    )
