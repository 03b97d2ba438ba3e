"""`GET /metrics`: Prometheus text format (metrics.py), the same totals whichever process serves it; behind
METRICS_TOKEN (bearer) when set; 404 with METRICS_ENABLED=false."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request

from web import components
from web.health import live_workers

metrics_page = Blueprint("metrics_page", __name__)


def deployment_gauges() -> dict[str, float]:
    """What the whole deployment holds now, read from Redis (and PostgreSQL's backlog) when scraped."""
    parts = components()
    counts = parts.buffer.counts()
    alive = live_workers()
    gauges = {
        "wa_pending_chats": float(counts.get("chats_pending", 0)),
        "wa_in_progress_chats": float(counts.get("chats_in_progress", 0)),
        "wa_dead_letters_held": float(counts.get("dead_letters", 0)),
        "wa_archive_backlog": float(parts.archive.health()["backlog"]) if parts.archive.enabled else 0.0,
    }
    if alive is not None:
        gauges["wa_workers_alive"] = float(alive)
    return gauges


@metrics_page.get("/metrics")
def show_metrics() -> Response | tuple[Response, int]:
    parts = components()
    if not parts.metrics.enabled:
        return jsonify(error="metrics off", detail="METRICS_ENABLED=false"), 404
    token = parts.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            parts.counters.add("metrics_auth_failures")
            return jsonify(error="unauthorized"), 401
    body, content_type = parts.metrics.exposition(deployment_gauges)
    return Response(body, 200, content_type=content_type)
