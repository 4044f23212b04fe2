"""How uvicorn serves the app: HTTP/1.1 (h11) with a header-size limit answered as 431.

uvicorn's default parser refuses an over-long head only by dropping the connection (or a plain
400), so a client sending a 200 KB header saw a reset. Here the head is measured before h11
parses it: past `max_header_bytes` the rest of the head is read and discarded, then a 431
problem+json answer goes out and the connection closes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from flipwatch.service.core.settings import Settings

log = logging.getLogger(__name__)

HEAD_END = b"\r\n\r\n"
MAX_DISCARD = 16 * 1024 * 1024  # past this, a "head" is an attack: just close


class HeaderLimitProtocol(H11Protocol):
    """H11Protocol that answers 431 to a request line plus headers over `max_header_bytes`."""

    max_header_bytes = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._discarding = False
        self._discarded = 0
        self._tail = b""

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discarded += len(data)
            window = self._tail + data
            self._tail = window[-3:]
            if HEAD_END in window:
                self._refuse()
            elif self._discarded > MAX_DISCARD:
                self.transport.close()
            return
        if self.conn.their_state is h11.IDLE:
            buffered = bytes(self.conn.trailing_data[0]) + data
            end = buffered.find(HEAD_END)
            if end > self.max_header_bytes:
                self._refuse()
                return
            if end == -1 and len(buffered) > self.max_header_bytes:
                self._discarding, self._discarded, self._tail = True, len(buffered), buffered[-3:]
                return
        super().data_received(data)

    def _refuse(self) -> None:
        log.warning("request head over %d bytes: answered 431", self.max_header_bytes)
        body = json.dumps(
            {
                "type": "urn:flipwatch:problem:headers-too-large",
                "title": "Request headers too large",
                "status": 431,
                "detail": f"the request line and headers exceed {self.max_header_bytes} bytes; "
                "send smaller headers",
                "code": "headers-too-large",
            }
        ).encode()
        head = (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config: the protocol with this limit."""
    protocol = type(
        "FlipwatchH11Protocol",
        (HeaderLimitProtocol,),
        {"max_header_bytes": settings.max_header_bytes},
    )
    return {"http": protocol, "h11_max_incomplete_event_size": settings.max_header_bytes + 4096}
