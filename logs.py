"""Logging set-up and redaction helpers: masked phone numbers and chat labels for log lines, the text or JSON
format (LOG_FORMAT), and the burst's correlation id that every line of a burst carries, from each webhook to the
send, in whichever process (`burst_id`, `log_context`)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import re
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

_DIGITS = re.compile(r"\d+")


def mask_phone(jid: str) -> str:
    """Mask the middle of the number in a JID: "5511987654321@s.whatsapp.net" -> "5511*****4321".

    Group ids, LIDs and other opaque ids get the same treatment so no full identifier reaches a log.
    """
    user = jid.split("@", 1)[0]
    if user.startswith("whatsapp:"):  # Twilio's address form, "whatsapp:+5511987654321"
        user = user[len("whatsapp:") :].lstrip("+")
    user = user.split(":", 1)[0]  # device suffix, "5511987654321:12@s.whatsapp.net"
    if len(user) >= 12:  # a full international number: country + area code and the last 4 stay readable
        return f"{user[:4]}*****{user[-4:]}"
    if len(user) > 6:
        return f"{user[:2]}*****{user[-2:]}"
    return user[:1] + "*" * max(len(user) - 1, 0)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]|\n|\t")
MAX_LOG_MESSAGE_CHARS = 2000


class OneLine(logging.Filter):
    """Keeps every record on one line, of bounded length: values from payloads (message ids, instance names, a
    gateway's status) cannot forge log lines with line breaks or fill the disk. Tracebacks are not touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _CONTROL.search(message) or len(message) > MAX_LOG_MESSAGE_CHARS:
            cleaned = _CONTROL.sub(lambda m: repr(m.group())[1:-1], message)
            if len(cleaned) > MAX_LOG_MESSAGE_CHARS:
                cleaned = cleaned[:MAX_LOG_MESSAGE_CHARS] + f"... ({len(cleaned)} chars)"
            record.msg, record.args = cleaned, ()
        return True


_correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")
_chat: contextvars.ContextVar[str] = contextvars.ContextVar("chat", default="")
_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")


def burst_id(chat_key: str, first_message_id: str) -> str:
    """A burst's correlation id: the same in the webhook of each of its messages and in the worker that answers it,
    in any process, because both know the chat and the id of the burst's first message."""
    return hashlib.sha256(f"{chat_key}|{first_message_id}".encode()).hexdigest()[:16]


@contextlib.contextmanager
def log_context(correlation_id: str, chat: str, tenant: str = "") -> Iterator[None]:
    """Every line logged inside (in this thread) carries the burst's correlation id, the masked chat and its tenant
    (TENANTS_FILE; "default" without one)."""
    tokens = (_correlation_id.set(correlation_id), _chat.set(chat), _tenant.set(tenant))
    try:
        yield
    finally:
        _correlation_id.reset(tokens[0])
        _chat.reset(tokens[1])
        _tenant.reset(tokens[2])


class BurstContext(logging.Filter):
    """Puts `correlation_id`, `chat` and `tenant` on every record (given with `extra=`, or from `log_context`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", ""):
            record.correlation_id = _correlation_id.get()
        if not getattr(record, "chat", ""):
            record.chat = _chat.get()
        if not getattr(record, "tenant", ""):
            record.tenant = _tenant.get()
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(process)d %(name)s %(message)s %(correlation_id)s %(chat)s %(tenant)s"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, process, logger, message, correlation_id, chat (masked), tenant."""
    return JsonFormatter(
        JSON_FIELDS,
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


def setup_logging(level: str, log_format: str = "text") -> None:
    """Configure the root logger once, unless a host (gunicorn) already did; LOG_FORMAT=json switches every
    handler to one JSON object per line."""
    root = logging.getLogger()
    gunicorn_error = logging.getLogger("gunicorn.error")
    if gunicorn_error.handlers:
        root.handlers = gunicorn_error.handlers
    elif not root.handlers:
        logging.basicConfig(format=TEXT_FORMAT)
    for handler in root.handlers:
        if not any(isinstance(f, OneLine) for f in handler.filters):
            handler.addFilter(OneLine())
        if not any(isinstance(f, BurstContext) for f in handler.filters):
            handler.addFilter(BurstContext())
        if log_format == "json":
            handler.setFormatter(json_formatter())
    root.setLevel(level)
    # httpx/google-genai log every request at INFO with URLs; keep our INFO lines readable.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "google_genai", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
