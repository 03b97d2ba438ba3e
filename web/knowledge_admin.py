"""The knowledge base's admin endpoints: `POST /reload-context` (this process now, every other process within
RAG_WATCH_INTERVAL) and `GET /context/preview?n=&q=` (what is loaded here, and what retrieval finds). Bearer
ADMIN_TOKEN."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, jsonify, request

from web import components
from web.admin_auth import admin_refusal, require_every_tenant

MAX_PREVIEW_CHARS = 1_000_000

knowledge_admin = Blueprint("knowledge_admin", __name__)
knowledge_admin.before_request(admin_refusal)
knowledge_admin.before_request(require_every_tenant)  # the environment's knowledge; tenants' are not shown yet


@knowledge_admin.post("/reload-context")
def reload_context() -> tuple[Response, int]:
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
    body: dict[str, Any] = {"pid": os.getpid(), **parts.knowledge.summary(n)}
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
            for hit in parts.knowledge.search(query)
        ]
    return jsonify(body), 200
