"""The ADMIN_TOKEN check that every admin endpoint shares: 404 while no admin token is set (the admin side does not
exist), 401 without the right bearer token (compared in constant time, counted, never logged).

With TENANTS_FILE a tenant may have its own ADMIN_TOKEN: it sees only that tenant's chats (another tenant's chat
is a 404, as a chat that does not exist, so nothing tells it exists), its dead letters, its archive and its
knowledge; the deployment's ADMIN_TOKEN sees everything. `scope()` says which the request carries."""

from __future__ import annotations

import hmac
import logging

from flask import Response, abort, g, jsonify, make_response, request

from models import ChatRef
from web import components

log = logging.getLogger(__name__)

EVERY_TENANT = ""  # the scope of the deployment's ADMIN_TOKEN


def tenant_tokens() -> dict[str, str]:
    """Tenant id -> its own ADMIN_TOKEN (one it set, not the deployment's it inherits)."""
    parts = components()
    if not parts.tenants.multi:
        return {}
    base = parts.settings.admin_token
    return {t.id: t.settings.admin_token for t in parts.tenants.all() if t.settings.admin_token not in ("", base)}


def scope_of(token: str) -> str | None:
    """EVERY_TENANT for the deployment's ADMIN_TOKEN, a tenant's id for its own, None for anything else."""
    base = components().settings.admin_token
    if base and hmac.compare_digest(token.encode(), base.encode()):
        return EVERY_TENANT
    for tenant_id, own in tenant_tokens().items():
        if hmac.compare_digest(token.encode(), own.encode()):
            return tenant_id
    return None


def scope() -> str:
    """The tenant this request's admin may see (EVERY_TENANT: all of them; the panel's pages are the deployment's)."""
    return str(g.get("admin_scope", EVERY_TENANT))


def in_scope(chat: ChatRef) -> bool:
    """True when this request's admin may see the chat."""
    wanted = scope()
    return wanted == EVERY_TENANT or chat.tenant == wanted


def require_in_scope(chat: ChatRef) -> None:
    """A 404 (the same as for a chat nobody knows) when the chat is not this request's admin's to see."""
    if not in_scope(chat):
        abort(make_response(jsonify(error="unknown chat", chat=chat.address), 404))


def require_every_tenant() -> tuple[Response, int] | None:
    """The 403 for a tenant's token on what belongs to the whole deployment (a blueprint's `before_request`, after
    `admin_refusal`)."""
    if scope() != EVERY_TENANT:
        return jsonify(error="forbidden", detail="this endpoint needs the deployment's ADMIN_TOKEN"), 403
    return None


def admin_refusal() -> tuple[Response, int] | None:
    """None when the request carries ADMIN_TOKEN (or a tenant's own) as a bearer token; else the 404 (disabled) or
    401 to send. Use it as a blueprint's `before_request`."""
    parts = components()
    if not parts.settings.admin_token and not tenant_tokens():
        return jsonify(error="not found", detail="admin endpoints are disabled: ADMIN_TOKEN is not set"), 404
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    reason = ""
    found = scope_of(token) if token else None
    if not token:
        reason = "missing bearer token: send Authorization: Bearer <ADMIN_TOKEN>"
    elif found is None:
        reason = "invalid admin token"
    if not reason:
        g.admin_scope = found
        return None
    parts.counters.add("admin_auth_failures")
    log.warning("admin request refused path=%s: %s", request.path, reason.split(":")[0])
    response = jsonify(error="unauthorized", reason=reason)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, 401
