"""POST /v1/streams/{id}/batches: atomic validation with per-file reasons, storage, windows,
idempotent replays."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flipwatch.service.core import storage
from flipwatch.service.core.tables import Batch, Image, Job, Stream
from tests.conftest import bearer
from tests.factories import (
    files,
    image_bytes,
    make_model,
    make_stream,
    noise_png,
    patterned_image,
    png_header_only,
    raw_multipart,
)


def post_batch(client: TestClient, token: str, stream_id: uuid.UUID, payload, **headers: str):
    return client.post(
        f"/v1/streams/{stream_id}/batches", files=payload, headers=bearer(token) | headers
    )


def stored(session: Session, stream_id: uuid.UUID) -> tuple[int, int]:
    batches = session.scalar(select(func.count()).where(Batch.stream_id == stream_id))
    images = session.scalar(select(func.count()).where(Image.stream_id == stream_id))
    return batches or 0, images or 0


def image_files(data_dir: Path) -> list[Path]:
    root = data_dir / "images"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_rejected(response, status: int, code: str, session: Session, stream, data_dir: Path):
    """A 4xx problem body, and nothing stored: no rows, no files, window untouched."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()
    assert stored(session, stream.id) == (0, 0)
    assert image_files(data_dir) == []
    session.refresh(stream)
    assert (stream.images_total, stream.window_fill) == (0, 0)
    return body


class TestCreateBatch:
    def test_accepts_jpeg_png_webp_and_stores_them(
        self, client, session, ingest_token, data_dir, dispatcher
    ):
        stream = make_stream(session, window_size=64)
        payload = files(
            ("a.jpg", image_bytes(1, fmt="JPEG")),
            ("b.png", image_bytes(2, fmt="PNG")),
            ("c.webp", image_bytes(3, fmt="WEBP")),
        )
        response = post_batch(client, ingest_token, stream.id, payload)

        assert response.status_code == 202, response.text
        body = response.json()
        assert body["image_count"] == 3
        assert body["images_total"] == 3
        assert body["window"] == {"index": 0, "fill": 3, "size": 64}
        assert body["job_url"] is None and body["jobs"] == []
        images = session.scalars(select(Image).order_by(Image.position)).all()
        assert [(i.filename, i.format, i.position, i.window_index) for i in images] == [
            ("a.jpg", "JPEG", 0, 0),
            ("b.png", "PNG", 1, 0),
            ("c.webp", "WEBP", 2, 0),
        ]
        for image in images:
            assert image.path == storage.image_key(image.sha256, image.format)  # a storage key
            assert (data_dir / image.path).is_file()  # the local backend: under data_dir
        assert dispatcher.sent == []

    def test_accepts_images_bracket_field_name(self, client, session, ingest_token):
        stream = make_stream(session)
        payload = files(("a.png", image_bytes(1)), field="images[]")
        response = post_batch(client, ingest_token, stream.id, payload)
        assert response.status_code == 202, response.text
        assert response.json()["image_count"] == 1

    def test_same_content_is_stored_once_on_disk(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        same = image_bytes(5)
        response = post_batch(
            client, ingest_token, stream.id, files(("x.png", same), ("y.png", same))
        )
        assert response.status_code == 202
        assert stored(session, stream.id) == (1, 2)
        assert len(image_files(data_dir)) == 1

    def test_admin_may_post_batches(self, client, session, admin_token):
        stream = make_stream(session)
        response = post_batch(client, admin_token, stream.id, files(("a.png", image_bytes(1))))
        assert response.status_code == 202


class TestRejections:
    def test_rejects_unauthenticated(self, client, session, data_dir):
        stream = make_stream(session)
        response = client.post(
            f"/v1/streams/{stream.id}/batches", files=files(("a.png", image_bytes(1)))
        )
        body = assert_rejected(response, 401, "not-authenticated", session, stream, data_dir)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in body["detail"]

    def test_rejects_unknown_token(self, client, session, data_dir):
        stream = make_stream(session)
        response = post_batch(
            client, "fw_000000000000_nope", stream.id, files(("a.png", image_bytes(1)))
        )
        assert_rejected(response, 401, "not-authenticated", session, stream, data_dir)

    def test_rejects_read_role(self, client, session, read_token, data_dir):
        stream = make_stream(session)
        response = post_batch(client, read_token, stream.id, files(("a.png", image_bytes(1))))
        body = assert_rejected(response, 403, "permission-denied", session, stream, data_dir)
        assert "'read'" in body["detail"]

    def test_rejects_unknown_stream(self, client, session, ingest_token, data_dir):
        missing = uuid.uuid4()
        response = post_batch(client, ingest_token, missing, files(("a.png", image_bytes(1))))
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "stream-not-found"
        assert str(missing) in response.json()["detail"]
        assert image_files(data_dir) == []

    def test_rejects_empty_batch(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        response = client.post(
            f"/v1/streams/{stream.id}/batches",
            files=[("note", ("note.txt", b"", "text/plain"))],
            headers=bearer(ingest_token),
        )
        body = assert_rejected(response, 422, "empty-batch", session, stream, data_dir)
        assert "images" in body["detail"]

    def test_rejects_non_image_naming_the_file(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        payload = files(("good.png", image_bytes(1)), ("notes.txt", b"just some text"))
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert body["errors"] == [
            {
                "file": "notes.txt",
                "index": 1,
                "reason": "not a supported image (allowed: JPEG, PNG, WEBP)",
            }
        ]
        assert "notes.txt" in body["detail"]

    def test_rejects_a_nul_byte_in_a_file_name_storing_nothing(
        self, client, session, ingest_token, data_dir
    ):
        stream = make_stream(session)
        content, headers = raw_multipart(
            (b"good.png", image_bytes(1)), (b"bad\x00name.png", image_bytes(2))
        )
        response = client.post(
            f"/v1/streams/{stream.id}/batches",
            content=content,
            headers=bearer(ingest_token) | headers,
        )
        body = assert_rejected(
            response,
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert body["errors"] == [
            {"file": "bad\\x00name.png", "index": 1, "reason": "file name contains a NUL byte"}
        ]
        assert list((data_dir / "incoming").rglob("*.png")) == []

    def test_refuses_a_batch_over_the_decode_budget_before_decoding(
        self, client, session, ingest_token, data_dir, settings
    ):
        # 3 headers of 1500x1500 = 6.75 M pixels against a budget of 5 M: refused from the
        # headers alone (the files carry almost no data, so a decode would fail instead).
        client.app.state.settings = settings.model_copy(update={"max_batch_pixels": 5_000_000})
        stream = make_stream(session)
        payload = files(*((f"big-{i}.png", png_header_only(1500, 1500)) for i in range(3)))
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            413,
            "batch-too-large",
            session,
            stream,
            data_dir,
        )
        assert "decode budget of 5000000 pixels" in body["detail"]
        assert body["errors"] == [
            {"file": "big-2.png", "index": 2, "reason": "over the per-batch decode budget"}
        ]

    def test_rejects_gif_format(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        body = assert_rejected(
            post_batch(
                client, ingest_token, stream.id, files(("anim.gif", image_bytes(1, fmt="GIF")))
            ),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert body["errors"][0]["file"] == "anim.gif"

    @pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
    def test_rejects_truncated_image(self, client, session, ingest_token, data_dir, fmt):
        stream = make_stream(session)
        whole = patterned_image(fmt)
        cut = whole[: len(whole) * 2 // 3]
        payload = files(("ok.png", image_bytes(1)), (f"cut.{fmt.lower()}", cut))
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        [error] = body["errors"]
        assert error["file"] == f"cut.{fmt.lower()}" and error["index"] == 1
        assert "truncated" in error["reason"] or "decode" in error["reason"]

    def test_rejects_decompression_bomb_before_decoding(
        self, client, session, ingest_token, data_dir
    ):
        stream = make_stream(session)
        # 3000 x 3000 = 9 MP: over the test limit (4 MP), under Pillow's own guard: our check.
        # 50000 x 50000: Pillow's DecompressionBombError fires in open(): also refused.
        payload = files(
            ("bomb.png", png_header_only(3000, 3000)), ("huge.png", png_header_only(50000, 50000))
        )
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert [e["file"] for e in body["errors"]] == ["bomb.png", "huge.png"]
        assert "over the limit of 4000000 pixels" in body["errors"][0]["reason"]
        assert "bomb" in body["errors"][1]["reason"]

    def test_rejects_oversize_file(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        big = noise_png(2, side=160)  # ~77 KB > 64 KiB
        payload = files(("small.png", image_bytes(1)), ("big.png", big))
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert body["errors"] == [
            {"file": "big.png", "index": 1, "reason": "file is over the limit of 65536 bytes"}
        ]

    def test_rejects_oversize_batch_by_bytes(
        self, client, session, ingest_token, data_dir, settings
    ):
        client.app.state.settings = settings.model_copy(update={"max_batch_bytes": 100_000})
        stream = make_stream(session)
        payload = files(*[(f"n{i}.png", noise_png(i, side=100)) for i in range(4)])  # ~30 KB each
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            413,
            "batch-too-large",
            session,
            stream,
            data_dir,
        )
        assert body["errors"][0]["file"] == "n3.png"
        assert "n3.png" in body["detail"]

    def test_rejects_oversize_batch_by_count(
        self, client, session, ingest_token, data_dir, settings
    ):
        client.app.state.settings = settings.model_copy(update={"max_batch_files": 3})
        stream = make_stream(session)
        payload = files(*[(f"i{i}.png", image_bytes(i)) for i in range(5)])
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            413,
            "batch-too-large",
            session,
            stream,
            data_dir,
        )
        assert [e["file"] for e in body["errors"]] == ["i3.png", "i4.png"]

    def test_reports_every_failing_file(self, client, session, ingest_token, data_dir):
        stream = make_stream(session)
        payload = files(
            ("a.txt", b"nope"),
            ("b.png", image_bytes(1)),
            ("c.png", png_header_only(3000, 3000)),
            ("d.png", b""),
        )
        body = assert_rejected(
            post_batch(client, ingest_token, stream.id, payload),
            422,
            "batch-rejected",
            session,
            stream,
            data_dir,
        )
        assert [(e["file"], e["index"]) for e in body["errors"]] == [
            ("a.txt", 0),
            ("c.png", 2),
            ("d.png", 3),
        ]


class TestIdempotency:
    def test_retry_returns_first_answer_and_stores_nothing_twice(
        self, client, session, ingest_token, data_dir, dispatcher
    ):
        stream = make_stream(session, window_size=64)
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(65)])
        first = post_batch(client, ingest_token, stream.id, payload, **{"Idempotency-Key": "k-1"})
        second = post_batch(client, ingest_token, stream.id, payload, **{"Idempotency-Key": "k-1"})

        assert first.status_code == second.status_code == 202
        assert second.json() == first.json()
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert stored(session, stream.id) == (1, 65)
        assert session.scalar(select(func.count()).where(Job.stream_id == stream.id)) == 1
        assert len(dispatcher.sent) == 1
        session.refresh(stream)
        assert stream.images_total == 65

    def test_same_key_with_other_content_is_a_conflict(self, client, session, ingest_token):
        stream = make_stream(session)
        headers = {"Idempotency-Key": "k-2"}
        assert (
            post_batch(
                client, ingest_token, stream.id, files(("a.png", image_bytes(1))), **headers
            ).status_code
            == 202
        )
        response = post_batch(
            client, ingest_token, stream.id, files(("a.png", image_bytes(2))), **headers
        )
        assert response.status_code == 409
        assert response.json()["code"] == "idempotency-conflict"
        assert stored(session, stream.id) == (1, 1)

    def test_keys_are_scoped_per_api_key(self, client, session, ingest_token, admin_token):
        stream = make_stream(session)
        payload = files(("a.png", image_bytes(1)))
        headers = {"Idempotency-Key": "shared"}
        assert post_batch(client, ingest_token, stream.id, payload, **headers).status_code == 202
        assert post_batch(client, admin_token, stream.id, payload, **headers).status_code == 202
        assert stored(session, stream.id) == (2, 2)

    def test_rejected_batch_can_be_retried_with_the_same_key(self, client, session, ingest_token):
        stream = make_stream(session)
        headers = {"Idempotency-Key": "k-3"}
        bad = post_batch(client, ingest_token, stream.id, files(("a.txt", b"x")), **headers)
        assert bad.status_code == 422
        good = post_batch(
            client, ingest_token, stream.id, files(("a.png", image_bytes(1))), **headers
        )
        assert good.status_code == 202


class TestWindows:
    def test_closing_a_window_queues_an_estimate_job_and_dispatches_after_commit(
        self, client, session, ingest_token, dispatcher
    ):
        stream = make_stream(session, window_size=64, steps=12)
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(70)])
        body = post_batch(client, ingest_token, stream.id, payload).json()

        assert body["window"] == {"index": 1, "fill": 6, "size": 64}
        [job_link] = body["jobs"]
        assert job_link["window_index"] == 0
        assert body["job_url"] == f"/v1/jobs/{job_link['id']}"
        job = session.get(Job, uuid.UUID(job_link["id"]))
        assert (job.kind, job.state, job.window_index, job.steps_total) == (
            "estimate",
            "queued",
            0,
            12,
        )
        assert dispatcher.sent == [job.id]
        windows = session.execute(
            select(Image.window_index, func.count())
            .where(Image.stream_id == stream.id)
            .group_by(Image.window_index)
            .order_by(Image.window_index)
        ).all()
        assert [tuple(w) for w in windows] == [(0, 64), (1, 6)]

    def test_one_batch_may_close_several_windows(self, client, session, ingest_token, dispatcher):
        stream = make_stream(session, window_size=64)
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(130)])
        body = post_batch(client, ingest_token, stream.id, payload).json()
        assert [j["window_index"] for j in body["jobs"]] == [0, 1]
        assert body["window"] == {"index": 2, "fill": 2, "size": 64}
        assert len(dispatcher.sent) == 2

    def test_without_auto_estimate_windows_close_without_jobs(
        self, client, session, ingest_token, dispatcher
    ):
        stream = make_stream(session, window_size=64, auto_estimate=False)
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(64)])
        body = post_batch(client, ingest_token, stream.id, payload).json()
        assert body["jobs"] == [] and body["window"] == {"index": 1, "fill": 0, "size": 64}
        assert dispatcher.sent == []

    def test_uncalibrated_model_closes_window_without_job_and_says_why(
        self, client, session, ingest_token, dispatcher
    ):
        stream = make_stream(session, model=make_model(session, calibrated=False), window_size=64)
        payload = files(*[(f"{i}.png", image_bytes(i)) for i in range(64)])
        response = post_batch(client, ingest_token, stream.id, payload)
        assert response.status_code == 202
        body = response.json()
        assert body["jobs"] == []
        [notice] = body["notices"]
        assert "no calibration" in notice and "/calibrations" in notice
        assert dispatcher.sent == []
        assert session.get(Stream, stream.id).current_window_index == 1
