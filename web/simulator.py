"""The WhatsApp simulator at /simulator: a chat window where made-up customers (and the person playing the business)
write through the real pipeline as the `simulator` gateway, with the debounce's countdown, "responder agora", media
and voice notes. Open while no real gateway is configured (the two-command demo, `/` leads here); once one is, it
can spend the owner's Gemini tokens, so it needs the admin login (and answers 404 without ADMIN_TOKEN);
SIMULATOR_ENABLED=false turns it off."""

from __future__ import annotations

import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from gateways.base import InboundRequest
from models import IncomingMessage
from simulator import chat_of
from web import components
from web.console import check_form_token
from web.console_auth import deployment_page_refused, is_tenant_session, logged_in
from web.webhooks import buffer_parsed, parse

simulator_pages = Blueprint("simulator_pages", __name__)

_NUMBER = re.compile(r"^[0-9]{6,20}$")


def open_to_all() -> bool:
    """No real gateway configured: nobody's tokens or customers are at stake (the first-run demo)."""
    return not components().settings.any_gateway_configured


@simulator_pages.before_request
def require_access() -> Response | None:
    parts = components()
    if "simulator" not in parts.gateways and request.endpoint != "simulator_pages.home":
        raise NotFound("the simulator is off (SIMULATOR_ENABLED=false)")
    if request.endpoint == "simulator_pages.home" or open_to_all() or logged_in():
        check_form_token()
        return None
    if is_tenant_session():  # the simulator speaks with the environment's settings: the deployment's
        if request.path.startswith("/simulator/api/"):
            refused = jsonify(error="forbidden", detail="the simulator is the deployment's: log in with its token")
            return refused, 403  # type: ignore[return-value]
        return deployment_page_refused()
    if not parts.settings.admin_token:
        raise NotFound("the simulator needs the admin login once a gateway is configured: set ADMIN_TOKEN")
    if request.path.startswith("/simulator/api/"):
        return jsonify(error="unauthorized", detail="log in at /admin/login"), 401  # type: ignore[return-value]
    return redirect(url_for("admin_pages.login", next=request.full_path.rstrip("?")))


@simulator_pages.get("/")
def home() -> Response:
    """The simulator for a newcomer (no gateway yet, or it is on), else the panel."""
    if "simulator" in components().gateways and open_to_all():
        return redirect(url_for("simulator_pages.page"))
    return redirect(url_for("admin_pages.chats"))


@simulator_pages.get("/simulator")
def page() -> str:
    settings, link = components().settings, components().link
    missing = {
        "gemini": not settings.ai_configured and settings.ai_provider == "gemini",
        "openai": not settings.ai_configured and settings.ai_provider == "openai",
        "dry_run": settings.ai_dry_run,
        "redis": link.enabled and not link.ping(),
        "redis_off": not link.enabled,
    }
    return render_template(
        "simulator.html", missing=missing, debounce=settings.debounce_seconds, panel=bool(settings.admin_token)
    )


@simulator_pages.post("/simulator/api/messages")
def post_message() -> tuple[Response, int]:
    """What the customer (or, with "as": "person", the business) typed: parsed and buffered like a webhook."""
    inbound = InboundRequest(method="POST", path=request.path, body=request.get_data(cache=True))
    parsed = parse(components().gateways["simulator"], inbound)
    if not isinstance(parsed, list):
        return parsed
    summary, status = buffer_parsed(parsed, "simulator")
    if summary.get("buffered") or summary.get("human"):  # not a retried duplicate: show it once
        for message in parsed:
            if isinstance(message, IncomingMessage):
                media = message.media.kind if message.media is not None else ""
                role = "person" if message.from_me else "customer"
                components().transcript.add(message.chat, role, message.text, media=media)
    return jsonify(summary), status


@simulator_pages.get("/simulator/api/chats/<number>")
def chat_state(number: str) -> tuple[Response, int]:
    """The transcript from position `since`, and the burst's countdown (the buffer's real deadline)."""
    chat = chat_for(number)
    since = request.args.get("since", "0")
    entries = components().transcript.entries(chat, int(since) if since.isdigit() else 0)
    pending = components().buffer.pending_info(chat)
    status = components().conversations.status(chat)
    state = status.state_at(time.time(), components().settings.conversation_idle_seconds)
    body: dict[str, Any] = {"entries": entries, "pending": pending, "now": time.time(), "state": state}
    return jsonify(body), 200


@simulator_pages.post("/simulator/api/chats/<number>/now")
def answer_now(number: str) -> tuple[Response, int]:
    """ "Responder agora": the burst being typed is due now instead of at its deadline."""
    hurried = components().buffer.answer_now(chat_for(number), now=time.time())
    return jsonify(status="due" if hurried else "nothing pending"), 200


def chat_for(number: str) -> Any:
    if not _NUMBER.match(number):
        raise NotFound("a simulated number has 6 to 20 digits")
    return chat_of(number)
