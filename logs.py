"""Logging set-up and redaction helpers: masked phone numbers and chat labels for log lines."""

from __future__ import annotations

import logging
import re

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


def setup_logging(level: str) -> None:
    """Configure the root logger once, unless a host (gunicorn) already did."""
    root = logging.getLogger()
    gunicorn_error = logging.getLogger("gunicorn.error")
    if gunicorn_error.handlers:
        root.handlers = gunicorn_error.handlers
    elif not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, OneLine) for f in handler.filters):
            handler.addFilter(OneLine())
    root.setLevel(level)
    # httpx/google-genai log every request at INFO with URLs; keep our INFO lines readable.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "google_genai", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
