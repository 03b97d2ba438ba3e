"""The console's web settings: the signed session (SECRET_KEY, or one generated and kept), CSRF tokens on every
form (the JSON APIs and the gateways' webhooks are exempt: they carry bearer tokens or signatures), and a
Content-Security-Policy that lets the pages load nothing from any other host.

The console's own blueprints check the CSRF token themselves, right after their access check (`check_form_token`),
so that a page that is off answers 404 and a request without a session goes to the login, whatever it carries;
every other unsafe request is checked before any route runs, so a new blueprint is protected unless exempted."""

from __future__ import annotations

from flask import Blueprint, Flask, Request, Response, current_app, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from components import Components
from webhook_token import session_key

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# Paths that never have a session: a gateway's webhook carries a token or a signature, not a cookie, and reading
# and signing the cookie was a tenth of a webhook's CPU.
SESSIONLESS_PREFIXES = ("/webhook",)


class ConsoleSessions(SecureCookieSessionInterface):
    """The console's signed session cookie, Secure exactly when the request came over HTTPS (gunicorn counts
    X-Forwarded-Proto from the proxies in --forwarded-allow-ips, 127.0.0.1 by default); none on the webhooks."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if request.path.startswith(SESSIONLESS_PREFIXES):
            return None  # Flask's null session: empty, and nothing is ever saved
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request and request.is_secure)


def setup_console(
    app: Flask, parts: Components, *, exempt: list[Blueprint], checked_after_access: list[Blueprint]
) -> None:
    app.secret_key = session_key(parts.settings, parts.link, parts.keys)
    app.session_interface = ConsoleSessions()
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_CHECK_DEFAULT=False,  # checked below, or by the console's blueprints after their access check
    )
    csrf = CSRFProtect(app)
    unchecked = {blueprint.name for blueprint in [*exempt, *checked_after_access]}

    @app.before_request
    def check_csrf() -> None:
        # A request no route matches gets its 404 or 405 (raised when dispatched), not a CSRF 400.
        if request.routing_exception is None and request.blueprint not in unchecked:
            csrf.protect()

    @app.after_request
    def security_headers(response: Response) -> Response:
        if response.mimetype == "text/html" or request.path.startswith("/static/"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def check_form_token() -> None:
    """For the console's blueprints, once access is granted: an unsafe request without a valid CSRF token is a 400."""
    current_app.extensions["csrf"].protect()
