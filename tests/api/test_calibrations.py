"""Calibrations: safe archive extraction (zip/tar ImageFolder), the calibrate job, reads."""

from __future__ import annotations

import io
import stat
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from flipwatch.service.archives import extract_image_folder
from flipwatch.service.errors import ArchiveRejected
from flipwatch.service.models import Calibration, Job
from tests.conftest import bearer
from tests.factories import image_bytes, make_calibration, make_model


def zip_bytes(entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


REFERENCE = {f"ref/{cls}/{i}.png": image_bytes(i) for cls in ("cat", "dog") for i in range(3)}


def extract(tmp_path: Path, data: bytes, **limits: int):
    archive = tmp_path / "upload"
    archive.write_bytes(data)
    dest = tmp_path / "out"
    return extract_image_folder(
        archive,
        dest,
        filename="upload",
        max_entries=limits.get("max_entries", 100),
        max_bytes=limits.get("max_bytes", 1 << 20),
    ), dest


class TestExtractImageFolder:
    @pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
    def test_extracts_classes_under_one_wrapping_folder(self, tmp_path, pack):
        folder, dest = extract(tmp_path, pack(REFERENCE))
        assert folder.root == dest / "ref"
        assert (folder.classes, folder.image_count) == (["cat", "dog"], 6)

    @pytest.mark.parametrize(
        "name", ["../evil.png", "/abs/evil.png", "a/../../evil.png", "C:/x.png"]
    )
    @pytest.mark.parametrize("pack", [zip_bytes, tar_bytes])
    def test_refuses_path_traversal(self, tmp_path, pack, name):
        with pytest.raises(ArchiveRejected):
            extract(tmp_path, pack(REFERENCE | {name: b"x"}))
        assert not (tmp_path / "out").exists()
        assert not (tmp_path / "evil.png").exists()

    def test_refuses_zip_symlink(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="symbolic link"):
            extract(tmp_path, zip_bytes(REFERENCE, symlinks={"ref/cat/link.png": "/etc/passwd"}))

    def test_refuses_tar_symlink(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="link"):
            extract(tmp_path, tar_bytes(REFERENCE, links={"ref/cat/link.png": "/etc/passwd"}))

    def test_refuses_too_many_entries(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="entries"):
            extract(tmp_path, zip_bytes(REFERENCE), max_entries=5)

    def test_refuses_too_many_bytes(self, tmp_path):
        bomb = zip_bytes({"ref/a/x.png": b"\0" * 200_000, "ref/b/y.png": b"\0" * 10})
        assert len(bomb) < 5_000
        with pytest.raises(ArchiveRejected, match="bytes"):
            extract(tmp_path, bomb, max_bytes=100_000)

    def test_refuses_single_class(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="at least two"):
            extract(tmp_path, zip_bytes({"cat/1.png": b"x", "cat/2.png": b"y"}))

    def test_refuses_non_archive(self, tmp_path):
        with pytest.raises(ArchiveRejected, match="neither a zip nor a tar"):
            extract(tmp_path, b"definitely not an archive")

    def test_skips_os_junk(self, tmp_path):
        folder, _ = extract(
            tmp_path, zip_bytes(REFERENCE | {"__MACOSX/ref/._x": b"", "ref/.DS_Store": b""})
        )
        assert folder.classes == ["cat", "dog"]


class TestCreateCalibration:
    def test_queues_a_calibrate_job(self, client, session, admin_token, dispatcher, data_dir):
        model = make_model(session, calibrated=False)
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
        root = Path(calibration.reference_path)
        assert root.is_relative_to(data_dir.resolve() / "calibrations" / body["id"])
        assert sorted(p.name for p in root.iterdir()) == ["cat", "dog"]
        assert body["job_url"] == f"/v1/jobs/{job.id}"

    def test_stores_the_requested_suite_and_steps(self, client, session, admin_token):
        model = make_model(session, calibrated=False)
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
        assert session.get(Job, calibration.job_id).steps_total == 50

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
        assert not (data_dir / "calibrations").exists() or not any(
            (data_dir / "calibrations").iterdir()
        )

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
        assert not any((data_dir / "calibrations").iterdir())

    def test_rejects_more_classes_than_the_model_has(self, client, session, admin_token):
        model = make_model(session, calibrated=False, spec={"num_classes": 2})
        three = REFERENCE | {"ref/emu/0.png": image_bytes(9)}
        response = client.post(
            f"/v1/models/{model.id}/calibrations",
            files={"archive": ("ref.zip", zip_bytes(three), "application/zip")},
            headers=bearer(admin_token),
        )
        assert response.status_code == 422
        assert "3 class folders" in response.json()["detail"]

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
