"""Outbound HTTP shared by the gateway adapters: retrying sessions, a POST that turns transport failures into
SendError, a Baileys-style send answer, size-bounded reads and base64 bodies. Decides nothing about what to send.

Sends and reads fail differently. A send that timed out while reading may already have been delivered, so its
session never retries a read timeout; failures become SendError(.transient). Reads (media downloads, "did this
part go out?" lookups) have no side effect, so their session retries read timeouts and 429 too; every failure
becomes a MediaError whose `problem` says what the customer is told ("too_large", "unreadable").
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from errors import MediaError, SendError
from models import ChatRef

SEND_RETRY_STATUS_CODES = (500, 502, 503, 504)
FETCH_RETRY_STATUS_CODES = (429, 500, 502, 503, 504)
# 400/422 mean the gateway rejected this message itself (e.g. number not on WhatsApp): retrying cannot help.
PERMANENT_STATUS_CODES = frozenset({400, 413, 422})
CHUNK_BYTES = 64 * 1024


class GatewaySession(requests.Session):
    """A Session that reads the environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) once per host, not on
    every request as requests does: a gateway's host does not change, and that reading was a twentieth of a
    reply's CPU."""

    MAX_HOSTS = 256

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._environment) < self.MAX_HOSTS:
                self._environment[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}


def retrying_session(
    retries: int,
    backoff_seconds: float = 0.5,
    *,
    retry_read_timeouts: bool = False,
    status_codes: tuple[int, ...] = SEND_RETRY_STATUS_CODES,
) -> requests.Session:
    """A Session that retries connection errors and `status_codes` answers (POST included). Read timeouts are
    retried only with `retry_read_timeouts`, for idempotent calls: a send that timed out while reading may
    already have been delivered."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries if retry_read_timeouts else 0,
        status=retries,
        status_forcelist=status_codes,
        allowed_methods=None,
        backoff_factor=backoff_seconds,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    session = GatewaySession()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ----- sending ---------------------------------------------------------------------------------------------


def post_or_raise(
    session: requests.Session, url: str, *, gateway: str, chat: ChatRef, timeout: tuple[float, float], **kwargs: Any
) -> requests.Response:
    """POST, turning a transport failure (after the session's retries) into a transient SendError."""
    try:
        return session.post(url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        raise SendError(f"{gateway} unreachable for {chat.label}: {exc.__class__.__name__}") from exc


def key_id_or_raise(response: requests.Response, *, gateway: str, chat: ChatRef) -> str:
    """For Baileys-style gateways (Evolution, Mega): SendError on 4xx/5xx, else the sent message's key.id."""
    if response.status_code >= 400:
        raise SendError(
            f"{gateway} answered {response.status_code} for {chat.label}",
            status_code=response.status_code,
            transient=response.status_code not in PERMANENT_STATUS_CODES,
        )
    try:
        data = response.json()
    except ValueError:
        return ""
    key = data.get("key") if isinstance(data, dict) else None
    return str(key.get("id") or "") if isinstance(key, dict) else ""


# ----- reading ---------------------------------------------------------------------------------------------


def download_session(attempts: int, backoff_seconds: float = 0.25) -> requests.Session:
    """A Session that tries each request `attempts` times on connection errors, read timeouts and 429/5xx.
    Unlike sending, fetching media is idempotent (the Evolution and Mega download calls are POSTs with no side
    effect), so a read timeout is retried too."""
    return retrying_session(
        max(attempts - 1, 0), backoff_seconds, retry_read_timeouts=True, status_codes=FETCH_RETRY_STATUS_CODES
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
