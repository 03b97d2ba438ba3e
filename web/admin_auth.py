"""The ADMIN_TOKEN check that every admin endpoint shares: 404 while ADMIN_TOKEN is unset (the admin side does not
exist), 401 without the right bearer token (compared in constant time, counted, never logged)."""

from __future__ import annotations

import hmac
import logging

from flask import Response, jsonify, request

from web import components

log = logging.getLogger(__name__)


def admin_refusal() -> tuple[Response, int] | None:
    """None when the request carries ADMIN_TOKEN as a bearer token; else the 404 (disabled) or 401 to send. Use it
    as a blueprint's `before_request`."""
    parts = components()
    admin_token = parts.settings.admin_token
    if not admin_token:
        return jsonify(error="not found", detail="admin endpoints are disabled: ADMIN_TOKEN is not set"), 404
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    reason = ""
    if not token:
        reason = "missing bearer token: send Authorization: Bearer <ADMIN_TOKEN>"
    elif not hmac.compare_digest(token.encode(), admin_token.encode()):
        reason = "invalid admin token"
    if not reason:
        return None
    parts.counters.add("admin_auth_failures")
    log.warning("admin request refused path=%s: %s", request.path, reason.split(":")[0])
    response = jsonify(error="unauthorized", reason=reason)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, 401
