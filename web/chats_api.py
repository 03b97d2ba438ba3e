"""The owner's HTTP API, behind ADMIN_TOKEN (web/admin_auth.py): see and steer a chat (`/admin/api/chats/...`: its
state, pause, resume, close, write as a person) and the dead letters (`/admin/api/dead-letters`: list, retry,
discard).

A chat is named by its identity `gateway:instance:chat_id`, as in the Redis keys (URL-encoded in the path).
Numbers are not masked here: this is the owner's own data, behind the token. State changes go through
conversation.py, as for a person typing in the chat.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from conversation import CLOSE, PAUSE, RESUME, stamp
from models import DEFAULT_TENANT, ChatRef
from owner_actions import dead_letter_view, discard_dead_letter, retry_dead_letter, send_as_person, steer
from usage import UsageLedger, totals
from web import components
from web.admin_auth import EVERY_TENANT, admin_refusal, in_scope, require_every_tenant, require_in_scope, scope

log = logging.getLogger(__name__)

GATEWAY_NAMES = frozenset({"evolution", "meta", "mega", "twilio", "simulator"})
MAX_PAUSE_MINUTES = 366 * 24 * 60  # a year; "no limit" is the absent field


def chat_from_path(raw: str) -> ChatRef | None:
    """The chat named in the URL, or None when it is not `gateway:instance:chat_id` of a known gateway. (The
    `<tenant>/gateway:instance:chat_id` form of its keys names a chat of a tenant that no longer claims the number.)"""
    chat = ChatRef.parse(raw)
    if chat is None or chat.gateway not in GATEWAY_NAMES or not chat.instance or not chat.chat_id:
        return None
    if chat.tenant == DEFAULT_TENANT:  # the address form: the chat of the business that claims the number now
        chat = components().tenants.claim(chat) or chat
    require_in_scope(chat)  # another tenant's chat is a 404, like one that does not exist
    return chat


def pause_minutes(body: Any) -> float | None | str:
    """Minutes of a pause request (None = no limit), or the reason the body is refused."""
    if body is None:
        return None
    if not isinstance(body, dict):
        return 'the body must be a JSON object, e.g. {"minutes": 30}, or empty for no limit'
    minutes = body.get("minutes")
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, int | float):
        return "minutes must be a number"
    if isinstance(minutes, float) and not math.isfinite(minutes):  # NaN / Infinity: JSON allows them here
        return "minutes must be a number"
    if not 0 < minutes <= MAX_PAUSE_MINUTES:
        return f"minutes must be more than 0 and at most {MAX_PAUSE_MINUTES}"
    return float(minutes)


chats_api = Blueprint("chats_api", __name__, url_prefix="/admin/api/chats")
chats_api.before_request(admin_refusal)


def view(chat: ChatRef, now: float) -> dict[str, Any]:
    """What the API answers about a chat: its conversation state, opt-out, pending burst and last messages."""
    parts = components()
    status = parts.conversations.status(chat)
    state = status.state_at(now, parts.conversations.params_for(chat).idle)
    paused_until = None
    if state == "paused" and status.paused_until != math.inf:
        paused_until = round(status.paused_until, 3)
    return {
        "chat": chat.address,
        "tenant": chat.tenant,
        "gateway": chat.gateway,
        "instance": chat.instance,
        "chat_id": chat.chat_id,
        "state": state,
        "paused_until": paused_until,
        "opted_out": status.opted_out,
        "pending": parts.buffer.pending_info(chat),
        "conversation": {
            "opened_at": status.opened_at or None,
            "last_message_at": status.last_at or None,
            "last_human_action_at": status.business_at or None,
        },
        "last_messages": [{"role": turn.by, "text": turn.text, "at": turn.at} for turn in parts.history.recent(chat)],
        # The tokens and cost of this conversation's replies; and of the chat's, over the last 90 days.
        "usage": parts.usage.of_conversation(chat, stamp(status.opened_at)) if status.opened_at else totals({}),
        "usage_total": parts.usage.of_chat(chat),
    }


def known(body: dict[str, Any]) -> bool:
    return bool(body["conversation"]["opened_at"] or body["opted_out"] or body["pending"] or body["last_messages"])


def bad_chat() -> tuple[Response, int]:
    return jsonify(error="bad chat", detail="expected gateway:instance:chat_id of a known gateway"), 400


@chats_api.get("/<path:raw>")
def show(raw: str) -> tuple[Response, int]:
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    body = view(chat, time.time())
    if not known(body):
        return jsonify(error="unknown chat", chat=chat.address), 404
    return jsonify(body), 200


def act(raw: str, action: str, seconds: float = 0.0) -> tuple[Response, int]:
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    now = round(time.time(), 3)  # the time as stored, so the view below sees the action just taken
    steer(components(), chat, action, seconds=seconds, now=now)
    return jsonify(view(chat, now)), 200


@chats_api.post("/<path:raw>/pause")
def pause(raw: str) -> tuple[Response, int]:
    """{"minutes": N}; absent = until resumed, or until the conversation closes after CONVERSATION_IDLE_MINUTES
    without messages."""
    try:
        body = request.get_json(silent=True) if request.get_data() else None
    except RecursionError:  # nested deeper than the JSON decoder goes
        body = None
    if body is None and request.get_data().strip():
        return jsonify(error="bad request", detail='the body must be JSON, e.g. {"minutes": 30}'), 400
    minutes = pause_minutes(body)
    if isinstance(minutes, str):
        return jsonify(error="bad request", detail=minutes), 400
    return act(raw, PAUSE, math.inf if minutes is None else minutes * 60)


@chats_api.post("/<path:raw>/resume")
def resume(raw: str) -> tuple[Response, int]:
    return act(raw, RESUME)


@chats_api.post("/<path:raw>/close")
def close(raw: str) -> tuple[Response, int]:
    return act(raw, CLOSE)


MAX_PERSON_MESSAGE_CHARS = 4096


@chats_api.post("/<path:raw>/messages")
def send_as_a_person(raw: str) -> tuple[Response, int]:
    """{"text": ...}: sent through the chat's gateway as a person on the business side; the bot pauses."""
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    body = request.get_json(silent=True)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_PERSON_MESSAGE_CHARS:
        return jsonify(
            error="bad request", detail=f'expected {{"text": "..."}} of 1 to {MAX_PERSON_MESSAGE_CHARS} characters'
        ), 400
    now = round(time.time(), 3)
    outcome = send_as_person(components(), chat, text.strip(), now=now)
    if not outcome.ok:
        return jsonify(error="not sent", detail=outcome.detail), 502
    return jsonify(status="sent", message_id=outcome.message_id, **view(chat, now)), 200


dead_letters_api = Blueprint("dead_letters_api", __name__, url_prefix="/admin/api/dead-letters")
dead_letters_api.before_request(admin_refusal)


def visible_letters() -> list[dict[str, Any]]:
    """The dead letters of the chats this request's admin may see."""
    return [record for record in components().buffer.dead_letters() if letter_in_scope(record)]


def letter_in_scope(record: dict[str, Any]) -> bool:
    chat = ChatRef.parse(record.get("chat") or "")
    return in_scope(chat) if chat is not None else scope() == EVERY_TENANT


@dead_letters_api.get("")
def list_dead_letters() -> tuple[Response, int]:
    return jsonify([dead_letter_view(record) for record in visible_letters()]), 200


def not_visible(letter_id: str) -> bool:
    return all(record.get("id") != letter_id for record in visible_letters())


@dead_letters_api.post("/<letter_id>/retry")
def retry(letter_id: str) -> tuple[Response, int]:
    if not_visible(letter_id):
        return jsonify(error="unknown dead letter", id=letter_id), 404
    outcome = retry_dead_letter(components(), letter_id)
    if outcome is None:
        return jsonify(error="unknown dead letter", id=letter_id), 404
    if not outcome.ok:
        return jsonify(error="not sent", detail=outcome.detail, id=letter_id), 502
    return jsonify(status="sent", id=letter_id), 200


@dead_letters_api.delete("/<letter_id>")
def discard(letter_id: str) -> tuple[Response, int]:
    if not_visible(letter_id) or not discard_dead_letter(components(), letter_id):
        return jsonify(error="unknown dead letter", id=letter_id), 404
    return jsonify(status="discarded", id=letter_id), 200


usage_api = Blueprint("usage_api", __name__, url_prefix="/admin/api/usage")
usage_api.before_request(admin_refusal)
usage_api.before_request(require_every_tenant)  # the day's sums are the deployment's


@usage_api.get("")
def usage_of_day() -> tuple[Response, int]:
    """?day=YYYY-MM-DD (UTC; default today): the day's tokens and cost, and by provider:model."""
    day = request.args.get("day") or UsageLedger.day(time.time())
    try:
        datetime.strptime(day, "%Y-%m-%d")
    except ValueError:
        return jsonify(error="bad request", detail="day must be YYYY-MM-DD"), 400
    return jsonify(components().usage.of_day(day)), 200
