"""Domain errors. Each carries its HTTP status and a slug; `service/api/problems.py` renders
them as application/problem+json. Messages name the item and say what to do.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FlipwatchError(Exception):
    """Base of every expected failure; never a 500."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


class MalformedRequest(FlipwatchError):
    status = 400
    code = "malformed-request"
    title = "Malformed request"


class NotAuthenticated(FlipwatchError):
    status = 401
    code = "not-authenticated"
    title = "Missing or invalid API key"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"WWW-Authenticate": "Bearer"}


class PermissionDenied(FlipwatchError):
    status = 403
    code = "permission-denied"
    title = "API key role not allowed"


class NotFound(FlipwatchError):
    status = 404
    code = "not-found"
    title = "Not found"


class ModelNotFound(NotFound):
    code = "model-not-found"
    title = "Model not found"


class StreamNotFound(NotFound):
    code = "stream-not-found"
    title = "Stream not found"


class JobNotFound(NotFound):
    code = "job-not-found"
    title = "Job not found"


class CalibrationNotFound(NotFound):
    code = "calibration-not-found"
    title = "Calibration not found"


class EstimateNotFound(NotFound):
    code = "estimate-not-found"
    title = "Estimate not found"


class AlertRuleNotFound(NotFound):
    code = "alert-rule-not-found"
    title = "Alert rule not found"


class Conflict(FlipwatchError):
    status = 409
    code = "conflict"
    title = "Conflict"


class StreamExists(Conflict):
    code = "stream-exists"
    title = "Stream name already taken"


class IdempotencyConflict(Conflict):
    code = "idempotency-conflict"
    title = "Idempotency-Key reused with a different request"


class AlertRuleExists(Conflict):
    code = "alert-rule-exists"
    title = "Alert rule name already taken"


class WindowTooSmall(Conflict):
    code = "window-too-small"
    title = "Not enough images for an estimate"


class EstimateAlreadyQueued(Conflict):
    code = "estimate-already-queued"
    title = "Window already has an estimate job"


class CalibrationRequired(Conflict):
    code = "calibration-required"
    title = "Model needs a calibration"


class Invalid(FlipwatchError):
    status = 422
    code = "invalid"
    title = "Invalid request"


class InvalidModelSpec(Invalid):
    code = "invalid-model-spec"
    title = "Invalid model spec"


class ModelRejected(Invalid):
    code = "model-rejected"
    title = "Model cannot be used"


class BatchRejected(Invalid):
    """Whole batch refused; `errors` holds one {file, index, reason} per failing file."""

    code = "batch-rejected"
    title = "Batch rejected"


class EmptyBatch(BatchRejected):
    code = "empty-batch"
    title = "Batch has no images"


class InvalidAlertRule(Invalid):
    code = "invalid-alert-rule"
    title = "Invalid alert rule"


class ArchiveRejected(Invalid):
    code = "archive-rejected"
    title = "Reference archive rejected"


class InvalidCalibrationOptions(Invalid):
    code = "invalid-calibration-options"
    title = "Calibration options rejected"


class PayloadTooLarge(FlipwatchError):
    status = 413
    code = "payload-too-large"
    title = "Request too large"


class BatchTooLarge(PayloadTooLarge):
    code = "batch-too-large"
    title = "Batch over its limits"


class HeadersTooLarge(FlipwatchError):
    status = 431
    code = "headers-too-large"
    title = "Request headers too large"


class ServiceUnavailable(FlipwatchError):
    """A dependency is down for a while: 503 with Retry-After, so clients back off and retry."""

    status = 503
    code = "service-unavailable"
    title = "Service temporarily unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"Retry-After": str(retry_after)}


class DatabaseUnavailable(ServiceUnavailable):
    code = "database-unavailable"
    title = "Database unavailable"


class StorageUnavailable(ServiceUnavailable):
    """The object store cannot be reached or answers 5xx (a worker retries the job)."""

    code = "storage-unavailable"
    title = "Object storage unavailable"


class NotReady(ServiceUnavailable):
    code = "not-ready"
    title = "Service not ready"
