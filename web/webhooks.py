"""The gateways' webhooks: `POST /webhook` (and `/webhook/<event>`) for Evolution, `GET|POST /webhook/meta`,
`POST /webhook/mega`, `POST /webhook/twilio`. Every request goes the same way through its gateway's adapter
(`gateways.base.Gateway`): verify, parse, then dedupe and buffer here, and the adapter's answer at once. Gemini and
the gateway's API are called by the worker, never here. A message typed on the business side goes to
conversation.py (handoff), the assistant's own echoes are recognised there and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from archive.events import lifecycle_event
from buffer import BufferUnavailable
from errors import AuthError, PayloadError, SignatureError
from gateways.base import Gateway, InboundRequest, Parsed
from logs import burst_id
from models import IgnoredEvent, IncomingMessage
from web import components

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 100  # gateways post one message, or a few; more is noise that must not hold a worker

webhooks = Blueprint("webhooks", __name__)


@webhooks.post("/webhook")
@webhooks.post("/webhook/<event>")
def receive_evolution(event: str = "") -> Response | tuple[Response, int]:
    return handle(components().gateways["evolution"], event)


@webhooks.get("/webhook/meta")
def meta_handshake() -> Response | tuple[Response, int]:
    gateway = components().gateways.get("meta")
    if gateway is None:
        return jsonify(error="gateway not configured", gateway="meta"), 404
    challenge = gateway.handshake(request.args.to_dict())
    if challenge is None:
        components().counters.add("signature_failures")
        log.warning("meta verification handshake refused")
        return jsonify(error="verification failed"), 403
    return Response(challenge, 200, mimetype="text/plain")


@webhooks.post("/webhook/meta")
@webhooks.post("/webhook/mega")
@webhooks.post("/webhook/twilio")
def receive_other() -> Response | tuple[Response, int]:
    name = request.path.rsplit("/", 1)[-1]
    gateway = components().gateways.get(name)
    if gateway is None:
        return jsonify(error="gateway not configured", gateway=name), 404
    return handle(gateway, "")


def handle(gateway: Gateway, event: str) -> Response | tuple[Response, int]:
    """Verify, parse, dedupe and buffer one webhook request of `gateway`."""
    inbound = InboundRequest(
        method=request.method,
        path=request.path,
        query_string=request.query_string.decode("latin-1"),
        query=request.args.to_dict(),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.get_data(cache=True),
        form=request.form.to_dict() if request.mimetype == "application/x-www-form-urlencoded" else {},
        event_hint=event,
    )
    refusal = unauthorized(gateway, inbound)
    if refusal is not None:
        return refusal
    if not inbound.body.strip():
        return jsonify(error="empty body"), 400
    parsed = parse(gateway, inbound)
    if not isinstance(parsed, list):
        return parsed
    try:
        summary, status = buffer_parsed(parsed, gateway.name)
    except BufferUnavailable as exc:
        # Messages of this request buffered before Redis went away are deduplicated when the gateway retries.
        components().counters.add("buffer_unavailable")
        components().metrics.webhook(gateway.name, "refused", "redis_unavailable")
        log.warning("webhook not buffered gateway=%s: %s; answering 503 so the gateway retries", gateway.name, exc)
        response = jsonify(error="buffer unavailable", reason="redis")
        response.headers["Retry-After"] = "5"
        return response, 503
    special = gateway.answer(summary)
    if special is not None:
        return Response(special.body, special.status, content_type=special.content_type)
    # The summary is a few flat fields: dumped directly, without Flask's JSON provider (sorting, checks).
    return Response(json.dumps(summary, separators=(",", ":")), status, mimetype="application/json")


def unauthorized(gateway: Gateway, inbound: InboundRequest) -> tuple[Response, int] | None:
    """The 401 for a request without the gateway's credentials (its signature, or the shared token), else None."""
    try:
        gateway.verify(inbound)
    except AuthError as exc:
        components().counters.add("signature_failures" if isinstance(exc, SignatureError) else "auth_failures")
        components().metrics.webhook(
            gateway.name, "refused", "signature" if isinstance(exc, SignatureError) else "auth"
        )
        log.warning("webhook rejected gateway=%s: %s", gateway.name, exc)
        return jsonify(error="unauthorized"), 401
    return None


def parse(gateway: Gateway, inbound: InboundRequest) -> list[Parsed] | tuple[Response, int]:
    """The request's messages and ignored events (at most MAX_EVENTS_PER_REQUEST), or the 400 to answer."""
    settings = components().settings
    try:
        parsed = gateway.parse(
            inbound, accept_groups=settings.groups_enabled, max_text_chars=settings.max_message_chars
        )
    except PayloadError as exc:
        log.warning("webhook body rejected gateway=%s bytes=%d: %s", gateway.name, len(inbound.body), exc)
        return jsonify(error=str(exc)), 400
    except Exception as exc:  # an odd shape a parser did not foresee: a clear 400, never a 500 and a retry storm
        problem = exc.__class__.__name__
        components().counters.add("unreadable_payloads")
        log.warning("webhook body could not be read gateway=%s bytes=%d: %s", gateway.name, len(inbound.body), problem)
        return jsonify(error="payload could not be read", detail=problem), 400
    if len(parsed) > MAX_EVENTS_PER_REQUEST:
        log.warning(
            "webhook with %d events gateway=%s: only the first %d are read",
            len(parsed),
            gateway.name,
            MAX_EVENTS_PER_REQUEST,
        )
        parsed = parsed[:MAX_EVENTS_PER_REQUEST] + [IgnoredEvent(reason="too_many_events")]
    return parsed


def buffer_parsed(parsed: list[IncomingMessage | IgnoredEvent], gateway_name: str) -> tuple[dict[str, Any], int]:
    parts = components()
    buffer, counters, metrics = parts.buffer, parts.counters, parts.metrics
    buffered, duplicates, human, reasons = 0, 0, 0, []
    now = time.time()
    for item in parsed:
        tenant = None if isinstance(item, IgnoredEvent) else parts.tenants.claimant(item.chat)
        if tenant is None and not isinstance(item, IgnoredEvent):
            # TENANTS_FILE is set and no business there claims this number: never answered with another's settings.
            item = IgnoredEvent(reason="no_tenant", chat=item.chat, message_id=item.message_id)
        elif tenant is not None and tenant.id != item.chat.tenant:
            # From here on the chat is the tenant's: its keys, its queue entry and its archive rows carry it.
            item = dataclasses.replace(item, chat=dataclasses.replace(item.chat, tenant=tenant.id))
        if isinstance(item, IgnoredEvent):
            counters.add("ignored")
            reasons.append(item.reason)
            chat = item.chat.label if item.chat else "-"
            metrics.webhook(item.chat.gateway if item.chat else gateway_name, "ignored", item.reason)
            log.info("ignored chat=%s msg=%s reason=%s", chat, item.message_id or "-", item.reason)
            continue
        assert tenant is not None
        if item.from_me:
            outcome = from_business_side(item, now)
            if outcome in ("own_echo", "ignored"):
                reasons.append("own_echo" if outcome == "own_echo" else "from_me")
                metrics.webhook(item.chat.gateway, "ignored", reasons[-1], tenant=tenant.id)
            elif outcome == "duplicate":
                duplicates += 1
                metrics.webhook(item.chat.gateway, "duplicate", tenant=tenant.id)
            else:
                human += 1
                metrics.webhook(item.chat.gateway, "human", tenant=tenant.id)
            continue
        if item.chat.gateway == "evolution" and item.chat.instance == "default":
            warn_default_instance_once()
        own = tenant.settings
        result = buffer.append(item, now=now, debounce=own.debounce_seconds, max_wait=own.debounce_max_wait_seconds)
        if not result.accepted:
            duplicates += 1
            counters.add("duplicates")
            metrics.webhook(item.chat.gateway, "duplicate", tenant=tenant.id)
            log.info("duplicate chat=%s msg=%s", item.chat.label, item.message_id)
            continue
        buffered += 1
        counters.add("received")
        metrics.webhook(item.chat.gateway, "buffered", tenant=tenant.id)
        if not log.isEnabledFor(logging.INFO):
            continue  # INFO is off: no masked number or correlation id for a line nobody reads
        burst = {
            "correlation_id": burst_id(item.chat.key, result.first_id),
            "chat": item.chat.label,
            "tenant": tenant.id,
        }
        log.info(
            "received chat=%s msg=%s kind=%s pending=%d due_in=%.1fs store=%s",
            item.chat.label,
            item.message_id,
            item.kind,
            result.pending,
            result.deadline - now,
            result.store,
            extra=burst,
        )
        log.debug("text chat=%s msg=%s text=%.80r", item.chat.label, item.message_id, item.text, extra=burst)
    if not buffered and not duplicates and not human:
        return {"status": "ignored", "reason": ",".join(dict.fromkeys(reasons)) or "no_message"}, 200
    summary = {"status": "buffered", "buffered": buffered, "duplicates": duplicates, "ignored": len(reasons)}
    if human:
        summary["human"] = human
    return summary, 200


def from_business_side(item: IncomingMessage, now: float) -> str:
    """A message typed on the business side (a person on the phone, another tool): it may pause, resume or
    close the chat; the assistant's own echoes are recognised and ignored."""
    parts = components()
    outcome = parts.conversations.from_business_side(item, now=now)
    counter = {
        "own_echo": "own_echoes",
        "ignored": "ignored",
        "duplicate": "duplicates",
        "pause": "handoffs",
        "resume": "bot_resumes",
        "close": "conversations_closed",
    }[outcome]
    parts.counters.add(counter)
    command = parts.conversations.commands_for(item.chat).action_for(item)
    if outcome == "pause":
        parts.metrics.handoff(item.chat.gateway, "taken", tenant=item.chat.tenant)
    if outcome in ("pause", "resume", "close") and command is not None and not command[2]:
        # A command typed on the phone (#humano, #bot, #encerrar): kept as a lifecycle event, never as text. (A
        # person's other messages are archived with the burst they join.)
        event = lifecycle_event(item.chat, action=outcome, about=item.message_id, at=now, by="phone")
        parts.archive.emit([event])
    log.info("business-side message chat=%s msg=%s outcome=%s", item.chat.label, item.message_id, outcome)
    return outcome


def warn_default_instance_once() -> None:
    """Said once per process (per app), not per message."""
    warned: set[str] = current_app.extensions.setdefault("warned", set())
    if "default_instance" in warned:
        return
    warned.add("default_instance")
    log.warning(
        "an Evolution webhook named no instance: its replies go to the instance called 'default' (unless "
        "EVOLUTION_API is an instance's full sendText URL); check that the webhook sends its `instance` field"
    )
