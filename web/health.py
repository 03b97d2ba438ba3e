"""`GET /health`, never behind auth: ok / degraded / not_configured, Redis, Gemini, gateways, the worker, the
knowledge base, the archive (state and backlog), outbound pacing (this process's sends waiting for their moment), the
live workers, the buffer's counts and the counters (every process of this host's, from the same files as /metrics;
this process's alone with METRICS_ENABLED=false)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from config import Settings
from web import components

# Shown from the start (at 0), so an owner can tell "never happened" from "not counted".
CONVERSATION_COUNTERS = (
    "handoffs",
    "handoff_requests",
    "opt_outs",
    "opt_ins",
    "out_of_hours_notices",
    "paused_skips",
    "bot_resumes",
    "conversations_closed",
    "own_echoes",
    "ai_fallbacks",
)

health = Blueprint("health", __name__)


@health.get("/health")
def show_health() -> tuple[Response, int]:
    return jsonify(health_body()), 200


def health_body() -> dict[str, Any]:
    """What /health says (also shown, readable, on the panel's status page)."""
    parts = components()
    settings, knowledge = parts.settings, parts.knowledge
    redis_state = "disabled"
    if parts.link.enabled:
        redis_state = "up" if parts.link.ping() else "down"
    worker = worker_state()
    archive = parts.archive.health()
    workers_alive = live_workers()
    if workers_alive is None:  # Redis cannot tell: this process's own worker is all that is known
        workers_alive = int(worker == "alive")
    # not_configured: nothing could be answered yet (no model or no gateway); degraded: something that was working
    # is not (Redis down, the worker stopped, the archive's database away); ok otherwise.
    # No live worker anywhere: messages are buffered and nobody answers them.
    healthy = redis_state != "down" and worker != "stopped" and archive["state"] != "down" and workers_alive > 0
    status = "ok" if healthy else "degraded"
    if not settings.ai_configured or not settings.any_gateway_configured:
        status = "not_configured"
    body: dict[str, Any] = {
        "status": status,
        "redis": redis_state,
        "gemini": gemini_state(settings),
        "ai": ai_state(),
        "gateway": "configured" if settings.gateway_configured else "missing EVOLUTION_API",
        "gateways": sorted(name for name in parts.gateways if name != "simulator"),
        "simulator": "simulator" in parts.gateways,
        "worker": worker,
        "workers_alive": workers_alive,
        "knowledge": {
            "mode": knowledge.mode,
            "files": len(knowledge.snapshot.files),
            "chunks": len(knowledge.snapshot.chunks),
            "problems": len(knowledge.snapshot.problems),
        },
        "archive": archive,
        "outbound": parts.worker.pacer.health() if parts.worker.pacer is not None else None,
        "tenants": {**parts.tenants.health(), "knowledge": parts.knowledge_cache.health()}
        if parts.tenants.multi
        else parts.tenants.health(),
        **parts.buffer.counts(),
        "counters": dict(sorted({**dict.fromkeys(CONVERSATION_COUNTERS, 0), **parts.counters.totals()}.items())),
    }
    return body


def gemini_state(settings: Settings) -> str:
    if settings.ai_dry_run:
        return "dry run (AI_DRY_RUN)"
    return "configured" if settings.gemini_configured else "missing GEMINI_API_KEY"


def ai_state() -> dict[str, Any]:
    """Who answers (and who takes over), with their models and whether they are configured: the providers the
    worker's chain holds (ai_service.py)."""
    described = [
        {"name": p.name, "model": p.model, "configured": p.configured} for p in components().worker.ai.providers
    ]
    return {"provider": described[0], "fallback": described[1] if len(described) > 1 else None}


def live_workers() -> int | None:
    """Worker processes alive (liveness.py), this process's running worker included even before its heartbeat
    reaches Redis; None when Redis cannot tell."""
    worker = components().worker
    return components().liveness.alive(own=worker.id if worker.is_alive() else "")


def worker_state() -> str:
    if not current_app.extensions["worker_enabled"]:
        return "disabled"
    return "alive" if components().worker.is_alive() else "stopped"
