"""Tells the owner's own system that a customer asked for a person: one JSON POST to HANDOFF_NOTIFY_URL per
request, on a background thread (it never delays a reply), retried up to 3 times with backoff on connection
errors, timeouts, 429 and 5xx; a notice that still fails is logged and counted, never raised.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from counters import Counters
from gateways.http import retrying_session
from models import ChatRef

log = logging.getLogger(__name__)

NOTIFY_RETRIES = 3
NOTIFY_TIMEOUT_SECONDS = 10.0
NOTIFY_STATUS_CODES = (429, 500, 502, 503, 504)


def handoff_notice(chat: ChatRef, *, customer_name: str, text: str, at: float) -> dict[str, Any]:
    """The JSON body: the chat's identity in full (the owner's own data) and what the customer wrote."""
    return {
        "event": "handoff_request",
        # The same request always carries the same id, so a receiver can drop a retried or repeated notice.
        "id": hashlib.sha1(f"{chat.key}|{at:.3f}".encode()).hexdigest()[:20],
        "chat": chat.address,
        "tenant": chat.tenant,
        "gateway": chat.gateway,
        "instance": chat.instance,
        "chat_id": chat.chat_id,
        "customer_name": customer_name,
        "text": text,
        "at": datetime.fromtimestamp(at, UTC).isoformat(),
    }


class HandoffNotifier:
    """POSTs handoff notices to one URL in the background; `url` empty = off."""

    def __init__(self, url: str, counters: Counters, *, backoff_seconds: float = 0.5) -> None:
        self.url = url
        self.counters = counters
        self.session = retrying_session(
            NOTIFY_RETRIES, backoff_seconds, retry_read_timeouts=True, status_codes=NOTIFY_STATUS_CODES
        )
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="notify") if url else None

    def notify(self, chat: ChatRef, *, customer_name: str, text: str, at: float) -> None:
        if self._pool is None:
            return
        body = handoff_notice(chat, customer_name=customer_name, text=text, at=at)
        self._pool.submit(self._post, chat, body)

    def _post(self, chat: ChatRef, body: dict[str, Any]) -> None:
        try:
            response = self.session.post(self.url, json=body, timeout=NOTIFY_TIMEOUT_SECONDS)
            failure = f"answered {response.status_code}" if response.status_code >= 400 else ""
        except Exception as exc:  # a notice must never take its thread down silently
            failure = exc.__class__.__name__
        if failure:
            self.counters.add("handoff_notify_failures")
            log.error("handoff notice for chat=%s not delivered to HANDOFF_NOTIFY_URL: %s", chat.label, failure)
            return
        self.counters.add("handoff_notices")
        log.info("handoff notice delivered chat=%s", chat.label)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
