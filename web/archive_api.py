"""The owner's archive and privacy API, behind ADMIN_TOKEN: search the archive (`/admin/api/search?q=`), page
through a chat's archived history (`/admin/api/chats/<chat>/archive`), and a contact's LGPD export and erasure
(`/admin/api/contacts/<chat>/export`, `DELETE /admin/api/contacts/<chat>`).

`<chat>` is the identity `gateway:instance:chat_id`, URL-encoded, as in /admin/api/chats/<chat>.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from archive.store import PAGE_LIMIT, SEARCH_LIMIT
from archive.store import UNAVAILABLE as DATABASE_UNAVAILABLE
from models import ChatRef
from privacy import ArchiveUnavailable, erase, export
from web import components
from web.admin_auth import admin_refusal, scope
from web.chats_api import bad_chat, chat_from_path

MAX_QUERY_CHARS = 200

archive_api = Blueprint("archive_api", __name__, url_prefix="/admin/api")
archive_api.before_request(admin_refusal)


def archive_off() -> tuple[Response, int]:
    return jsonify(error="archive off", detail="set DATABASE_URL to keep conversations in PostgreSQL"), 404


def archive_down() -> tuple[Response, int]:
    return jsonify(error="archive unavailable", detail="PostgreSQL cannot be reached now; try again"), 503


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    """An archived event as the API shows it."""
    return {
        "id": row["id"],
        "chat": address_of(str(row["chat"])),
        "tenant": row["tenant"],
        "kind": row["kind"],
        "author": row["author"],
        "text": row["text"],
        "media": row["media_kind"] or None,
        "transcript": row["transcript"] or None,
        "message_id": row["gateway_message_id"] or None,
        "delivery": row["delivery"] or None,
        "at": row["at"],
        "data": row["data"],
    }


def address_of(key: str) -> str:
    """`gateway:instance:chat_id` of a stored chat key (its tenant is a field of its own)."""
    chat = ChatRef.parse(key)
    return chat.address if chat is not None else key


@archive_api.get("/search")
def search() -> tuple[Response, int]:
    """?q=words → {"results": [{"chat", "text", "at", ...}]}, newest first (Portuguese, accents ignored)."""
    query = (request.args.get("q") or "").strip()
    if not query or len(query) > MAX_QUERY_CHARS:
        return jsonify(error="bad request", detail=f"expected ?q= with 1 to {MAX_QUERY_CHARS} characters"), 400
    store = components().archive.store
    if store is None:
        return archive_off()
    try:
        rows = store.search(query, tenant=scope() or None, limit=SEARCH_LIMIT)  # a tenant's token finds its own
    except DATABASE_UNAVAILABLE:
        return archive_down()
    return jsonify(query=query, results=[event_view(row) for row in rows]), 200


@archive_api.get("/chats/<path:raw>/archive")
def chat_archive(raw: str) -> tuple[Response, int]:
    """A page of the chat's archived events, newest first; ?before=<id of the oldest shown> for the next page."""
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    before_raw = request.args.get("before")
    limit_raw = request.args.get("limit")
    try:
        before = int(before_raw) if before_raw else None
        limit = int(limit_raw) if limit_raw else PAGE_LIMIT
    except ValueError:
        return jsonify(error="bad request", detail="before and limit must be whole numbers"), 400
    if not 1 <= limit <= 500:
        return jsonify(error="bad request", detail="limit must be 1 to 500"), 400
    store = components().archive.store
    if store is None:
        return archive_off()
    try:
        rows = store.history(chat.key, before=before, limit=limit)
    except DATABASE_UNAVAILABLE:
        return archive_down()
    next_before = rows[-1]["id"] if len(rows) == limit else None
    return jsonify(chat=chat.address, events=[event_view(row) for row in rows], next_before=next_before), 200


@archive_api.get("/contacts/<path:raw>/export")
def export_contact(raw: str) -> tuple[Response, int]:
    """Everything held about the contact, as one JSON document (a download)."""
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    try:
        body = export(components(), chat)
    except ArchiveUnavailable:
        return archive_down()
    return export_download(body, chat), 200


def export_download(body: dict[str, Any], chat: ChatRef) -> Response:
    """A contact's export as a JSON attachment named after the chat (the API's and the panel's download)."""
    response = jsonify(body)
    safe = "".join(c if c.isalnum() else "-" for c in chat.address)
    response.headers["Content-Disposition"] = f'attachment; filename="contato-{safe}.json"'
    return response


@archive_api.delete("/contacts/<path:raw>")
def erase_contact(raw: str) -> tuple[Response, int]:
    """Erase the contact everywhere; says what was erased (counts)."""
    chat = chat_from_path(raw)
    if chat is None:
        return bad_chat()
    try:
        erased = erase(components(), chat)
    except ArchiveUnavailable:
        return archive_down()
    return jsonify(status="erased", chat=chat.address, erased=erased.to_json()), 200
