"""The bad-input corpus: one row per malformed request, named after the behaviour it pins.

Every row must get its 4xx status and problem code, an `application/problem+json` body that
mentions each of `mentions` (the item: file, field, header, member; and the reason), and must
store nothing: no row in any table, no file under data_dir (images, incoming/ staging, extracted
reference sets, spooled archives). `test_corpus.py` runs each row against the real app on
Postgres; rows with `live=True` go through uvicorn (what only the HTTP layer sees).

Paths use `{stream}`, `{model}` (the stream's 10-class model), `{cmodel}` (a 2-class model to
calibrate) and `{rule}`; `role` picks the key. `settings` overrides limits for that row only.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.badinput import payloads as p
from tests.factories import image_bytes

BATCH = "/v1/streams/{stream}/batches"
CALIBRATE = "/v1/models/{cmodel}/calibrations"
STREAMS = "/v1/streams"
RULES = "/v1/streams/{stream}/alert-rules"
RULE = "/v1/streams/{stream}/alert-rules/{rule}"
LABELS = "/v1/streams/{stream}/labels"
ESTIMATES = "/v1/streams/{stream}/estimates"
UNSET: Any = object()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    role: str = "admin"
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    json: Any = UNSET
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class Case:
    name: str
    request: Callable[[], Request]
    status: int
    code: str
    mentions: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    live: bool = False


# --- request builders ----------------------------------------------------------------------------


def batch(*items: tuple[str, bytes], field_name: str = "images", **headers: str) -> Request:
    files = [(field_name, (name, data, "application/octet-stream")) for name, data in items]
    return Request("POST", BATCH, role="ingest", files=files, headers=headers)


def raw_batch(body: bytes, content_type: str | None, **headers: str) -> Request:
    if content_type is not None:
        headers = {"Content-Type": content_type, **headers}
    return Request("POST", BATCH, role="ingest", content=body, headers=headers)


def multipart_batch(parts: list[tuple[bytes, bytes | None, bytes]]) -> Request:
    body, headers = p.multipart(parts)
    return Request("POST", BATCH, role="ingest", content=body, headers=headers)


def archive(data: bytes, name: str = "reference.zip", **form: str) -> Request:
    files = [("archive", (name, data, "application/octet-stream"))]
    return Request("POST", CALIBRATE, files=files, data=form or None)


def calibrate_form(**form: str) -> Request:
    """A valid 2-class archive with these form fields (options)."""
    return archive(p.zip_bytes(p.reference()), **form)


def stream_json(body: Any) -> Request:
    return Request("POST", STREAMS, json=body)


def stream_raw(body: bytes, content_type: str = "application/json") -> Request:
    return Request("POST", STREAMS, content=body, headers={"Content-Type": content_type})


def rule_json(**overrides: Any) -> Request:
    body = {"name": "floor", "kind": "accuracy_below", "threshold": 0.8, **overrides}
    return Request("POST", RULES, json=body)


def rule_raw(body: bytes) -> Request:
    return Request("POST", RULES, content=body, headers={"Content-Type": "application/json"})


def webhook(url: str) -> Request:
    return rule_json(webhook_url=url)


def labels(body: Any) -> Request:
    return Request("POST", LABELS, role="ingest", json=body)


def model_form(spec: str | None, weights: bytes | None) -> Request:
    files = [("weights", ("w.pt", weights, "application/octet-stream"))] if weights else None
    data = {"spec": spec} if spec is not None else None
    return Request("POST", "/v1/models", files=files, data=data)


def page(path: str, **params: str) -> Request:
    return Request("GET", path, role="read", params=params)


def head_request(size: int, *, count: int = 1) -> Request:
    """A request whose head is `count` headers of `size` bytes each (only uvicorn sees it)."""
    headers = {f"X-Pad-{i}": "a" * size for i in range(count)}
    return Request("GET", "/v1/streams", role="read", headers=headers)


OK_PNG = ("ok.png", image_bytes(1))
SPEC = (
    '{"name": "m", "format": "entrypoint", "entrypoint": "tiny", "num_classes": 10, '
    '"input": {"size": [32, 32]}}'
)
CHR, BLK, FIFO, SYM, LNK = (
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
)
SOME_ID = "3f1c2d4e-0000-4000-8000-000000000001"
BAD_FILE = ("batch-rejected", 422)


def bad_file(name: str, filename: str, data: bytes, *reason: str, **settings: Any) -> Case:
    """A batch of one good file and one bad one: all refused, the bad one named with its reason."""
    return Case(
        name,
        lambda: batch(OK_PNG, (filename, data)),
        422,
        "batch-rejected",
        (filename, *reason),
        settings=settings,
    )


# --- the corpus -------------------------------------------------------------------------------

FILES = [
    bad_file("truncated_jpeg_is_refused_as_corrupt", "cut.jpg", p.truncated(p.jpeg()), "corrupt"),
    bad_file("truncated_png_is_refused_as_corrupt", "cut.png", p.truncated(p.png()), "corrupt"),
    bad_file("truncated_webp_is_refused_as_corrupt", "cut.webp", p.truncated(p.webp()), "corrupt"),
    bad_file("jpeg_cut_after_its_header_is_refused", "head.jpg", p.jpeg()[:200], "corrupt"),
    bad_file("png_with_noise_body_is_refused", "noise.png", p.corrupted(p.png()), "corrupt"),
    bad_file("jpeg_with_noise_body_is_refused", "noise.jpg", p.corrupted(p.jpeg()), "corrupt"),
    bad_file(
        "webp_with_noise_after_its_header_is_refused",
        "noise.webp",
        p.corrupted(p.webp(), 40),
        "corrupt",
    ),
    bad_file(
        "png_with_a_bad_header_checksum_is_refused",
        "crc.png",
        p.png_bad_crc(),
        "not a supported image",
    ),
    bad_file(
        "png_bomb_header_is_refused_before_decoding",
        "bomb.png",
        p.png_header_only(100_000, 100_000),
        "decompression",
    ),
    bad_file(
        "jpeg_bomb_header_is_refused_before_decoding",
        "bomb.jpg",
        p.jpeg_header_declaring(60_000, 60_000),
        "decompression",
    ),
    bad_file(
        "webp_bomb_header_is_refused_before_decoding",
        "bomb.webp",
        p.webp_header_declaring(16_384, 16_384),
        "decompression",
    ),
    bad_file(
        "png_just_over_the_pixel_limit_is_refused",
        "big.png",
        p.png_header_only(2001, 2000),
        "2001x2000 pixels",
        "decompression-bomb guard",
    ),
    bad_file(
        "animated_webp_whose_frames_exceed_the_pixel_limit_is_refused",
        "anim.webp",
        p.animated_webp_over_budget(frames=3, side=64),
        "frames",
        max_image_pixels=10_000,
    ),
    bad_file("png_with_zero_width_is_refused", "zero.png", p.png_with_zero_width(), "zero.png"),
    bad_file("gif_is_not_whitelisted", "a.gif", p.gif(), "not a supported image"),
    bad_file("bmp_is_not_whitelisted", "a.bmp", p.bmp(), "not a supported image"),
    bad_file("tiff_is_not_whitelisted", "a.tiff", p.tiff(), "not a supported image"),
    bad_file("svg_is_not_an_image_format_we_decode", "a.svg", p.svg(), "not a supported image"),
    bad_file(
        "html_named_jpg_is_refused_by_content", "x.jpg", p.html_named_jpg(), "not a supported"
    ),
    bad_file("zip_named_png_is_refused_by_content", "x.png", p.zip_named_png(), "not a supported"),
    bad_file(
        "jpeg_magic_glued_to_a_png_is_refused", "glued.jpg", p.jpeg_magic_then_png(), "glued.jpg"
    ),
    bad_file("zero_byte_file_is_refused_as_empty", "empty.png", b"", "file is empty"),
    bad_file("one_byte_file_is_refused", "one.png", b"\x89", "not a supported image"),
    bad_file("png_signature_alone_is_refused", "sig.png", b"\x89PNG\r\n\x1a\n", "sig.png"),
    bad_file("text_file_is_refused", "notes.txt", b"hello", "not a supported image"),
    bad_file(
        "file_over_the_per_file_byte_limit_is_refused",
        "huge.png",
        p.noise_bytes(64 * 1024 + 1),
        "over the limit of 65536 bytes",
    ),
    Case(
        "more_files_than_the_batch_limit_is_413_naming_the_first_extra",
        lambda: batch(*[(f"f{i}.png", image_bytes(i)) for i in range(6)]),
        413,
        "batch-too-large",
        ("f5.png", "file count limit"),
        settings={"max_batch_files": 5},
    ),
    Case(
        "more_bytes_than_the_batch_limit_is_413_naming_the_file_past_it",
        lambda: batch(*[(f"n{i}.png", p.noise_bytes(30_000, i)) for i in range(4)]),
        413,
        "batch-too-large",
        ("n3.png", "byte limit"),
        settings={"max_batch_bytes": 100_000},
    ),
    Case(
        "images_over_the_per_batch_decode_budget_are_413_before_any_decode",
        lambda: batch(*[(f"d{i}.png", p.png()) for i in range(3)]),
        413,
        "batch-too-large",
        ("d2.png", "decode budget"),
        settings={"max_batch_pixels": 10_000},
    ),
    Case(
        "one_bad_file_rejects_the_whole_batch_and_names_only_it",
        lambda: batch(OK_PNG, ("b.png", b"nope"), ("c.png", image_bytes(3))),
        422,
        "batch-rejected",
        ("'b.png'", "1 of 3 files rejected", "nothing was stored"),
    ),
    Case(
        "every_bad_file_is_listed_with_its_index",
        lambda: batch(("x.gif", p.gif()), ("y.png", b""), ("z.jpg", p.truncated(p.jpeg()))),
        422,
        "batch-rejected",
        ("3 of 3 files rejected", "x.gif", "y.png", "z.jpg"),
    ),
]

MULTIPART = [
    Case(
        "nul_byte_in_a_file_name_is_refused_not_a_database_error",
        lambda: multipart_batch([(b"images", b"a\x00b.png", image_bytes(1))]),
        422,
        "batch-rejected",
        ("a\\x00b.png", "NUL"),
    ),
    Case(
        "control_character_in_a_file_name_is_refused",
        lambda: multipart_batch([(b"images", b"a\x01b.png", image_bytes(1))]),
        422,
        "batch-rejected",
        ("a\\x01b.png", "control characters"),
    ),
    Case(
        "delete_character_in_a_file_name_is_refused",
        lambda: multipart_batch([(b"images", b"a\x7fb.png", image_bytes(1))]),
        422,
        "batch-rejected",
        ("a\\x7fb.png", "control characters"),
    ),
    Case(
        "multipart_without_a_boundary_is_400",
        lambda: raw_batch(b"--x\r\n\r\n", "multipart/form-data"),
        400,
        "malformed-request",
        ("multipart", "boundary"),
    ),
    Case(
        "multipart_whose_body_uses_another_boundary_is_400",
        lambda: raw_batch(
            p.multipart([(b"images", b"a.png", image_bytes(1))])[0],
            "multipart/form-data; boundary=other",
        ),
        400,
        "malformed-request",
        ("multipart",),
    ),
    Case(
        "multipart_cut_in_the_middle_of_its_only_part_is_400",
        lambda: raw_batch(
            p.multipart([(b"images", b"a.png", image_bytes(1))])[0][:-60],
            "multipart/form-data; boundary=fwboundary",
        ),
        400,
        "malformed-request",
        ("closing boundary",),
    ),
    Case(
        "multipart_cut_in_its_last_part_stores_not_even_the_complete_parts_before",
        lambda: raw_batch(
            p.multipart([(b"images", b"a.png", image_bytes(1)), (b"images", b"b.png", p.png())])[0][
                :-300
            ],
            "multipart/form-data; boundary=fwboundary",
        ),
        400,
        "malformed-request",
        ("closing boundary", "nothing was stored"),
    ),
    Case(
        "multipart_without_its_closing_delimiter_is_400",
        lambda: raw_batch(
            p.multipart([(b"images", b"a.png", image_bytes(1))])[0].removesuffix(
                b"--fwboundary--\r\n"
            ),
            "multipart/form-data; boundary=fwboundary",
        ),
        400,
        "malformed-request",
        ("closing boundary",),
    ),
    Case(
        "part_without_a_content_disposition_name_is_not_an_image",
        lambda: raw_batch(
            b"--fwb\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--fwb--\r\n",
            "multipart/form-data; boundary=fwb",
        ),
        400,
        "malformed-request",
        ("multipart",),
    ),
    Case(
        "batch_without_the_images_field_is_empty",
        lambda: multipart_batch([(b"photos", b"a.png", image_bytes(1))]),
        422,
        "empty-batch",
        ("images",),
    ),
    Case(
        "images_field_holding_text_instead_of_a_file_is_refused",
        lambda: multipart_batch([(b"images", None, b"not a file")]),
        422,
        "invalid",
        ("images", "not a file"),
    ),
    Case(
        "json_body_on_the_batch_route_is_refused_naming_the_content_type",
        lambda: raw_batch(b'{"images": []}', "application/json"),
        422,
        "invalid",
        ("multipart/form-data", "application/json"),
    ),
    Case(
        "text_plain_body_on_the_batch_route_is_refused",
        lambda: raw_batch(b"images=a.png", "text/plain"),
        422,
        "invalid",
        ("multipart/form-data", "text/plain"),
    ),
    Case(
        "urlencoded_form_on_the_batch_route_is_refused",
        lambda: raw_batch(b"images=abc", "application/x-www-form-urlencoded"),
        422,
        "invalid",
        ("multipart/form-data", "x-www-form-urlencoded"),
    ),
    Case(
        "batch_without_any_content_type_is_refused",
        lambda: raw_batch(b"\x89PNG", None),
        422,
        "invalid",
        ("multipart/form-data", "content type"),
    ),
    Case(
        "more_parts_than_twice_the_file_limit_is_413",
        lambda: multipart_batch([(b"images", f"{i}.png".encode(), b"x") for i in range(40)]),
        413,
        "batch-too-large",
        ("at most 5 files",),
        settings={"max_batch_files": 5},
    ),
]

HEADERS = [
    Case(
        "idempotency_key_over_200_characters_is_refused",
        lambda: batch(OK_PNG, **{"Idempotency-Key": "k" * 201}),
        422,
        "invalid-request",
        ("Idempotency-Key", "200 characters"),
    ),
    Case(
        "missing_bearer_token_is_401",
        lambda: Request("POST", BATCH, role="none", files=batch(OK_PNG).files),
        401,
        "not-authenticated",
        ("Bearer",),
    ),
    Case(
        "malformed_authorization_header_is_401",
        lambda: Request(
            "POST",
            BATCH,
            role="none",
            files=batch(OK_PNG).files,
            headers={"Authorization": "Basic x"},
        ),
        401,
        "not-authenticated",
        ("Bearer",),
    ),
    Case(
        "unknown_token_is_401",
        lambda: Request(
            "POST",
            BATCH,
            role="none",
            files=batch(OK_PNG).files,
            headers={"Authorization": "Bearer fw_abcdefgh_" + "x" * 40},
        ),
        401,
        "not-authenticated",
        ("key",),
    ),
    Case(
        "read_key_posting_a_batch_is_403",
        lambda: Request("POST", BATCH, role="read", files=batch(OK_PNG).files),
        403,
        "permission-denied",
        ("ingest",),
    ),
    Case(
        "ingest_key_creating_a_stream_is_403",
        lambda: Request("POST", STREAMS, role="ingest", json={"name": "x", "model_id": SOME_ID}),
        403,
        "permission-denied",
        ("admin",),
    ),
    Case(
        "a_200_kb_header_is_431_not_a_reset",
        lambda: head_request(200 * 1024),
        431,
        "headers-too-large",
        ("32768 bytes",),
        live=True,
    ),
    Case(
        "forty_1_kb_headers_over_the_head_limit_are_431",
        lambda: head_request(1024, count=40),
        431,
        "headers-too-large",
        ("32768 bytes",),
        live=True,
    ),
    Case(
        "a_header_just_over_the_limit_on_the_batch_route_is_431",
        lambda: Request("POST", BATCH, role="ingest", headers={"Idempotency-Key": "k" * 33_000}),
        431,
        "headers-too-large",
        ("headers",),
        live=True,
    ),
]

ARCHIVES = [
    Case(
        "zip_slip_member_climbing_out_with_dotdot_is_refused",
        lambda: archive(p.zip_bytes({**p.reference(), "ref/class0/../../../evil.png": b"x"})),
        422,
        "archive-rejected",
        ("../", "climbs out"),
    ),
    Case(
        "tar_member_climbing_out_with_dotdot_is_refused",
        lambda: archive(p.tar_bytes({**p.reference(), "../evil.png": b"x"}), "ref.tar.gz"),
        422,
        "archive-rejected",
        ("../evil.png", "climbs out"),
    ),
    Case(
        "zip_member_with_an_absolute_path_is_refused",
        lambda: archive(p.zip_bytes({**p.reference(), "/etc/cron.d/x.png": b"x"})),
        422,
        "archive-rejected",
        ("cron.d", "absolute"),
    ),
    Case(
        "tar_member_with_an_absolute_path_is_refused",
        lambda: archive(p.tar_bytes({**p.reference(), "/tmp/x.png": b"x"}), "ref.tgz"),
        422,
        "archive-rejected",
        ("/tmp/x.png", "absolute"),
    ),
    Case(
        "zip_member_with_a_backslash_path_is_refused",
        lambda: archive(p.zip_bytes({**p.reference(), "ref\\..\\evil.png": b"x"})),
        422,
        "archive-rejected",
        ("backslash",),
    ),
    Case(
        "zip_symlink_member_is_refused",
        lambda: archive(p.zip_bytes(p.reference(), symlinks={"ref/class0/l.png": "/etc/passwd"})),
        422,
        "archive-rejected",
        ("ref/class0/l.png", "symbolic link"),
    ),
    Case(
        "tar_symlink_member_is_refused",
        lambda: archive(
            p.tar_bytes(p.reference(), special={"ref/class0/l.png": (SYM, "/etc/passwd")}),
            "ref.tar.gz",
        ),
        422,
        "archive-rejected",
        ("ref/class0/l.png", "link"),
    ),
    Case(
        "tar_hard_link_member_is_refused",
        lambda: archive(
            p.tar_bytes(p.reference(), special={"ref/class0/h.png": (LNK, "/etc/shadow")}),
            "ref.tar.gz",
        ),
        422,
        "archive-rejected",
        ("ref/class0/h.png", "link"),
    ),
    Case(
        "tar_character_device_member_is_refused",
        lambda: archive(p.tar_bytes(p.reference(), special={"ref/zero": (CHR, "")}), "r.tar.gz"),
        422,
        "archive-rejected",
        ("ref/zero", "not a regular file"),
    ),
    Case(
        "tar_block_device_member_is_refused",
        lambda: archive(p.tar_bytes(p.reference(), special={"ref/sda": (BLK, "")}), "r.tar.gz"),
        422,
        "archive-rejected",
        ("ref/sda", "not a regular file"),
    ),
    Case(
        "tar_fifo_member_is_refused",
        lambda: archive(p.tar_bytes(p.reference(), special={"ref/pipe": (FIFO, "")}), "r.tar.gz"),
        422,
        "archive-rejected",
        ("ref/pipe", "not a regular file"),
    ),
    Case(
        "zip_bomb_by_compression_ratio_is_refused_before_extracting",
        lambda: archive(p.zip_bomb()),
        422,
        "archive-rejected",
        ("bomb.png", "compression bomb"),
    ),
    Case(
        "archive_unpacking_past_the_unpacked_byte_cap_is_refused",
        lambda: archive(p.zip_bytes(p.reference(per_class=3))),
        422,
        "archive-rejected",
        ("unpacks to", "limit is 500"),
        settings={"max_archive_unpacked_bytes": 500},
    ),
    Case(
        "archive_with_more_entries_than_the_limit_is_refused",
        lambda: archive(p.zip_bytes(p.reference(per_class=3))),
        422,
        "archive-rejected",
        ("entries", "limit is 4"),
        settings={"max_archive_entries": 4},
    ),
    Case(
        "archive_over_the_upload_byte_limit_is_413",
        lambda: archive(p.zip_bytes(p.reference())),
        413,
        "payload-too-large",
        ("reference.zip", "limit of 100 bytes"),
        settings={"max_archive_bytes": 100},
    ),
    Case(
        "archive_holding_only_a_nested_archive_has_no_classes",
        lambda: archive(p.zip_bytes({"ref/class0/inner.zip": p.zip_bytes(p.reference())})),
        422,
        "archive-rejected",
        ("class folder",),
    ),
    Case(
        "nested_archives_beside_images_do_not_count_as_a_class",
        lambda: archive(
            p.zip_bytes({**p.reference(classes=1), "ref/zz/inner.zip": p.zip_bytes(p.reference())})
        ),
        422,
        "archive-rejected",
        ("1 class folder", "at least two"),
    ),
    Case(
        "archive_with_more_classes_than_the_model_is_refused_and_keeps_no_files",
        lambda: archive(p.zip_bytes(p.reference(classes=3))),
        422,
        "archive-rejected",
        ("3 class folders", "2 classes"),
    ),
    Case(
        "archive_with_a_single_class_is_refused_before_any_job",
        lambda: archive(p.zip_bytes(p.reference(classes=1))),
        422,
        "archive-rejected",
        ("1 class folder", "at least two"),
    ),
    Case(
        "empty_zip_is_refused",
        lambda: archive(p.zip_bytes({})),
        422,
        "archive-rejected",
        ("reference.zip",),
    ),
    Case(
        "zero_byte_archive_is_refused",
        lambda: archive(b"", "empty.zip"),
        422,
        "archive-rejected",
        ("empty.zip",),
    ),
    Case(
        "png_uploaded_as_an_archive_is_refused",
        lambda: archive(image_bytes(1), "photo.png"),
        422,
        "archive-rejected",
        ("photo.png",),
    ),
    Case(
        "truncated_zip_is_refused",
        lambda: archive(p.truncated(p.zip_bytes(p.reference())), "cut.zip"),
        422,
        "archive-rejected",
        ("cut.zip",),
    ),
    Case(
        "truncated_tar_gz_is_refused",
        lambda: archive(p.truncated(p.tar_bytes(p.reference()), 0.6), "cut.tar.gz"),
        422,
        "archive-rejected",
        ("cut.tar.gz",),
    ),
    Case(
        "encrypted_zip_member_is_refused",
        lambda: archive(p.encrypted_zip()),
        422,
        "archive-rejected",
        ("encrypted",),
    ),
    Case(
        "images_at_the_top_level_instead_of_class_folders_are_refused",
        lambda: archive(p.zip_bytes({"a.png": image_bytes(1), "b.png": image_bytes(2)})),
        422,
        "archive-rejected",
        ("a.png", "top level"),
    ),
    Case(
        "unknown_corruption_family_is_refused",
        lambda: calibrate_form(families="gaussian_noise,lasers"),
        422,
        "invalid-calibration-options",
        ("lasers",),
    ),
    Case(
        "non_integer_severities_are_refused",
        lambda: calibrate_form(severities="2,four"),
        422,
        "invalid-calibration-options",
        ("severities", "four"),
    ),
    Case(
        "severity_outside_1_to_5_is_refused",
        lambda: calibrate_form(severities="9"),
        422,
        "invalid-calibration-options",
        ("severities", "9"),
    ),
    Case(
        "calibration_steps_of_zero_are_refused",
        lambda: calibrate_form(steps="0"),
        422,
        "invalid-calibration-options",
        ("steps",),
    ),
    Case(
        "calibration_steps_with_23_digits_are_refused",
        lambda: calibrate_form(steps="1" * 23),
        422,
        "invalid-calibration-options",
        ("steps",),
    ),
    Case(
        "calibration_steps_that_are_not_a_number_are_refused",
        lambda: calibrate_form(steps="many"),
        422,
        "invalid-request",
        ("steps",),
    ),
    Case(
        "calibration_with_two_archive_fields_is_refused",
        lambda: Request(
            "POST",
            CALIBRATE,
            files=[
                ("archive", ("a.zip", p.zip_bytes(p.reference()), "application/zip")),
                ("archive", ("b.zip", p.zip_bytes(p.reference(classes=3)), "application/zip")),
            ],
        ),
        422,
        "invalid-request",
        ("archive",),
    ),
    Case(
        "calibration_with_two_steps_fields_is_refused",
        lambda: Request(
            "POST",
            CALIBRATE,
            files=[("archive", ("r.zip", p.zip_bytes(p.reference()), "application/zip"))],
            data={"steps": ["10", "20"]},  # type: ignore[dict-item]
        ),
        422,
        "invalid-request",
        ("steps",),
    ),
    Case(
        "calibration_without_an_archive_field_is_refused",
        lambda: Request("POST", CALIBRATE, data={"steps": "10"}),
        422,
        "invalid-request",
        ("archive",),
    ),
]

MODELS = [
    Case(
        "model_spec_that_is_not_json_is_refused",
        lambda: model_form("{not json", b"weights"),
        422,
        "invalid-model-spec",
        ("spec",),
    ),
    Case(
        "model_with_two_spec_fields_is_refused",
        lambda: Request(
            "POST",
            "/v1/models",
            files=[("weights", ("w.pt", b"weights", "application/octet-stream"))],
            data={"spec": [SPEC, SPEC]},
        ),
        422,
        "invalid-request",
        ("spec",),
    ),
    Case(
        "model_without_weights_is_refused",
        lambda: model_form(SPEC, None),
        422,
        "invalid-request",
        ("weights",),
    ),
    Case(
        "model_without_a_spec_is_refused",
        lambda: model_form(None, b"weights"),
        422,
        "invalid-request",
        ("spec",),
    ),
    Case(
        "model_spec_importing_an_arbitrary_module_is_refused",
        lambda: model_form(SPEC.replace('"tiny"', '"os:system"'), b"weights"),
        422,
        "invalid-model-spec",
        ("os:system",),
    ),
    Case(
        "model_weights_that_are_not_a_checkpoint_are_refused",
        lambda: model_form(SPEC, b"\x00garbage"),
        422,
        "model-rejected",
        ("weights",),
    ),
    Case(
        "model_weights_over_the_weights_limit_are_413",
        lambda: model_form(SPEC, p.noise_bytes(2000)),
        413,
        "payload-too-large",
        ("1000 bytes",),
        settings={"max_weights_bytes": 1000},
    ),
]

JSON_BODIES = [
    Case(
        "stream_window_size_as_a_string_is_refused_naming_the_field",
        lambda: stream_json({"name": "s", "model_id": "{model}", "window_size": "big"}),
        422,
        "invalid-request",
        ("window_size", "integer"),
    ),
    Case(
        "unknown_stream_field_is_refused_naming_it",
        lambda: stream_json({"name": "s", "model_id": "{model}", "colour": "red"}),
        422,
        "invalid-request",
        ("colour", "Extra inputs"),
    ),
    Case(
        "stream_window_size_with_30_digits_is_refused",
        lambda: stream_json({"name": "s", "model_id": "{model}", "window_size": 10**30}),
        422,
        "invalid-request",
        ("window_size",),
    ),
    Case(
        "stream_steps_as_nan_is_refused",
        lambda: stream_raw(b'{"name": "s", "model_id": "{model}", "steps": NaN}'),
        422,
        "invalid-request",
        ("steps",),
    ),
    Case(
        "stream_retain_days_as_infinity_is_refused",
        lambda: stream_raw(b'{"name": "s", "model_id": "{model}", "retain_days": Infinity}'),
        422,
        "invalid-request",
        ("retain_days",),
    ),
    Case(
        "stream_retain_images_negative_is_refused",
        lambda: stream_json({"name": "s", "model_id": "{model}", "retain_images": -1}),
        422,
        "invalid-request",
        ("retain_images",),
    ),
    Case(
        "deeply_nested_json_is_400_not_a_recursion_error",
        lambda: stream_raw(p.nested_json(100_000)),
        400,
        "bad-request",
        ("parsing the body",),
    ),
    Case(
        "stream_body_that_is_not_json_is_refused_naming_the_body",
        lambda: stream_raw(b"name=s&model_id=x"),
        422,
        "invalid-request",
        ("body",),
    ),
    Case(
        "stream_body_that_is_a_json_array_is_refused",
        lambda: stream_json([{"name": "s"}]),
        422,
        "invalid-request",
        ("body",),
    ),
    Case(
        "stream_name_with_a_nul_byte_is_refused",
        lambda: stream_json({"name": "a\x00b", "model_id": "{model}"}),
        422,
        "invalid-request",
        ("name",),
    ),
    Case(
        "stream_name_over_200_characters_is_refused",
        lambda: stream_json({"name": "n" * 201, "model_id": "{model}"}),
        422,
        "invalid-request",
        ("name", "200"),
    ),
    Case(
        "stream_model_id_that_is_not_a_uuid_is_refused",
        lambda: stream_json({"name": "s", "model_id": "model-1"}),
        422,
        "invalid-request",
        ("model_id", "UUID"),
    ),
    Case(
        "stream_for_a_model_that_does_not_exist_is_404",
        lambda: stream_json({"name": "s", "model_id": SOME_ID}),
        404,
        "model-not-found",
        (SOME_ID,),
    ),
    Case(
        "stream_auto_estimate_that_is_not_a_boolean_is_refused",
        lambda: stream_json({"name": "s", "model_id": "{model}", "auto_estimate": "maybe"}),
        422,
        "invalid-request",
        ("auto_estimate",),
    ),
    Case(
        "alert_threshold_as_nan_is_refused",
        lambda: rule_raw(b'{"name": "n", "kind": "accuracy_below", "threshold": NaN}'),
        422,
        "invalid-alert-rule",
        ("threshold",),
    ),
    Case(
        "alert_threshold_as_infinity_is_refused",
        lambda: rule_raw(
            b'{"name": "n", "kind": "embedding_above", "embedding_kind": "frechet", '
            b'"threshold": Infinity}'
        ),
        422,
        "invalid-alert-rule",
        ("threshold",),
    ),
    Case(
        "alert_threshold_of_1e400_is_refused",
        lambda: rule_raw(
            b'{"name": "n", "kind": "embedding_above", "embedding_kind": "frechet", '
            b'"threshold": 1e400}'
        ),
        422,
        "invalid-alert-rule",
        ("threshold",),
    ),
    Case(
        "alert_windows_of_zero_are_refused",
        lambda: rule_json(windows=0),
        422,
        "invalid-request",
        ("windows",),
    ),
    Case(
        "alert_windows_with_20_digits_are_refused",
        lambda: rule_json(windows=10**20),
        422,
        "invalid-request",
        ("windows",),
    ),
    Case(
        "unknown_alert_kind_is_refused",
        lambda: rule_json(kind="vibes"),
        422,
        "invalid-request",
        ("kind",),
    ),
    Case(
        "alert_rule_patch_with_an_unknown_field_is_refused",
        lambda: Request("PATCH", RULE, json={"colour": "red"}),
        422,
        "invalid-request",
        ("colour",),
    ),
    Case(
        "alert_rule_patch_with_a_text_threshold_is_refused",
        lambda: Request("PATCH", RULE, json={"threshold": "high"}),
        422,
        "invalid-request",
        ("threshold",),
    ),
    Case(
        "negative_label_is_refused",
        lambda: labels({"labels": [{"image_id": SOME_ID, "label": -1}]}),
        422,
        "invalid-request",
        ("label",),
    ),
    Case(
        "label_with_20_digits_is_refused",
        lambda: labels({"labels": [{"image_id": SOME_ID, "label": 10**20}]}),
        422,
        "labels-rejected",
        ("label",),
    ),
    Case(
        "label_naming_both_an_image_id_and_a_hash_is_refused",
        lambda: labels({"labels": [{"image_id": SOME_ID, "sha256": "ab" * 32, "label": 1}]}),
        422,
        "invalid-request",
        ("image_id", "sha256"),
    ),
    Case(
        "empty_label_list_is_refused",
        lambda: labels({"labels": []}),
        422,
        "invalid-request",
        ("labels",),
    ),
    Case(
        "label_for_an_unknown_image_is_refused_writing_nothing",
        lambda: labels({"labels": [{"image_id": SOME_ID, "label": 1}]}),
        422,
        "labels-rejected",
        (SOME_ID,),
    ),
]

WEBHOOKS = [
    Case(
        "webhook_to_loopback_is_refused",
        lambda: webhook("http://127.0.0.1:8000/hook"),
        422,
        "invalid-alert-rule",
        ("127.0.0.1", "loopback"),
    ),
    Case(
        "webhook_to_localhost_by_name_is_refused",
        lambda: webhook("http://localhost/hook"),
        422,
        "invalid-alert-rule",
        ("localhost", "loopback"),
    ),
    Case(
        "webhook_to_ipv6_loopback_is_refused",
        lambda: webhook("http://[::1]/hook"),
        422,
        "invalid-alert-rule",
        ("::1", "loopback"),
    ),
    Case(
        "webhook_to_ipv4_mapped_loopback_is_refused",
        lambda: webhook("http://[::ffff:127.0.0.1]/hook"),
        422,
        "invalid-alert-rule",
        ("127.0.0.1", "loopback"),
    ),
    Case(
        "webhook_to_decimal_encoded_loopback_is_refused",
        lambda: webhook("http://2130706433/hook"),
        422,
        "invalid-alert-rule",
        ("127.0.0.1", "loopback"),
    ),
    Case(
        "webhook_to_the_cloud_metadata_address_is_refused",
        lambda: webhook("http://169.254.169.254/latest/meta-data/"),
        422,
        "invalid-alert-rule",
        ("169.254.169.254", "link-local"),
    ),
    Case(
        "webhook_to_a_private_network_is_refused",
        lambda: webhook("http://10.0.0.5/hook"),
        422,
        "invalid-alert-rule",
        ("10.0.0.5", "private"),
    ),
    Case(
        "webhook_to_192_168_is_refused",
        lambda: webhook("https://192.168.1.1/hook"),
        422,
        "invalid-alert-rule",
        ("192.168.1.1", "private"),
    ),
    Case(
        "webhook_to_the_unspecified_address_is_refused",
        lambda: webhook("http://0.0.0.0/hook"),
        422,
        "invalid-alert-rule",
        ("0.0.0.0",),
    ),
    Case(
        "webhook_with_an_ftp_scheme_is_refused",
        lambda: webhook("ftp://93.184.216.34/hook"),
        422,
        "invalid-request",
        ("webhook_url", "scheme"),
    ),
    Case(
        "webhook_with_a_file_scheme_is_refused",
        lambda: webhook("file:///etc/passwd"),
        422,
        "invalid-request",
        ("webhook_url",),
    ),
    Case(
        "webhook_with_a_javascript_scheme_is_refused",
        lambda: webhook("javascript:alert(1)"),
        422,
        "invalid-request",
        ("webhook_url",),
    ),
    Case(
        "webhook_longer_than_2048_characters_is_refused_not_a_database_error",
        lambda: webhook("https://93.184.216.34/" + "a" * 2100),
        422,
        "invalid-request",
        ("webhook_url", "2048"),
    ),
    Case(
        "webhook_with_credentials_in_the_url_is_refused",
        lambda: webhook("https://user:secret@93.184.216.34/hook"),
        422,
        "invalid-alert-rule",
        ("webhook_url", "credentials"),
    ),
    Case(
        "webhook_patched_to_loopback_is_refused",
        lambda: Request("PATCH", RULE, json={"webhook_url": "http://127.0.0.1/x"}),
        422,
        "invalid-alert-rule",
        ("127.0.0.1", "loopback"),
    ),
]

CURSORS = [
    Case(
        "cursor_holding_infinity_is_refused",
        lambda: page(STREAMS, cursor=p.cursor("[Infinity]")),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_holding_nan_is_refused",
        lambda: page(ESTIMATES, cursor=p.cursor("[NaN]")),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_with_a_23_digit_window_index_is_refused",
        lambda: page(ESTIMATES, cursor=p.cursor_of(["1" * 23])),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_with_a_23_digit_json_integer_is_refused",
        lambda: page(ESTIMATES, cursor=p.cursor("[" + "9" * 23 + "]")),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_with_a_non_string_id_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of(["2024-01-01T00:00:00+00:00", 5])),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_with_an_out_of_range_timestamp_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of(["9999-12-31T23:59:59-23:59", SOME_ID])),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_with_a_five_digit_year_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of(["99999-01-01T00:00:00", SOME_ID])),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_that_is_not_base64_is_refused",
        lambda: page(STREAMS, cursor="!!!not base64!!!"),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_that_is_base64_of_binary_is_refused",
        lambda: page(STREAMS, cursor="_-_-_-_-"),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_that_is_json_but_not_a_list_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of({"a": 1})),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "deeply_nested_cursor_is_refused",
        lambda: page(STREAMS, cursor=p.cursor("[" * 5000 + "]" * 5000)),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "cursor_of_another_list_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of(["3"])),
        422,
        "invalid",
        ("cursor", "does not belong"),
    ),
    Case(
        "cursor_with_a_malformed_uuid_is_refused",
        lambda: page(STREAMS, cursor=p.cursor_of(["2024-01-01T00:00:00+00:00", "not-a-uuid"])),
        422,
        "invalid",
        ("cursor",),
    ),
    Case(
        "limit_of_zero_is_refused",
        lambda: page(STREAMS, limit="0"),
        422,
        "invalid-request",
        ("limit",),
    ),
    Case(
        "limit_with_20_digits_is_refused",
        lambda: page("/v1/streams/{stream}/alerts", limit="9" * 20),
        422,
        "invalid-request",
        ("limit",),
    ),
    Case(
        "alerts_filtered_by_a_rule_id_that_is_not_a_uuid_is_refused",
        lambda: page("/v1/streams/{stream}/alerts", rule_id="rule-1"),
        422,
        "invalid-request",
        ("rule_id",),
    ),
]

PATHS = [
    Case(
        "stream_id_that_is_not_a_uuid_is_refused",
        lambda: Request("GET", "/v1/streams/not-a-uuid", role="read"),
        422,
        "invalid-request",
        ("stream_id",),
    ),
    Case(
        "batch_for_a_stream_that_does_not_exist_is_404_and_stores_nothing",
        lambda: Request(
            "POST", f"/v1/streams/{SOME_ID}/batches", role="ingest", files=(batch(OK_PNG).files)
        ),
        404,
        "stream-not-found",
        (SOME_ID,),
    ),
]

CORPUS: list[Case] = [
    *FILES,
    *MULTIPART,
    *HEADERS,
    *ARCHIVES,
    *MODELS,
    *JSON_BODIES,
    *WEBHOOKS,
    *CURSORS,
    *PATHS,
]
