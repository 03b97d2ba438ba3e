"""The knowledge base's admin endpoints: `POST /reload-context` (this process now, every other process within
RAG_WATCH_INTERVAL; the deployment's ADMIN_TOKEN only) and `GET /context/preview?n=&q=&tenant=` (what is loaded
here, and what retrieval finds). Bearer ADMIN_TOKEN: the deployment's sees the environment's knowledge, or a
tenant's with ?tenant=<id>; a tenant's own token sees its tenant's (another id is a 404, as an unknown one)."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, jsonify, request

from knowledge import KnowledgeBase
from web import components
from web.admin_auth import EVERY_TENANT, admin_refusal, require_every_tenant, scope

MAX_PREVIEW_CHARS = 1_000_000

knowledge_admin = Blueprint("knowledge_admin", __name__)
knowledge_admin.before_request(admin_refusal)


def knowledge_in_scope(requested: str) -> tuple[str, KnowledgeBase] | None:
    """(tenant id, its knowledge base) for the knowledge this request's admin asked for ("" for the environment's):
    a tenant's admin gets its tenant's; the deployment's, the environment's or, when it names one, that tenant's,
    read through the cache the replies use. None for a tenant no one has or that is not the admin's to see (one
    answer for both, so nothing tells another tenant exists)."""
    parts, own = components(), scope()
    if own != EVERY_TENANT:
        if requested not in ("", own):
            return None
        requested = own
    elif not requested:
        return "", parts.knowledge
    base = parts.knowledge_of(requested)
    return None if base is None else (requested, base)


@knowledge_admin.post("/reload-context")
def reload_context() -> tuple[Response, int]:
    refused = require_every_tenant()  # every process and every tenant: the deployment's to ask
    if refused is not None:
        return refused
    parts = components()
    knowledge, watcher = parts.knowledge, parts.watcher
    if not knowledge.configured and not parts.tenants.multi:
        return jsonify(error="no knowledge base", detail="KNOWLEDGE_DIR is not set"), 409
    everywhere = watcher.reload_everywhere()
    summary = knowledge.summary(0)
    del summary["preview"]
    return jsonify(status="reloaded", pid=os.getpid(), all_processes=everywhere, **summary), 200


@knowledge_admin.get("/context/preview")
def context_preview() -> tuple[Response, int]:
    parts = components()
    try:
        n = int(request.args.get("n", "1000"))
    except ValueError:
        return jsonify(error="bad request", detail="n must be a whole number of characters"), 400
    if not 0 <= n <= MAX_PREVIEW_CHARS:
        return jsonify(error="bad request", detail=f"n must be between 0 and {MAX_PREVIEW_CHARS}"), 400
    chosen = knowledge_in_scope(request.args.get("tenant", ""))
    if chosen is None:
        return jsonify(error="unknown tenant", tenant=request.args.get("tenant", "")), 404
    tenant, base = chosen
    body: dict[str, Any] = {"pid": os.getpid(), "tenant": tenant or None, **base.summary(n)}
    query = request.args.get("q", "")[: parts.settings.max_message_chars]
    if query.strip():  # what retrieval would put into the prompt for this question
        body["query"] = query
        body["hits"] = [
            {
                "source": hit.chunk.source,
                "heading": hit.chunk.heading,
                "score": round(hit.score, 3),
                "text": hit.chunk.text,
            }
            for hit in base.search(query)
        ]
    return jsonify(body), 200
