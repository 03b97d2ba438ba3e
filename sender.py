"""Outbound text to the gateway a chat came from. Decides nothing about what to say.

Evolution API: POST {server}/message/sendText/{instance} with header `apikey`. One requests.Session per
sender with urllib3 Retry on connection errors and 5xx; failures are raised as SendError(.transient).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from config import Settings
from errors import SendError
from models import ChatRef

log = logging.getLogger(__name__)

RETRY_STATUS_CODES = (500, 502, 503, 504)
# 400/422 mean the gateway rejected this message itself (e.g. number not on WhatsApp): retrying cannot help.
PERMANENT_STATUS_CODES = frozenset({400, 413, 422})


class TextSender(Protocol):
    """What the worker needs from a gateway: send one text to a chat. Gateways (see `gateways/`) also declare
    `max_text_chars` and `mark_read`, which the worker uses when present."""

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text; first show "typing…" for about `typing_ms` where the gateway can (0 = none beyond the
        gateway's own defaults). `reply_to` is the id of the customer's last message (Meta needs it for its
        typing indicator). Returns the gateway's message id ('' when none). Raises SendError."""
        ...


def retrying_session(
    retries: int,
    backoff_seconds: float = 0.5,
    *,
    retry_read_timeouts: bool = False,
    status_codes: tuple[int, ...] = RETRY_STATUS_CODES,
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
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def evolution_send_url(evolution_api: str, instance: str) -> str:
    """EVOLUTION_API is either the full sendText URL (used as is) or the server's base URL."""
    if "/message/sendText/" in urlsplit(evolution_api).path:
        return evolution_api
    return f"{evolution_api.rstrip('/')}/message/sendText/{quote(instance, safe='')}"


def evolution_server_url(evolution_api: str) -> str:
    """The server's base URL, whether EVOLUTION_API is the base URL or one instance's full sendText URL."""
    path = urlsplit(evolution_api).path
    if "/message/sendText/" in path:
        return evolution_api[: evolution_api.index("/message/sendText/")]
    return evolution_api.rstrip("/")


def evolution_body(number: str, text: str, *, version: int, delay_ms: int) -> dict[str, Any]:
    """sendText body: v2 takes `text` at the top level; v1.8 takes `textMessage.text` and `options`. A
    `delay_ms` ("typing…" before the send) is v2's `delay` and v1's `options.delay`; 0 leaves it out."""
    if version == 1:
        body: dict[str, Any] = {"number": number, "textMessage": {"text": text}}
        if delay_ms:
            body["options"] = {"delay": delay_ms, "presence": "composing"}
        return body
    body = {"number": number, "text": text}
    if delay_ms:
        body["delay"] = delay_ms
    return body


class EvolutionSender:
    """sendText on Evolution API."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or retrying_session(settings.send_max_retries)

    def send_text(self, chat: ChatRef, text: str, *, typing_ms: int = 0, reply_to: str = "") -> str:
        """Send one text; Evolution shows "typing…" for `typing_ms`, else for SEND_DELAY_MS, before it sends.
        `reply_to` is not needed here."""
        if not self.settings.evolution_api:
            # Retrying cannot help until the owner configures it, and a reply sent an hour later would be stale.
            raise SendError("EVOLUTION_API is not set: the gateway is not configured", transient=False)
        url = evolution_send_url(self.settings.evolution_api, chat.instance)
        delay_ms = typing_ms if typing_ms > 0 else self.settings.send_delay_ms
        body = evolution_body(chat.chat_id, text, version=self.settings.evolution_api_version, delay_ms=delay_ms)
        # The typing delay is spent by Evolution before it answers, so the read timeout must cover it.
        read_timeout = self.settings.send_timeout_seconds + delay_ms / 1000
        response = post_or_raise(
            self.session,
            url,
            gateway="evolution",
            chat=chat,
            timeout=(min(5.0, self.settings.send_timeout_seconds), read_timeout),
            json=body,
            headers={"apikey": self.settings.authentication_api_key},
        )
        return key_id_or_raise(response, gateway="evolution", chat=chat)


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


def split_text(text: str, limit: int) -> list[str]:
    """Cut a reply into parts of at most `limit` characters, preferring paragraph, then line, then sentence,
    then word boundaries; a part is cut mid-word only when a single word is longer than `limit`."""
    parts: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = _boundary(window, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _boundary(window: str, limit: int) -> int:
    """Where to cut `window` (limit + 1 characters long), so that the part before is at most `limit`."""
    floor = limit // 3  # a boundary too early would make many tiny parts; go to the next kind instead
    for separators in (("\n\n",), ("\n",), (". ", "! ", "? ", "… "), (" ",)):
        cut = max(window.rfind(sep, 0, limit) + (1 if sep.strip() else 0) for sep in separators)
        if cut > floor:
            return min(cut, limit)
    return limit


def reply_parts(reply: str, *, max_parts: int, limit: int) -> list[str]:
    """A reply as several messages, the way a person writes (SPLIT_MESSAGES): one per paragraph (blank lines
    between), at most `max_parts` (the last carries the rest), each still cut to the gateway's `limit`."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", reply.strip()) if p.strip()]
    if len(paragraphs) > max_parts:
        paragraphs = [*paragraphs[: max_parts - 1], "\n\n".join(paragraphs[max_parts - 1 :])]
    return [piece for paragraph in paragraphs for piece in split_text(paragraph, limit)]
