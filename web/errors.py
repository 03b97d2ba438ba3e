"""JSON answers for HTTP errors, and the last line of defence: an unexpected exception is logged and answered 500
(503 when it is Redis failing mid-request, the one failure a gateway retry can fix)."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.name.lower(), detail=exc.description), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> tuple[Response, int]:
        log.exception("unexpected error on %s", request.path)
        if isinstance(exc, redis.RedisError):
            return jsonify(error="temporarily unavailable"), 503
        return jsonify(error="internal error"), 500
