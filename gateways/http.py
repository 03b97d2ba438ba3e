"""Outbound HTTP shared by the gateway adapters: retrying sessions, a POST that turns transport failures into
SendError, a Baileys-style send answer, size-bounded reads and base64 bodies. Decides nothing about what to send.

A send is one POST per reply part, so it skips requests' per-request preparation (a fifth of a reply's CPU): the
session resolves each gateway host once the way requests does (proxies, NO_PROXY, CA bundle, TLS), keeps the
urllib3 pool requests chose, and POSTs straight on it with the same Retry (`GatewaySession.send_post`).

Sends and reads fail differently. A send that timed out while reading may already have been delivered, so its
session never retries a read timeout; failures become SendError(.transient). Reads (media downloads, "did this
part go out?" lookups) have no side effect, so their session retries read timeouts and 429 too; every failure
becomes a MediaError whose `problem` says what the customer is told ("too_large", "unreadable").
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import default_headers, requote_uri
from urllib3.util import Timeout, make_headers
from urllib3.util.retry import Retry

from errors import MediaError, SendError
from models import ChatRef

SEND_RETRY_STATUS_CODES = (500, 502, 503, 504)
FETCH_RETRY_STATUS_CODES = (429, 500, 502, 503, 504)
# 400/422 mean the gateway rejected this message itself (e.g. number not on WhatsApp): retrying cannot help.
PERMANENT_STATUS_CODES = frozenset({400, 413, 422})
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class SendAnswer:
    """A gateway's answer to a send: the parts of requests.Response that the adapters read."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (as requests.Response.json)."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Route:
    """How requests would reach one gateway host: its urllib3 pool (direct or through the proxy) and whether that
    pool wants the full URL (plain HTTP through a proxy) or only the path."""

    pool: urllib3.HTTPConnectionPool
    full_url: bool
    retries: Retry


class GatewaySession(requests.Session):
    """A Session that reads the environment (HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE) once per host, not on
    every request as requests does: a gateway's host does not change, and that reading was a twentieth of a
    reply's CPU. `send_post` is its lighter POST for sends."""

    MAX_HOSTS = 256

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        self._base_headers = dict(default_headers())

    def send_post(
        self,
        url: str,
        *,
        timeout: tuple[float, float],
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> SendAnswer:
        """POST a JSON (`json`) or form (`data`) body with the session's Retry; raises urllib3's HTTPError on a
        transport failure. Unlike `post`, no cookies are kept and redirects are not followed: a send answered
        with a redirect is the gateway's misconfiguration, and replaying a message as a GET would not send it."""
        url = requote_uri(url)
        route = self._route(url)
        merged = {**self._base_headers, **(headers or {})}
        if json is not None:
            body: bytes | None = _json_bytes(json)
            merged["Content-Type"] = "application/json"
        elif data is not None:
            body = urlencode(data).encode()
            merged["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = None
        if auth is not None:
            merged.update(make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        response = route.pool.urlopen(
            "POST",
            url if route.full_url else _path_of(url),
            body=body,
            headers=merged,
            retries=route.retries,
            timeout=Timeout(connect=timeout[0], read=timeout[1]),
            redirect=False,
            assert_same_host=False,
            preload_content=True,
            decode_content=True,
        )
        return SendAnswer(response.status, response.data, response.headers)

    def _route(self, url: str) -> _Route:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        route = self._routes.get(key)
        if route is None or route.pool.pool is None:  # new host, or requests' pool manager closed that pool
            prepared = requests.Request("POST", url).prepare()
            settings = self.merge_environment_settings(url, {}, None, None, None)
            adapter = self.get_adapter(url)
            if not isinstance(adapter, HTTPAdapter):
                raise TypeError(f"send_post needs an HTTPAdapter for {parts.scheme}")
            pool = adapter.get_connection_with_tls_context(
                prepared, settings["verify"], settings["proxies"], settings["cert"]
            )
            full_url = adapter.request_url(prepared, settings["proxies"]) != prepared.path_url
            route = _Route(pool, full_url, adapter.max_retries)
            if len(self._routes) < self.MAX_HOSTS:
                self._routes[key] = route
        return route

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


def _json_bytes(value: Any) -> bytes:
    # As requests encodes `json=`: NaN and infinities refused, non-ASCII escaped.
    return json.dumps(value, allow_nan=False).encode()


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


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
    # pool_connections: the pools (one per host) requests keeps; send_post holds on to them.
    adapter = HTTPAdapter(max_retries=retry, pool_connections=32, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# ----- sending ---------------------------------------------------------------------------------------------


def post_or_raise(
    session: requests.Session, url: str, *, gateway: str, chat: ChatRef, timeout: tuple[float, float], **kwargs: Any
) -> SendAnswer | requests.Response:
    """POST (`send_post` on a GatewaySession), turning a transport failure (after the session's retries) into a
    transient SendError."""
    try:
        if isinstance(session, GatewaySession):
            return session.send_post(url, timeout=timeout, **kwargs)
        return session.post(url, timeout=timeout, **kwargs)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        problem = _transport_problem(exc)
        raise SendError(f"{gateway} unreachable for {chat.label}: {problem}") from exc


def _transport_problem(exc: Exception) -> str:
    # urllib3 wraps the failure that exhausted its retries (a refused connection, a read timeout): name that one.
    reason = getattr(exc, "reason", None)
    return (reason if isinstance(reason, Exception) else exc).__class__.__name__


def retry_after_seconds(headers: Any) -> float | None:
    """A Retry-After header's seconds (it may be a number of seconds or an HTTP date), None when absent or
    unreadable."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(Retry().parse_retry_after(str(value))))
    except (ValueError, TypeError, urllib3.exceptions.InvalidHeader):
        return None


def key_id_or_raise(response: SendAnswer | requests.Response, *, gateway: str, chat: ChatRef) -> str:
    """For Baileys-style gateways (Evolution, Mega): SendError on 4xx/5xx (429: the number sends too fast), else the
    sent message's key.id."""
    if response.status_code >= 400:
        limited = response.status_code == 429
        raise SendError(
            f"{gateway} answered {response.status_code} for {chat.label}",
            status_code=response.status_code,
            transient=response.status_code not in PERMANENT_STATUS_CODES,
            rate_limit="number" if limited else "",
            retry_after=retry_after_seconds(response.headers) if limited else None,
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
