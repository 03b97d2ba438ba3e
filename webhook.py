"""The Flask app: `create_app(settings)` wires the pipeline (components.py) and the blueprints (web/), and starts
this process's background worker and knowledge watcher. Run with `python webhook.py` (development) or
`gunicorn webhook:app` (production). The webhook only verifies, parses, dedupes and buffers; Gemini and the gateway
are called by the worker, never inside a request.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import socket
import sys
from typing import Any

from flask import Flask

from components import Components, build_components
from config import Settings, load_settings, missing_for_production
from errors import ConfigError
from logs import setup_logging
from redis_link import redacted
from web.admin_pages import admin_pages
from web.archive_api import archive_api
from web.chats_api import chats_api, dead_letters_api, usage_api
from web.console import setup_console
from web.errors import register_error_handlers
from web.health import health
from web.knowledge_admin import knowledge_admin
from web.metrics_page import metrics_page
from web.simulator import simulator_pages
from web.webhooks import webhooks
from webhook_token import announce

log = logging.getLogger(__name__)

__all__ = ["Components", "build_components", "create_app"]


def create_app(settings: Settings | None = None, *, start_worker: bool | None = None) -> Flask:
    """Build the app and its pipeline. `start_worker` defaults to WORKER_ENABLED."""
    settings = settings or load_settings()
    setup_logging(settings.log_level, settings.log_format)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_body_limit
    parts = build_components(settings)
    worker_enabled = settings.worker_enabled if start_worker is None else start_worker
    app.extensions.update(assistant=parts, worker_enabled=worker_enabled)
    # Without a worker here, a message kept in this process's memory while Redis is down would never be answered.
    parts.buffer.local_fallback = worker_enabled or not settings.redis_enabled
    api = [webhooks, chats_api, archive_api, dead_letters_api, usage_api, knowledge_admin, health, metrics_page]
    for blueprint in [*api, admin_pages, simulator_pages]:
        app.register_blueprint(blueprint)
    setup_console(app, parts, exempt=api, checked_after_access=[admin_pages, simulator_pages])
    register_error_handlers(app)
    if worker_enabled:
        if parts.archive.writer is not None:
            log.info("archive on: PostgreSQL at %s (DATABASE_URL)", redacted(settings.database_url))
            parts.archive.writer.start()
            # atexit runs last-registered first: the worker stops (and emits its last events) before the writer.
            atexit.register(parts.archive.writer.stop)
        parts.worker.start()
        atexit.register(parts.worker.stop)  # gunicorn workers leave through sys.exit on SIGTERM
    atexit.register(parts.worker.notifier.close)
    has_knowledge = parts.knowledge.configured or parts.tenants.multi  # the tenants' too (their folders, the signal)
    if has_knowledge and (settings.rag_auto_reload or parts.watcher.signal is not None):
        # In every process, worker or not, so that what /context/preview shows is what replies use.
        parts.watcher.start()
        atexit.register(parts.watcher.stop)
    for problem in missing_for_production(settings):
        log.warning("%s", problem)
    announce(parts.webhook_secret, settings)
    return app


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (probed the way the development server binds)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the assistant with the development server.")
    parser.add_argument("--check", action="store_true", help="try each configured dependency, report and exit")
    args = parser.parse_args()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.check:
        import checks  # only this command needs it

        sys.exit(checks.print_report(checks.run_checks(settings)))
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
