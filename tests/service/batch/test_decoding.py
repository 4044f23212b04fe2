"""The process pool of FLIPWATCH_VALIDATION_PROCESSES gives the same verdicts as the request's
thread, in the input order."""

from __future__ import annotations

import pytest

from flipwatch.service.batch.decoding import DecodePool
from flipwatch.service.batch.service import Upload, _decode_here, validate_batch
from flipwatch.service.core.errors import BatchRejected
from flipwatch.service.core.settings import Settings
from tests.factories import patterned_image


def test_pool_decodes_report_the_same_reasons_in_order_as_inline_decodes() -> None:
    good = patterned_image("PNG")
    files = [good, good[: len(good) // 2], patterned_image("JPEG"), good[:-40]]
    pool = DecodePool(1)
    try:
        pooled = pool.decode_all(files)
    finally:
        pool.shutdown()

    assert pooled == _decode_here(files)
    assert [reason is None for reason in pooled] == [True, False, True, False]
    assert "truncated or corrupt" in (pooled[1] or "")


def test_validate_batch_with_a_pool_rejects_the_truncated_file_by_name() -> None:
    good = patterned_image("PNG")
    uploads = [Upload("ok.png", good), Upload("cut.png", good[: len(good) // 2])]
    pool = DecodePool(1)
    try:
        with pytest.raises(BatchRejected) as rejected:
            validate_batch(uploads, Settings(redis_url=None), pool.decode_all)
    finally:
        pool.shutdown()

    errors = rejected.value.extra["errors"]
    assert [(e["file"], e["index"]) for e in errors] == [("cut.png", 1)]


def test_a_broken_pool_decodes_in_the_calling_thread_and_is_replaced() -> None:
    good = patterned_image("PNG")
    pool = DecodePool(1)
    try:
        assert pool.decode_all([good]) == [None]
        broken = pool._executor
        for process in list(broken._processes.values()):  # the OOM killer, say
            process.kill()
            process.join()

        assert pool.decode_all([good, good[:100]])[0] is None
        assert pool._executor is not broken
        assert pool.decode_all([good]) == [None]
    finally:
        pool.shutdown()
