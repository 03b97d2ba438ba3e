"""The Flask app: routes, webhook authentication, and wiring of the pipeline's parts.

`create_app(settings)` builds everything and starts this process's background worker. The webhook only
verifies, parses, dedupes and buffers; Gemini and the gateway are called by the worker, never here.
Run with `python webhook.py` (development) or `gunicorn webhook:app` (production).
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import redis
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from admin import admin_refusal, chats_api
from ai_service import AIService
from buffer import Buffer
from config import Settings, load_settings, missing_for_production
from conversation import Commands, Conversations, Params
from counters import Counters
from errors import AuthError, ConfigError, PayloadError
from gateways import build_gateways
from gateways.base import Gateway, InboundRequest
from gateways.meta import MetaGateway, verify_handshake
from knowledge import KnowledgeBase, ReloadSignal, Watcher
from logs import setup_logging
from memory import History
from models import IgnoredEvent, IncomingMessage
from notify import HandoffNotifier
from redis_keys import RedisKeys
from redis_link import RedisLink
from sender import TextSender
from webhook_token import WebhookSecret, announce, webhook_secret
from worker import Worker

log = logging.getLogger(__name__)

JWT_LEEWAY_SECONDS = 30
MAX_EVENTS_PER_REQUEST = 100  # gateways post one message, or a few; more is noise that must not hold a worker
MAX_PREVIEW_CHARS = 1_000_000
# Shown in /health from the start (at 0), so an owner can tell "never happened" from "not counted".
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
)


def is_authorized(secret: WebhookSecret, authorization: str, query_token: str) -> bool:
    """True when the webhook is open (WEBHOOK_AUTH=off), or the request carries the token (WEBHOOK_TOKEN or the
    generated one) or a valid HS256 JWT signed with WEBHOOK_JWT_SECRET."""
    if secret.is_open:
        return True
    bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    if secret.token:
        for candidate in (bearer, query_token):
            if candidate and hmac.compare_digest(candidate.encode(), secret.token.encode()):
                return True
    if secret.jwt_secret and bearer:
        try:
            jwt.decode(
                bearer,
                secret.jwt_secret,
                algorithms=["HS256"],
                leeway=JWT_LEEWAY_SECONDS,
                options={"require": ["exp"]},  # Evolution's tokens expire after 10 minutes; refuse eternal ones
            )
            return True
        except jwt.PyJWTError:
            return False
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Components:
    """The pipeline's parts, wired once per process."""

    link: RedisLink
    keys: RedisKeys
    buffer: Buffer
    history: History
    conversations: Conversations
    counters: Counters
    gateways: dict[str, Gateway]
    worker: Worker
    knowledge: KnowledgeBase
    watcher: Watcher


def build_components(
    settings: Settings, *, senders: dict[str, TextSender] | None = None, clock: Callable[[], float] = time.time
) -> Components:
    """Wire Redis, buffer, history, gateways and the worker from `settings` (tests may swap senders/clock)."""
    link = RedisLink(settings.redis_uri if settings.redis_enabled else None, retry_seconds=settings.redis_retry_seconds)
    keys = RedisKeys(settings.redis_prefix)
    buffer = Buffer(
        link,
        keys,
        debounce_seconds=settings.debounce_seconds,
        max_wait_seconds=settings.debounce_max_wait_seconds,
        dedup_ttl_seconds=settings.dedup_ttl_seconds,
        lease_seconds=settings.lease_seconds,
        media_max_bytes=settings.media_max_bytes,
        history_turns=settings.history_max_turns,
    )
    history = History(link, keys, max_turns=settings.history_max_turns, ttl_seconds=settings.history_ttl_seconds)
    conversations = Conversations(
        link,
        keys,
        buffer,
        params=Params(
            debounce=settings.debounce_seconds,
            max_wait=settings.debounce_max_wait_seconds,
            dedup_ttl=settings.dedup_ttl_seconds,
            idle=settings.conversation_idle_seconds,
        ),
        commands=Commands(
            pause=settings.bot_pause_keyword,
            resume=settings.bot_resume_keyword,
            close=settings.bot_close_keyword,
            handoff_seconds=settings.handoff_pause_seconds,
        ),
    )
    counters = Counters()
    gateways = build_gateways(settings)
    knowledge = KnowledgeBase(
        settings.knowledge_dir, top_k=settings.rag_top_k, whole_max_chars=settings.rag_whole_max_chars
    )
    knowledge.reload()
    watcher = Watcher(
        knowledge,
        interval_seconds=settings.rag_watch_interval,
        watch_files=settings.rag_auto_reload,
        signal=ReloadSignal(link, keys.knowledge_generation()) if link.enabled else None,
    )
    worker = Worker(
        settings,
        buffer=buffer,
        history=history,
        conversations=conversations,
        ai=AIService(settings, knowledge),
        senders=senders if senders is not None else gateways,  # type: ignore[arg-type] (a Gateway is a TextSender)
        counters=counters,
        notifier=HandoffNotifier(settings.handoff_notify_url, counters),
        clock=clock,
    )
    return Components(
        link=link,
        keys=keys,
        buffer=buffer,
        history=history,
        conversations=conversations,
        counters=counters,
        gateways=gateways,
        worker=worker,
        knowledge=knowledge,
        watcher=watcher,
    )


def create_app(settings: Settings | None = None, *, start_worker: bool | None = None) -> Flask:
    """Build the app and its pipeline. `start_worker` defaults to WORKER_ENABLED."""
    settings = settings or load_settings()
    setup_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_body_limit

    parts = build_components(settings)
    link, buffer, counters, gateways, worker = parts.link, parts.buffer, parts.counters, parts.gateways, parts.worker
    secret = webhook_secret(settings, link, parts.keys)
    knowledge, watcher = parts.knowledge, parts.watcher
    app.extensions["assistant"] = parts

    @app.post("/webhook")
    @app.post("/webhook/<event>")
    def receive_evolution(event: str = "") -> Response | tuple[Response, int]:
        return handle(gateways["evolution"], event)

    @app.get("/webhook/meta")
    def meta_handshake() -> Response | tuple[Response, int]:
        gateway = gateways.get("meta")
        if not isinstance(gateway, MetaGateway):
            return jsonify(error="gateway not configured", gateway="meta"), 404
        challenge = verify_handshake(request.args, gateway.verify_token)
        if challenge is None:
            counters.add("signature_failures")
            log.warning("meta verification handshake refused")
            return jsonify(error="verification failed"), 403
        return Response(challenge, 200, mimetype="text/plain")

    @app.post("/webhook/meta")
    @app.post("/webhook/mega")
    @app.post("/webhook/twilio")
    def receive_other() -> Response | tuple[Response, int]:
        name = request.path.rsplit("/", 1)[-1]
        gateway = gateways.get(name)
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
        try:
            if gateway.uses_shared_token:
                if not is_authorized(secret, inbound.header("Authorization"), inbound.query.get("token", "")):
                    raise AuthError("missing or invalid credentials")
            else:
                gateway.verify(inbound)
        except AuthError as exc:
            counters.add("auth_failures" if gateway.uses_shared_token else "signature_failures")
            log.warning("webhook rejected gateway=%s: %s", gateway.name, exc)
            return jsonify(error="unauthorized"), 401
        if not inbound.body.strip():
            return jsonify(error="empty body"), 400
        try:
            parsed = gateway.parse(
                inbound, accept_groups=settings.groups_enabled, max_text_chars=settings.max_message_chars
            )
        except PayloadError as exc:
            log.warning("webhook body rejected gateway=%s bytes=%d: %s", gateway.name, len(inbound.body), exc)
            return jsonify(error=str(exc)), 400
        except Exception as exc:  # an odd shape a parser did not foresee: a clear 400, never a 500 and a retry storm
            counters.add("unreadable_payloads")
            log.warning(
                "webhook body could not be read gateway=%s bytes=%d: %s",
                gateway.name,
                len(inbound.body),
                exc.__class__.__name__,
            )
            return jsonify(error="payload could not be read", detail=exc.__class__.__name__), 400
        if len(parsed) > MAX_EVENTS_PER_REQUEST:
            log.warning(
                "webhook with %d events gateway=%s: only the first %d are read",
                len(parsed),
                gateway.name,
                MAX_EVENTS_PER_REQUEST,
            )
            parsed = parsed[:MAX_EVENTS_PER_REQUEST] + [IgnoredEvent(reason="too_many_events")]
        summary, status = _buffer_parsed(parsed)
        special = gateway.answer(summary)
        if special is not None:
            return Response(special.body, special.status, content_type=special.content_type)
        return jsonify(summary), status

    def _buffer_parsed(parsed: list[IncomingMessage | IgnoredEvent]) -> tuple[dict[str, Any], int]:
        buffered, duplicates, human, reasons = 0, 0, 0, []
        now = time.time()
        for item in parsed:
            if isinstance(item, IgnoredEvent):
                counters.add("ignored")
                reasons.append(item.reason)
                chat = item.chat.label if item.chat else "-"
                log.info("ignored chat=%s msg=%s reason=%s", chat, item.message_id or "-", item.reason)
                continue
            if item.from_me:
                outcome = _from_business_side(item, now)
                if outcome in ("own_echo", "ignored"):
                    reasons.append("own_echo" if outcome == "own_echo" else "from_me")
                elif outcome == "duplicate":
                    duplicates += 1
                else:
                    human += 1
                continue
            if item.chat.gateway == "evolution" and item.chat.instance == "default":
                _warn_default_instance_once()
            result = buffer.append(item, now=now)
            if not result.accepted:
                duplicates += 1
                counters.add("duplicates")
                log.info("duplicate chat=%s msg=%s", item.chat.label, item.message_id)
                continue
            buffered += 1
            counters.add("received")
            log.info(
                "received chat=%s msg=%s kind=%s pending=%d due_in=%.1fs store=%s",
                item.chat.label,
                item.message_id,
                item.kind,
                result.pending,
                result.deadline - now,
                result.store,
            )
            log.debug("text chat=%s msg=%s text=%.80r", item.chat.label, item.message_id, item.text)
        if not buffered and not duplicates and not human:
            return {"status": "ignored", "reason": ",".join(dict.fromkeys(reasons)) or "no_message"}, 200
        summary = {"status": "buffered", "buffered": buffered, "duplicates": duplicates, "ignored": len(reasons)}
        if human:
            summary["human"] = human
        return summary, 200

    warned_default_instance: list[bool] = []

    def _warn_default_instance_once() -> None:
        if warned_default_instance:
            return
        warned_default_instance.append(True)
        log.warning(
            "an Evolution webhook named no instance: its replies go to the instance called 'default' (unless "
            "EVOLUTION_API is an instance's full sendText URL); check that the webhook sends its `instance` field"
        )

    def _from_business_side(item: IncomingMessage, now: float) -> str:
        """A message typed on the business side (a person on the phone, another tool): it may pause, resume or
        close the chat; the assistant's own echoes are recognised and ignored."""
        outcome = parts.conversations.from_business_side(item, now=now)
        counter = {
            "own_echo": "own_echoes",
            "ignored": "ignored",
            "duplicate": "duplicates",
            "pause": "handoffs",
            "resume": "bot_resumes",
            "close": "conversations_closed",
        }[outcome]
        counters.add(counter)
        log.info("business-side message chat=%s msg=%s outcome=%s", item.chat.label, item.message_id, outcome)
        return outcome

    app.register_blueprint(
        chats_api(settings, conversations=parts.conversations, buffer=buffer, history=parts.history, counters=counters)
    )

    @app.post("/reload-context")
    def reload_context() -> tuple[Response, int]:
        refusal = admin_refusal(settings, counters)
        if refusal is not None:
            return refusal
        if not knowledge.configured:
            return jsonify(error="no knowledge base", detail="KNOWLEDGE_DIR is not set"), 409
        everywhere = watcher.reload_everywhere()
        summary = knowledge.summary(0)
        del summary["preview"]
        return jsonify(status="reloaded", pid=os.getpid(), all_processes=everywhere, **summary), 200

    @app.get("/context/preview")
    def context_preview() -> tuple[Response, int]:
        refusal = admin_refusal(settings, counters)
        if refusal is not None:
            return refusal
        try:
            n = int(request.args.get("n", "1000"))
        except ValueError:
            return jsonify(error="bad request", detail="n must be a whole number of characters"), 400
        if not 0 <= n <= MAX_PREVIEW_CHARS:
            return jsonify(error="bad request", detail=f"n must be between 0 and {MAX_PREVIEW_CHARS}"), 400
        body: dict[str, Any] = {"pid": os.getpid(), **knowledge.summary(n)}
        query = request.args.get("q", "")[: settings.max_message_chars]
        if query.strip():  # what retrieval would put into the prompt for this question
            body["query"] = query
            body["hits"] = [
                {
                    "source": hit.chunk.source,
                    "heading": hit.chunk.heading,
                    "score": round(hit.score, 3),
                    "text": hit.chunk.text,
                }
                for hit in knowledge.search(query)
            ]
        return jsonify(body), 200

    @app.get("/health")
    def health() -> tuple[Response, int]:
        redis_state = "disabled"
        if link.enabled:
            redis_state = "up" if link.ping() else "down"
        # not_configured: nothing could be answered yet (no model or no gateway); degraded: something that was
        # working is not (Redis down, the worker stopped); ok otherwise.
        status = "ok" if redis_state != "down" and worker_state() != "stopped" else "degraded"
        if not settings.gemini_configured or not settings.any_gateway_configured:
            status = "not_configured"
        body: dict[str, Any] = {
            "status": status,
            "redis": redis_state,
            "gemini": "configured" if settings.gemini_configured else "missing GEMINI_API_KEY",
            "gateway": "configured" if settings.gateway_configured else "missing EVOLUTION_API",
            "gateways": sorted(gateways),
            "worker": worker_state(),
            "knowledge": {
                "mode": knowledge.mode,
                "files": len(knowledge.snapshot.files),
                "chunks": len(knowledge.snapshot.chunks),
                "problems": len(knowledge.snapshot.problems),
            },
            **buffer.counts(),
            "counters": dict(sorted({**dict.fromkeys(CONVERSATION_COUNTERS, 0), **counters.snapshot()}.items())),
        }
        return jsonify(body), 200

    def worker_state() -> str:
        if not (settings.worker_enabled if start_worker is None else start_worker):
            return "disabled"
        return "alive" if worker.is_alive() else "stopped"

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return jsonify(error=exc.name.lower(), detail=exc.description), code

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> tuple[Response, int]:
        # Only a bug gets here. Redis failing mid-request is the one failure a gateway retry can fix.
        log.exception("unexpected error on %s", request.path)
        if isinstance(exc, redis.RedisError):
            return jsonify(error="temporarily unavailable"), 503
        return jsonify(error="internal error"), 500

    if settings.worker_enabled if start_worker is None else start_worker:
        worker.start()
        atexit.register(worker.stop)  # gunicorn workers leave through sys.exit on SIGTERM
    atexit.register(worker.notifier.close)
    if knowledge.configured and (settings.rag_auto_reload or watcher.signal is not None):
        # In every process, worker or not, so that what /context/preview shows is what replies use.
        watcher.start()
        atexit.register(watcher.stop)
    for problem in missing_for_production(settings):
        log.warning("%s", problem)
    announce(secret, settings)
    return app


_app: Flask | None = None


def __getattr__(name: str) -> Any:
    """`webhook.app` is built on first access (by gunicorn, in each worker process after the fork),
    so importing this module in tests or tools starts nothing."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (probed the way the development server binds)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    # Before anything starts (the worker would claim chats in a process that then fails to serve).
    if port_in_use(settings.host, settings.port):
        print(
            f"PORT {settings.port} is already in use on {settings.host}: stop what is using it, or set PORT to a free "
            "port",
            file=sys.stderr,
        )
        sys.exit(2)
    app = create_app(settings)
    # Flask's dev server dies on SIGTERM without cleanup; turn it into a normal exit so the worker stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("serving on http://%s:%d (development server; use gunicorn in production)", settings.host, settings.port)
    try:
        app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
    finally:
        app.extensions["assistant"].worker.stop()


if __name__ == "__main__":
    main()
