"""Media downloads shared by the gateway adapters: a retrying session, a size-bounded read, base64 decoding.

Every failure becomes a MediaError whose `problem` says what the customer is told ("too_large", "unreadable"),
so one bad item never fails the burst it came in.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import requests

from errors import MediaError
from sender import retrying_session

RETRY_STATUS_CODES = (429, 500, 502, 503, 504)
CHUNK_BYTES = 64 * 1024


def download_session(attempts: int, backoff_seconds: float = 0.25) -> requests.Session:
    """A Session that tries each request `attempts` times on connection errors, read timeouts and 429/5xx.
    Unlike sending, fetching media is idempotent (the Evolution and Mega download calls are POSTs with no side
    effect), so a read timeout is retried too."""
    return retrying_session(
        max(attempts - 1, 0), backoff_seconds, retry_read_timeouts=True, status_codes=RETRY_STATUS_CODES
    )


def fetch_bytes(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    max_bytes: int,
    timeout: float,
    **kwargs: Any,
) -> tuple[bytes, str]:
    """(body, content type) of a request, reading at most `max_bytes`. Raises MediaError."""
    try:
        response = session.request(method, url, stream=True, timeout=(min(5.0, timeout), timeout), **kwargs)
    except requests.RequestException as exc:
        raise MediaError(f"{what} unreachable: {exc.__class__.__name__}") from exc
    with response:
        if response.status_code >= 400:
            raise MediaError(f"{what} answered {response.status_code}")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise MediaError(f"{what} is {declared} bytes, over the {max_bytes} limit", problem="too_large")
        body = bytearray()
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                body += chunk
                if len(body) > max_bytes:
                    raise MediaError(f"{what} is over the {max_bytes} bytes limit", problem="too_large")
        except requests.RequestException as exc:
            raise MediaError(f"{what} interrupted: {exc.__class__.__name__}") from exc
        return bytes(body), response.headers.get("Content-Type", "")


def fetch_json(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    max_bytes: int,
    timeout: float,
    **kwargs: Any,
) -> dict[str, Any]:
    """The JSON object a request answers (a media's info, or its base64), reading at most `max_bytes`.
    Raises MediaError."""
    body, _ = fetch_bytes(session, method, url, what=what, max_bytes=max_bytes, timeout=timeout, **kwargs)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise MediaError(f"{what} answered something other than JSON") from exc
    if not isinstance(answer, dict):
        raise MediaError(f"{what} answered an unexpected shape")
    return answer


def base64_limit(max_bytes: int) -> int:
    """Characters of base64 (plus a JSON envelope) that hold up to `max_bytes` bytes."""
    return -(-max_bytes * 4 // 3) + 64 * 1024


def decode_base64(value: Any, *, what: str, max_bytes: int) -> bytes:
    """Bytes of a base64 string (a `data:` URL prefix and line breaks are tolerated). Raises MediaError."""
    if not isinstance(value, str) or not value.strip():
        raise MediaError(f"{what} has no base64 content")
    if value.startswith("data:") and "," in value[:200]:
        value = value.split(",", 1)[1]
    value = "".join(value.split())
    if len(value) * 3 // 4 > max_bytes + 2:
        raise MediaError(f"{what} is over the {max_bytes} bytes limit", problem="too_large")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{what} is not valid base64") from exc
    if len(data) > max_bytes:
        raise MediaError(f"{what} is over the {max_bytes} bytes limit", problem="too_large")
    return data
